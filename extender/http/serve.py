"""The extender's HTTP server: waitress (one process, many threads: the ledgers live in this process,
so it must never be forked into several workers), or the TLS server in tls.py. The `serve` command
itself lives at the top (extender/serve_cli.py), which picks the cluster backend."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import shlex
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from waitress import create_server

from extender.core.policy import PolicyError
from extender.engine.demo import FIXTURE_NODES, GPU_NODES, PENDING
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.http.app import DEFAULT_MAX_BODY_BYTES, DEFAULT_URL_PREFIX, create_app
from extender.http.tls import make_tls_server, tls_context

log = logging.getLogger(__name__)

# The waitress server, sized for kube-scheduler's pattern: a few keep-alive connections per scheduler
# (Go's http.Client), each carrying one request at a time that it gives up on after httpTimeout (5 s).
# Idle and slow connections must not lock the verbs or /healthz out (waitress stops accepting at
# connection_limit, 100 by default, and closes idle channels only after 120 s, checked every 30 s):
CONNECTION_LIMIT = 1000  # open connections; poll(), not select(), so past 1024 descriptors too
CHANNEL_TIMEOUT = 10.0  # seconds a connection may sit idle (or send nothing of its request) before it is closed
CLEANUP_INTERVAL = 1.0  # seconds between checks for such connections
BACKLOG = 2048  # connections the kernel queues while all CONNECTION_LIMIT are open


def make_server(app: Any, host: str, port: int, threads: int = 8, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                connection_limit: int = CONNECTION_LIMIT, channel_timeout: float = CHANNEL_TIMEOUT,
                cleanup_interval: float = CLEANUP_INTERVAL) -> Any:
    """The waitress server for `app`, with the limits and timeouts above."""
    _raise_open_file_limit(connection_limit + 64)
    return create_server(app, host=host, port=port, threads=threads, ident="gpuslice",
                         connection_limit=connection_limit, channel_timeout=channel_timeout,
                         cleanup_interval=cleanup_interval, backlog=BACKLOG, asyncore_use_poll=True,
                         max_request_body_size=max_body_bytes)


def _raise_open_file_limit(wanted: int) -> None:
    """Each connection is a descriptor: lift the soft limit toward `wanted` (never past the hard one)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """The HTTP server's flags; the top-level `serve` command adds the cluster backend's."""
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
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (kube-scheduler: "
                   "enableHTTPS with tlsConfig.caFile trusting it)")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's private key")
    p.add_argument("--tls-client-ca", metavar="FILE", help="require client certificates signed by this CA "
                   "(kube-scheduler's tlsConfig.certFile/keyFile)")


def load_policies(args: argparse.Namespace) -> PolicyStore | None:
    try:
        return PolicyStore.from_file(args.policy) if args.policy else PolicyStore()
    except (OSError, PolicyError) as exc:
        print(f"gpuslice serve: {exc}", file=sys.stderr)
        return None


def short_gc_pauses(interval: float = 30.0) -> threading.Thread:
    """The ledgers and their caches are millions of long-lived, acyclic objects. Left to the cyclic GC,
    every full collection scans all of them in the middle of some request (hundreds of ms at 5,000
    nodes). So collect once and freeze what survives, now and then every `interval` seconds: each
    collection then only scans what the last interval allocated. Frozen objects are still freed by
    reference counting when they die; only cyclic garbage could outlive a freeze, and the collect
    just before each freeze clears that."""
    gc.collect()
    gc.freeze()

    def loop() -> None:
        while True:
            time.sleep(interval)
            gc.collect()
            gc.freeze()

    thread = threading.Thread(target=loop, name="gc-freeze", daemon=True)
    thread.start()
    return thread


def demo_curl(base: str) -> str:
    """A filter call for one of the demo's pending pods, in the NodeNames form, ready to paste."""
    pod = PENDING[0]
    body = {"Pod": {"metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid,
                                 "annotations": dict(pod.annotations)},
                    "spec": {"containers": [{"name": "main", "resources": {"requests": {"cpu": "4"}}}]}},
            "Nodes": None, "NodeNames": [*GPU_NODES, *FIXTURE_NODES]}
    return (f"curl -s -X POST -H 'Content-Type: application/json' {base}/filter "
            f"-d {shlex.quote(json.dumps(body, separators=(',', ':')))}")


def run_server(engine: Engine, args: argparse.Namespace, banner: Callable[[str], None] | None = None) -> int:
    """Serve `engine` until interrupted, with the flags from add_server_arguments."""
    if args.policy:
        engine.policies.watch(args.policy_poll)
    if bool(args.tls_cert) != bool(args.tls_key):
        print("gpuslice serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    app = create_app(engine, url_prefix=args.url_prefix, max_body_bytes=args.max_body_bytes)
    scheme = "https" if args.tls_cert else "http"
    server: Any
    if args.tls_cert:
        server = make_tls_server(app, args.host, args.port, tls_context(args.tls_cert, args.tls_key,
                                                                        args.tls_client_ca))
        port, run, close = server.server_address[1], server.serve_forever, server.server_close
    else:
        server = make_server(app, args.host, args.port, args.threads, args.max_body_bytes)
        port, run, close = server.effective_port, server.run, server.close
    host = args.host if ":" not in args.host else f"[{args.host}]"
    path = args.url_prefix.strip("/")
    base = f"{scheme}://{host}:{port}" + (f"/{path}" if path else "")
    print(f"gpuslice extender listening on {scheme}://{host}:{port} "
          f"(verbs at {base}/filter, /prioritize, /preempt, /bind; also /healthz /readyz /metrics /debug/ledger "
          "/version)", flush=True)
    if banner is not None:
        banner(base)
    try:
        run()
    except KeyboardInterrupt:
        pass
    finally:
        close()
    return 0


def demo_banner(base: str) -> None:
    print(f"demo cluster: {len(GPU_NODES)} MI300X nodes x 8 GPUs ({', '.join(GPU_NODES)}) and "
          f"{', '.join(FIXTURE_NODES)}. Try:", flush=True)
    print(demo_curl(base), flush=True)
