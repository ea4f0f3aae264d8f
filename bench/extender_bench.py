"""Latency of the extender's verbs at 100, 1,000 and 5,000 nodes x 8 MI300X GPUs.

Every iteration is a new pod (fresh UID, shape drawn from a realistic mix of serving, embedding,
vision and multi-GPU jobs) going through filter (all nodes, NodeNames form), prioritize (the nodes
that passed) and bind (to the best-scored node), so the cluster fills up as the run goes and node
states keep changing. The cluster starts with existing tenants of both classes, some GPUs full.

modes: `inprocess` calls the engine directly; `http` posts the same calls to a real waitress server
on 127.0.0.1 (JSON encode/decode, Flask, wire models included).

    python bench/extender_bench.py --json OUT [--sizes 100,1000,5000] [--iterations 200] [--modes inprocess,http]
        [--fragmentation]

`--fragmentation`: the default policy with `scoring.fragmentation` and `scoring.candidates` on (the
placement path the `openb` policy uses: filter narrows to candidates, bind takes the scored GPUs).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from extender.core.assignment import ASSIGNMENT_ANNOTATION  # noqa: E402
from extender.core.ledger import Ledger, PodRef  # noqa: E402
from extender.core.policy import Policy, parse_policy  # noqa: E402
from extender.core.requests import parse_slice_request  # noqa: E402
from extender.engine.cluster import MemoryCluster, PodView  # noqa: E402
from extender.engine.demo import gpu_node, mi300x_inventory  # noqa: E402
from extender.engine.placement import build_assignment, evaluate  # noqa: E402
from extender.engine.policy_store import PolicyStore  # noqa: E402
from extender.engine.scheduler import Engine  # noqa: E402
from extender.http.serve import short_gc_pauses  # noqa: E402

VERBS = ("filter", "prioritize", "bind")


@dataclass(frozen=True)
class Shape:
    name: str
    weight: float
    compute: str
    memory: str
    cls: str
    limit: str | None = None
    count: int = 1

    def annotations(self, rng: random.Random) -> dict[str, str]:
        # jitter memory a little, as real manifests differ: a realistic mix, not one repeated request
        gib = int(self.memory.removesuffix("Gi"))
        mem = max(1, gib + rng.choice((-4, 0, 0, 4, 8)))
        out = {"gpuslice.io/compute": self.compute, "gpuslice.io/memory": f"{mem}Gi", "gpuslice.io/class": self.cls}
        if self.limit:
            out["gpuslice.io/computeLimit"] = self.limit
        if self.count > 1:
            out["gpuslice.io/count"] = str(self.count)
        return out


MIX = (
    Shape("llm-decode", 4, "250m", "60Gi", "memory-bound", limit="375m"),
    Shape("llm-decode-small", 3, "125m", "24Gi", "memory-bound"),
    Shape("llm-prefill", 2, "500m", "24Gi", "compute-bound", limit="625m"),
    Shape("embedding", 3, "125m", "8Gi", "compute-bound"),
    Shape("rag", 2, "125m", "40Gi", "memory-bound"),
    Shape("vision", 1, "375m", "32Gi", "compute-bound", limit="500m"),
    Shape("llm-70b-tp2", 0.5, "750m", "150Gi", "memory-bound", count=2),
    Shape("train-tp4", 0.3, "500m", "80Gi", "compute-bound", count=4),
)


def draw(rng: random.Random) -> Shape:
    return rng.choices(MIX, weights=[s.weight for s in MIX])[0]


def build_cluster(nodes: int, rng: random.Random, policy: Policy) -> MemoryCluster:
    """N nodes x 8 GPUs with existing tenants: most nodes partly used, some GPUs full, some nodes empty."""
    cluster = MemoryCluster()
    ledger = Ledger(policy.burst.sharedFraction, policy.overcommit.memory)
    for i in range(nodes):
        name = f"gpu-{i:05d}"
        cluster.add_node(gpu_node(name))
        ledger.set_node(name, mi300x_inventory(name))
        tenants = rng.choice((0, 2, 4, 6, 8, 12, 16, 24))  # 0 = empty node, 24 = (nearly) full node
        for _ in range(tenants):
            ann = draw(rng).annotations(rng)
            req = parse_slice_request({}, ann, policy)
            assert req is not None
            fit = evaluate(req, ledger.node(name), policy)
            if not fit.ok:
                continue
            uid = str(uuid.UUID(int=rng.getrandbits(128)))
            a = build_assignment(req, name, fit.choices, policy)
            ledger.reserve(PodRef(uid, "bench", f"t-{uid[:8]}"), a, req.workload_class, req.compute_millis, None)
            cluster.add_pod(PodView(uid, "bench", f"t-{uid[:8]}", annotations={**ann, ASSIGNMENT_ANNOTATION:
                                                                                a.to_json()},
                                    node_name=name, phase="Running"))
    return cluster


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class InProcess:
    """The same three calls straight into the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def filter(self, pod: PodView, names: list[str]) -> list[str]:
        return self.engine.filter(pod, names=names).passed

    def prioritize(self, pod: PodView, names: list[str]) -> list[tuple[str, int]]:
        return self.engine.prioritize(pod, names=names)

    def bind(self, pod: PodView, node: str) -> str:
        return self.engine.bind(pod.namespace, pod.name, pod.uid, node)


