"""Latency of the extender's verbs at 100, 1,000 and 5,000 nodes x 8 MI300X GPUs.

Every iteration is a new pod (fresh UID, shape drawn from a realistic mix of serving, embedding,
vision and multi-GPU jobs) going through filter (all nodes, NodeNames form), prioritize (the nodes
that passed) and bind (to the best-scored node), so the cluster fills up as the run goes and node
states keep changing. The cluster starts with existing tenants of both classes, some GPUs full.

modes: `inprocess` calls the engine directly; `http` posts the same calls to a real waitress server
on 127.0.0.1 (JSON encode/decode, Flask, wire models included).

    python bench/extender_bench.py --json OUT [--sizes 100,1000,5000] [--iterations 200] [--modes inprocess,http]
"""

from __future__ import annotations

import argparse
import http.client
import json
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


class HttpClient:
    """Keep-alive HTTP/1.1 to a waitress server serving the app in this process."""

    def __init__(self, engine: Engine) -> None:
        from waitress import create_server

        from extender.http.app import create_app

        self.server = create_server(create_app(engine), host="127.0.0.1", port=0, threads=4)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.server.effective_port, timeout=30)

    def post(self, verb: str, body: Any) -> Any:
        data = json.dumps(body).encode()
        self.conn.request("POST", f"/scheduler/{verb}", body=data, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        out = json.loads(resp.read())
        if resp.status != 200:
            raise RuntimeError(f"{verb}: HTTP {resp.status}: {out}")
        return out

    def close(self) -> None:
        self.conn.close()
        self.server.close()


def pod_json(pod: PodView) -> dict[str, Any]:
    return {"metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid,
                         "annotations": dict(pod.annotations)},
            "spec": {"containers": [{"name": "main", "resources": {"requests": {"cpu": "4", "memory": "32Gi"}}}]}}


def run(nodes: int, mode: str, iterations: int, warmup: int, seed: int, console: Console) -> dict[str, Any]:
    rng = random.Random(seed)
    policy = parse_policy({})
    t0 = time.perf_counter()
    cluster = build_cluster(nodes, rng, policy)
    engine = Engine(cluster, PolicyStore(policy))
    problems = engine.sync()
    assert not problems, problems[:3]
    console.log(f"{nodes} nodes: cluster of {len(cluster.list_pods())} tenants built and synced in "
                f"{time.perf_counter() - t0:.1f}s ({mode})")
    names = [f"gpu-{i:05d}" for i in range(nodes)]
    client = HttpClient(engine) if mode == "http" else None
    times: dict[str, list[float]] = {v: [] for v in VERBS}
    bound = unschedulable = 0
    try:
        for i in range(warmup + iterations):
            uid = str(uuid.UUID(int=rng.getrandbits(128)))
            pod = PodView(uid, "bench", f"p-{uid[:8]}", annotations=draw(rng).annotations(rng))
            start = time.perf_counter()
            if client:
                out = client.post("filter", {"Pod": pod_json(pod), "Nodes": None, "NodeNames": names})
                passed = out["NodeNames"]
            else:
                passed = engine.filter(pod, names=names).passed
            t_filter = time.perf_counter() - start
            if not passed:
                unschedulable += 1
                continue
            start = time.perf_counter()
            if client:
                scores = [(h["Host"], h["Score"]) for h in client.post(
                    "prioritize", {"Pod": pod_json(pod), "Nodes": None, "NodeNames": passed})]
            else:
                scores = engine.prioritize(pod, names=passed)
            t_prio = time.perf_counter() - start
            best = max(scores, key=lambda s: s[1])[0]
            start = time.perf_counter()
            if client:
                error = client.post("bind", {"PodName": pod.name, "PodNamespace": pod.namespace, "PodUID": uid,
                                             "Node": best})["Error"]
            else:
                error = engine.bind(pod.namespace, pod.name, uid, best)
            t_bind = time.perf_counter() - start
            if error:
                raise RuntimeError(f"bind failed: {error}")
            bound += 1
            if i >= warmup:
                times["filter"].append(t_filter)
                times["prioritize"].append(t_prio)
                times["bind"].append(t_bind)
    finally:
        if client:
            client.close()
    rows = [{"nodes": nodes, "verb": verb, "mode": mode, "p50_ms": round(pct(ts, 0.5) * 1000, 3),
             "p99_ms": round(pct(ts, 0.99) * 1000, 3), "max_ms": round(max(ts) * 1000, 3),
             "mean_ms": round(statistics.fmean(ts) * 1000, 3), "samples": len(ts)}
            for verb, ts in times.items() if ts]
    return {"rows": rows, "bound": bound, "unschedulable": unschedulable}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", metavar="OUT", help="write results as JSON")
    p.add_argument("--sizes", default="100,1000,5000", help="comma-separated node counts")
    p.add_argument("--iterations", type=int, default=200, help="measured pods per size and mode")
    p.add_argument("--warmup", type=int, default=20, help="pods scheduled first and not measured")
    p.add_argument("--modes", default="inprocess,http", help="inprocess, http or both")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    console = Console(stderr=True)
    results: list[dict[str, Any]] = []
    for nodes in (int(s) for s in args.sizes.split(",")):
        for mode in args.modes.split(","):
            out = run(nodes, mode, args.iterations, args.warmup, args.seed, console)
            console.log(f"  {out['bound']} pods bound, {out['unschedulable']} unschedulable")
            results.extend(out["rows"])
    table = Table(title="gpuslice extender latency (ms), NodeNames form, 8 MI300X GPUs per node")
    for col in ("nodes", "mode", "verb", "p50", "p99", "max", "samples"):
        table.add_column(col, justify="right" if col not in ("mode", "verb") else "left")
    for r in results:
        table.add_row(str(r["nodes"]), r["mode"], r["verb"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['max_ms']:.2f}", str(r["samples"]))
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "iterations": args.iterations,
                                               "warmup": args.warmup, "seed": args.seed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
