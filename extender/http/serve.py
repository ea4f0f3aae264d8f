"""`gpuslice serve`: the extender over HTTP, served by waitress (one process, many threads: the
ledgers live in this process, so it must never be forked into several workers)."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys

from waitress import create_server

from extender.core.policy import PolicyError
from extender.engine.cluster import Cluster
from extender.engine.demo import FIXTURE_NODES, GPU_NODES, PENDING, demo_cluster
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.http.app import DEFAULT_MAX_BODY_BYTES, DEFAULT_URL_PREFIX, create_app

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the scheduler extender over HTTP")
    p.add_argument("--demo", action="store_true", help="serve over the built-in demo cluster (no Kubernetes)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: the "
                   "extender runs as kube-scheduler's sidecar)")
    p.add_argument("--port", type=int, default=8888)
    p.add_argument("--policy", metavar="FILE", help="policy YAML; hot-reloaded when it changes")
    p.add_argument("--policy-poll", type=float, default=2.0, metavar="SECONDS",
                   help="how often to check the policy file for changes")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, metavar="N",
                   help="larger request bodies get 413 (default 64 MiB; a realistic 5,000-node NodeList is ~35 MiB)")
    p.add_argument("--threads", type=int, default=8, metavar="N", help="waitress worker threads")
    p.add_argument("--url-prefix", default=DEFAULT_URL_PREFIX, metavar="PATH",
                   help="path part of kube-scheduler's urlPrefix; verbs are served there and at /")
    p.set_defaults(func=serve_cmd)


def _cluster(args: argparse.Namespace) -> Cluster | None:
    if args.demo:
        return demo_cluster()
    print("gpuslice serve: no cluster backend selected. Use --demo for the built-in demo cluster. "
          "The Kubernetes cluster backend (selected with its own flag) is not available in this build yet.",
          file=sys.stderr)
    return None


def demo_curl(base: str) -> str:
    """A filter call for one of the demo's pending pods, in the NodeNames form, ready to paste."""
    pod = PENDING[0]
    body = {"Pod": {"metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid,
                                 "annotations": dict(pod.annotations)},
                    "spec": {"containers": [{"name": "main", "resources": {"requests": {"cpu": "4"}}}]}},
            "Nodes": None, "NodeNames": [*GPU_NODES, *FIXTURE_NODES]}
    return (f"curl -s -X POST -H 'Content-Type: application/json' {base}/filter "
            f"-d {shlex.quote(json.dumps(body, separators=(',', ':')))}")


def serve_cmd(args: argparse.Namespace) -> int:
    try:
        policies = PolicyStore.from_file(args.policy) if args.policy else PolicyStore()
    except (OSError, PolicyError) as exc:
        print(f"gpuslice serve: {exc}", file=sys.stderr)
        return 2
    cluster = _cluster(args)
    if cluster is None:
        return 2
    engine = Engine(cluster, policies)
    problems = engine.sync()
    if problems:
        log.warning("ledger rebuilt with %d problem(s); see /debug/ledger", len(problems))
    if args.policy:
        policies.watch(args.policy_poll)
    app = create_app(engine, url_prefix=args.url_prefix, max_body_bytes=args.max_body_bytes)
    server = create_server(app, host=args.host, port=args.port, threads=args.threads, ident="gpuslice")
    host = args.host if ":" not in args.host else f"[{args.host}]"
    path = args.url_prefix.strip("/")
    base = f"http://{host}:{server.effective_port}" + (f"/{path}" if path else "")
    print(f"gpuslice extender listening on http://{host}:{server.effective_port} "
          f"(verbs at {base}/filter, /prioritize, /bind; also /healthz /readyz /metrics /debug/ledger /version)",
          flush=True)
    if args.demo:
        print(f"demo cluster: {len(GPU_NODES)} MI300X nodes x 8 GPUs ({', '.join(GPU_NODES)}) and "
              f"{', '.join(FIXTURE_NODES)}. Try:", flush=True)
        print(demo_curl(base), flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