class HttpClient:
    """Keep-alive HTTP/1.1 to a waitress server serving the app in this process."""

    def __init__(self, engine: Engine) -> None:
        from waitress import create_server

        from extender.http.app import create_app

        self.server = create_server(create_app(engine), host="127.0.0.1", port=0, threads=4)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.server.effective_port, timeout=30)

    def filter(self, pod: PodView, names: list[str]) -> list[str]:
        return self.post("filter", {"Pod": pod_json(pod), "Nodes": None, "NodeNames": names})["NodeNames"]

    def prioritize(self, pod: PodView, names: list[str]) -> list[tuple[str, int]]:
        out = self.post("prioritize", {"Pod": pod_json(pod), "Nodes": None, "NodeNames": names})
        return [(h["Host"], h["Score"]) for h in out]

    def bind(self, pod: PodView, node: str) -> str:
        return self.post("bind", {"PodName": pod.name, "PodNamespace": pod.namespace, "PodUID": pod.uid,
                                  "Node": node})["Error"]

    def post(self, verb: str, body: Any) -> Any:
        data = json.dumps(body).encode()
        self.conn.request("POST", f"/scheduler/{verb}", body=data, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        out = json.loads(resp.read())
        if resp.status != 200:
            raise RuntimeError(f"{verb}: HTTP {resp.status}: {out}")
        return out

    def close(self) -> None:
        """Stop the server's loop by closing every channel it watches (waitress has no stop call)."""
        self.conn.close()
        self.server.task_dispatcher.shutdown()
        while self.server._map:
            for channel in list(self.server._map.values()):
                channel.handle_close()
        self.thread.join(timeout=5)


def pod_json(pod: PodView) -> dict[str, Any]:
    return {"metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid,
                         "annotations": dict(pod.annotations)},
            "spec": {"containers": [{"name": "main", "resources": {"requests": {"cpu": "4", "memory": "32Gi"}}}]}}


