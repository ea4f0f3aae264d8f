"""`gpuslice serve`: the extender over HTTP(S), on the built-in demo cluster (`--demo`) or a live
Kubernetes cluster (`--kubeconfig FILE` or `--in-cluster`). The faces never import each other, so
the choice of backend is made here, at the top."""

from __future__ import annotations

import argparse
import errno
import logging
import sys

from extender.core.errors import UsageError
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
        return _listen(engine, args, banner=demo_banner)
    if args.kubeconfig or args.in_cluster:
        runtime = kube_runtime(policies, kubeconfig=args.kubeconfig, lease=args.lease, nudge=not args.no_nudge,
                               scheduler_name=args.scheduler_name)
        runtime.start()  # /readyz answers 503 until the first full list has rebuilt the ledgers
        short_gc_pauses()
        try:
            return _listen(runtime.engine, args)
        finally:
            runtime.stop()
    print("gpuslice serve: choose a cluster backend: --demo (the built-in demo cluster), or the Kubernetes "
          "cluster backend with --kubeconfig FILE or --in-cluster", file=sys.stderr)
    return 2


_CANNOT_LISTEN = {errno.EADDRINUSE: "address already in use: stop what listens there or choose another --port",
                  errno.EACCES: "permission denied: choose a --port above 1023",
                  errno.EADDRNOTAVAIL: "no such local address: choose another --host"}


def _listen(engine: Engine, args: argparse.Namespace, **kwargs: object) -> int:
    """run_server, with the predictable ways of failing to listen (and to read the TLS files) as UsageError."""
    try:
        return run_server(engine, args, **kwargs)  # type: ignore[arg-type]
    except FileNotFoundError as exc:
        raise UsageError(f"cannot read {exc.filename or 'a --tls-* file'}: no such file; check --tls-cert, "
                         "--tls-key and --tls-client-ca") from None
    except OSError as exc:
        if exc.errno not in _CANNOT_LISTEN:
            raise
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {_CANNOT_LISTEN[exc.errno]}") from None
