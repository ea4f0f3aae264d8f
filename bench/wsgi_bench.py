"""Which WSGI server serves kube-scheduler's round trips with less CPU: waitress (what `gpuslice serve`
uses: an asyncore loop that hands each request to a worker thread and is woken to send the answer)
or the standard library's threaded server (tls.py's, run without TLS: one thread per keep-alive
connection reads, answers and writes, no hand-off).

Each server runs the same app over the same engine (bench/extender_bench.py's cluster) in its own
child process. Per round and server, one keep-alive connection posts `--requests` filter and
prioritize pairs in the NodeNames form, as kube-scheduler does per pod; the figure is the server
process's own CPU (/proc) per pair, and the wall time per pair. Servers alternate within a round;
medians over rounds, with min..max.

    python bench/wsgi_bench.py [--nodes 1000] [--requests 200] [--rounds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

SERVERS = ("waitress", "threaded")


def serve(kind: str, port: int, nodes: int) -> None:
    from extender_bench import build_cluster

    from extender.core.policy import parse_policy
    from extender.engine.policy_store import PolicyStore
    from extender.engine.scheduler import Engine
    from extender.http.app import create_app
    from extender.http.serve import short_gc_pauses

    policy = parse_policy({})
    engine = Engine(build_cluster(nodes, random.Random(1), policy), PolicyStore(policy))
    engine.sync()
    short_gc_pauses()
    app = create_app(engine)
    if kind == "waitress":
        from waitress import serve as waitress_serve

        waitress_serve(app, host="127.0.0.1", port=port, threads=16, ident="gpuslice")
    else:
        from wsgiref.simple_server import make_server

        from extender.http.tls import _Handler, _ThreadingWSGIServer

        make_server("127.0.0.1", port, app, server_class=_ThreadingWSGIServer, handler_class=_Handler).serve_forever()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"server on {port} not ready")


def pairs(port: int, nodes: int, count: int, rng: random.Random) -> None:
    from extender_bench import draw

    names = [f"gpu-{i:05d}" for i in range(nodes)]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        uid = str(uuid.UUID(int=rng.getrandbits(128)))
        pod = {"metadata": {"name": f"p-{uid[:8]}", "namespace": "bench", "uid": uid,
                            "annotations": draw(rng).annotations(rng)},
               "spec": {"containers": [{"name": "main", "resources": {"requests": {"cpu": "4"}}}]}}
        passed = names
        for verb in ("filter", "prioritize"):
            body = json.dumps({"Pod": pod, "Nodes": None, "NodeNames": passed})
            conn.request("POST", f"/scheduler/{verb}", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            out = json.loads(resp.read())
            if resp.status != 200:
                raise RuntimeError(f"{verb}: {resp.status} {out}")
            if verb == "filter":
                passed = out.get("NodeNames") or names[:1]
    conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--requests", type=int, default=200, help="filter+prioritize pairs per round and server")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", metavar="OUT")
    p.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.nodes)
        return 0
    console = Console(stderr=True)
    procs: dict[str, tuple[int, subprocess.Popen]] = {}
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in SERVERS}
    try:
        for kind in SERVERS:
            port = free_port()
            procs[kind] = (port, subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port),
                                                   "--nodes", str(args.nodes)], cwd=BENCH.parent))
        for port, _ in procs.values():
            wait_ready(port)
        rng = random.Random(7)
        for port, _ in procs.values():  # warm-up: every shape seen once
            pairs(port, args.nodes, 20, random.Random(3))
        for rnd in range(args.rounds):
            for kind in (SERVERS if rnd % 2 == 0 else SERVERS[::-1]):
                port, proc = procs[kind]
                seed = rng.getrandbits(32)
                cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                pairs(port, args.nodes, args.requests, random.Random(seed))
                cpu, wall = cpu_seconds(proc.pid) - cpu0, time.perf_counter() - t0
                rows[kind].append((1000 * cpu / args.requests, 1000 * wall / args.requests))
                console.log(f"round {rnd} {kind}: {rows[kind][-1][0]:.2f} CPU ms, {rows[kind][-1][1]:.2f} wall ms "
                            "per pair")
    finally:
        for _, proc in procs.values():
            proc.terminate()
            proc.wait(10)
    table = Table(title=f"WSGI server CPU per filter+prioritize pair, {args.nodes} nodes "
                        f"(median of {args.rounds} rounds, min..max)")
    for col in ("server", "server CPU ms/pair", "wall ms/pair"):
        table.add_column(col, justify="right" if col != "server" else "left")
    summary = {}
    for kind, rs in rows.items():
        cpu, wall = [r[0] for r in rs], [r[1] for r in rs]
        summary[kind] = {"cpuMs": statistics.median(cpu), "cpuMin": min(cpu), "cpuMax": max(cpu),
                         "wallMs": statistics.median(wall), "rounds": rs}
        table.add_row(kind, f"{statistics.median(cpu):.2f} ({min(cpu):.2f}..{max(cpu):.2f})",
                      f"{statistics.median(wall):.2f} ({min(wall):.2f}..{max(wall):.2f})")
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"nodes": args.nodes, "requests": args.requests, "servers": summary,
                                               "loadAverage": os.getloadavg()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
