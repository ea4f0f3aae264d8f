"""`gpuslice serve`: the extender over HTTP(S), on the built-in demo cluster (`--demo`) or a live
Kubernetes cluster (`--kubeconfig FILE` or `--in-cluster`). The faces never import each other, so
the choice of backend is made here, at the top."""

from __future__ import annotations

import argparse
import logging
import sys

from extender.engine.demo import demo_cluster
from extender.engine.scheduler import Engine
from extender.engine.solver_placer import SolverPlacer
from extender.http.serve import add_server_arguments, demo_banner, load_policies, run_server, short_gc_pauses
from extender.kube.runtime import kube_runtime

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the scheduler extender over HTTP")
    backend = p.add_mutually_exclusive_group()
    backend.add_argument("--demo", action="store_true", help="serve over the built-in demo cluster (no Kubernetes)")
    backend.add_argument("--kubeconfig", metavar="FILE", help="serve against the cluster this kubeconfig names")
    backend.add_argument("--in-cluster", action="store_true", help="serve against the cluster this pod runs in")
    p.add_argument("--lease", metavar="NAMESPACE/NAME", help="bind only while this kube-scheduler Lease is held "
                   "by our own scheduler (same hostname): the sidecar shares its leader election")
    p.add_argument("--scheduler-name", metavar="NAME", help="watch only pods with this schedulerName (the "
                   "only pods this extender binds); default: all pods")
    p.add_argument("--no-nudge", action="store_true", help="do not touch a Node annotation when GPU capacity "
                   "frees there (kube-scheduler then retries rejected pods only on its own events)")
    add_server_arguments(p)
    p.set_defaults(func=serve_cmd)


def serve_cmd(args: argparse.Namespace) -> int:
    policies = load_policies(args)
    if policies is None:
        return 2
    if args.demo:
        engine = Engine(demo_cluster(), policies, bind_placer=SolverPlacer())
        problems = engine.sync()
        if problems:
            log.warning("ledger rebuilt with %d problem(s); see /debug/ledger", len(problems))
        short_gc_pauses()
        return run_server(engine, args, banner=demo_banner)
    if args.kubeconfig or args.in_cluster:
        runtime = kube_runtime(policies, kubeconfig=args.kubeconfig, lease=args.lease, nudge=not args.no_nudge,
                               scheduler_name=args.scheduler_name)
        runtime.start()  # /readyz answers 503 until the first full list has rebuilt the ledgers
        short_gc_pauses()
        try:
            return run_server(runtime.engine, args)
        finally:
            runtime.stop()
    print("gpuslice serve: choose a cluster backend: --demo (the built-in demo cluster), or the Kubernetes "
          "cluster backend with --kubeconfig FILE or --in-cluster", file=sys.stderr)
    return 2