def run(nodes: int, mode: str, iterations: int, warmup: int, seed: int, console: Console,
        fragmentation: bool = False) -> dict[str, Any]:
    rng = random.Random(seed)
    policy = parse_policy({"scoring": {"fragmentation": {"enabled": True}, "candidates": {"enabled": True}}}
                          if fragmentation else {})
    t0 = time.perf_counter()
    cluster = build_cluster(nodes, rng, policy)
    engine = Engine(cluster, PolicyStore(policy))
    problems = engine.sync()
    assert not problems, problems[:3]
    short_gc_pauses(interval=5.0)  # as `gpuslice serve` does after its sync (a short bench: a shorter interval)
    console.log(f"{nodes} nodes: cluster of {len(cluster.list_pods())} tenants built and synced in "
                f"{time.perf_counter() - t0:.1f}s ({mode})")
    names = [f"gpu-{i:05d}" for i in range(nodes)]
    client = HttpClient(engine) if mode == "http" else None
    times: dict[str, list[float]] = {v: [] for v in VERBS}
    cpu: dict[str, list[float]] = {v: [] for v in VERBS}
    new_shape: dict[str, list[float]] = {v: [] for v in VERBS}
    seen: set[str] = set()
    bound = unschedulable = 0

    def timed(verb: str, measured: bool, first: bool, call: Any, *args: Any) -> Any:
        start, start_cpu = time.perf_counter(), time.thread_time()
        out = call(*args)
        wall, used = time.perf_counter() - start, time.thread_time() - start_cpu
        if measured:
            times[verb].append(wall)
            cpu[verb].append(used)  # this thread's CPU: what the verb costs, without other processes' load
            if first:
                new_shape[verb].append(wall)
        return out

    verbs = client or InProcess(engine)
    try:
        for i in range(warmup + iterations):
            uid = str(uuid.UUID(int=rng.getrandbits(128)))
            pod = PodView(uid, "bench", f"p-{uid[:8]}", annotations=draw(rng).annotations(rng))
            shape = json.dumps(sorted(pod.annotations.items()))
            first, measured = shape not in seen, i >= warmup
            seen.add(shape)
            passed = timed("filter", measured, first, verbs.filter, pod, names)
            if not passed:
                unschedulable += 1
                continue
            scores = timed("prioritize", measured, first, verbs.prioritize, pod, passed)
            best = max(scores, key=lambda s: s[1])[0]
            error = timed("bind", measured, first, verbs.bind, pod, best)
            if error:
                raise RuntimeError(f"bind failed: {error}")
            bound += 1
    finally:
        if client:
            client.close()
    rows = []
    for verb, ts in times.items():
        if not ts:
            continue
        rows.append({"nodes": nodes, "verb": verb, "mode": mode, "p50_ms": ms(pct(ts, 0.5)),
                     "p99_ms": ms(pct(ts, 0.99)), "max_ms": ms(max(ts)), "mean_ms": ms(statistics.fmean(ts)),
                     # in http mode the work happens on the server's threads: no CPU figure for it
                     "cpu_p50_ms": ms(pct(cpu[verb], 0.5)) if mode == "inprocess" else None,
                     "cpu_p99_ms": ms(pct(cpu[verb], 0.99)) if mode == "inprocess" else None,
                     "new_shape_samples": len(new_shape[verb]),
                     "new_shape_p50_ms": ms(pct(new_shape[verb], 0.5)) if new_shape[verb] else None,
                     "samples": len(ts)})
    return {"rows": rows, "bound": bound, "unschedulable": unschedulable}


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", metavar="OUT", help="write results as JSON")
    p.add_argument("--sizes", default="100,1000,5000", help="comma-separated node counts")
    p.add_argument("--iterations", type=int, default=200, help="measured pods per size and mode")
    p.add_argument("--warmup", type=int, default=20, help="pods scheduled first and not measured")
    p.add_argument("--modes", default="inprocess,http", help="inprocess, http or both")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fragmentation", action="store_true", help="fragmentation scoring and candidates on")
    args = p.parse_args(argv)
    console = Console(stderr=True)
    results: list[dict[str, Any]] = []
    for nodes in (int(s) for s in args.sizes.split(",")):
        for mode in args.modes.split(","):
            out = run(nodes, mode, args.iterations, args.warmup, args.seed, console, args.fragmentation)
            console.log(f"  {out['bound']} pods bound, {out['unschedulable']} unschedulable")
            results.extend(out["rows"])
    table = Table(title="gpuslice extender latency (ms), NodeNames form, 8 MI300X GPUs per node"
                  + (", fragmentation + candidates" if args.fragmentation else ""))
    for col in ("nodes", "mode", "verb", "p50", "p99", "max", "cpu p50", "cpu p99", "new-shape p50", "samples"):
        table.add_column(col, justify="right" if col not in ("mode", "verb") else "left")
    for r in results:
        fresh = "-" if r["new_shape_p50_ms"] is None else f"{r['new_shape_p50_ms']:.2f} ({r['new_shape_samples']})"
        table.add_row(str(r["nodes"]), r["mode"], r["verb"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['max_ms']:.2f}", _num(r["cpu_p50_ms"]), _num(r["cpu_p99_ms"]), fresh,
                      str(r["samples"]))
    Console(width=140).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "iterations": args.iterations,
                                               "warmup": args.warmup, "seed": args.seed,
                                               "fragmentation": args.fragmentation,
                                               "load_average": os.getloadavg(), "cpus": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
