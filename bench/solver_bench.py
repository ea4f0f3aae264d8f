"""Solver benchmark: per-decision latency and packing quality against honest greedy baselines.

    python -m bench.solver_bench [--json OUT] [--runs N] [--plan-seconds S]

Latency: the bind-time model on one 8-GPU node with 1-4 tenants placed in one decision, and on
64 GPUs (8 nodes) with 8 tenants, under the policy's time limit; plus the whole SolverPlacer call.
Packing: GPUs used on synthetic mixes of memory- and compute-bound workloads by one model per GPU,
first-fit, best-fit, first-fit-decreasing (all under the same capacity and class rules as the
solver) and by `gpuslice plan`, with the proven lower bound.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from extender.core.inventory import GpuInfo
from extender.core.ledger import Ledger, NodeState, PodRef
from extender.core.policy import Policy, load_policy, profile_rps
from extender.core.requests import SliceRequest
from extender.core.solver import (
    Item,
    Problem,
    Rules,
    SolverStats,
    Weights,
    bins_for_node,
    gpus_used,
    greedy,
    item_for,
    solve,
    violations,
)
from extender.engine.placement import build_assignment, evaluate
from extender.engine.planner import packing_problem, parse_cluster, parse_workloads, plan
from extender.engine.solver_placer import SolverPlacer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
GIB = 2**30


def mi300x(node: str, n: int) -> list[GpuInfo]:
    return [GpuInfo(index=i, id=f"{node}/{i}", model="MI300X", computeUnits=304, xcds=8, shaderEngines=32,
                    memoryBytes=192 * GIB, healthy=True, numaNode=i // 4, hiveId=node) for i in range(n)]


def random_request(rng: random.Random, policy: Policy) -> SliceRequest:
    cls = rng.choice(["memory-bound", "compute-bound"])
    millis = rng.choice([105, 125, 210, 250, 420])
    mem = rng.choice([8, 16, 24, 40, 60]) * GIB
    return SliceRequest("amd", millis, millis, mem, mem, 1, cls)  # type: ignore[arg-type]


def busy_node(rng: random.Random, name: str, gpus: int, policy: Policy, tenants: int) -> NodeState:
    """A node with `tenants` random slices already bound (placed greedily, as the engine would)."""
    ledger = Ledger(policy.burst.sharedFraction, policy.overcommit.memory)
    ledger.set_node(name, mi300x(name, gpus))
    for k in range(tenants):
        req = random_request(rng, policy)
        state = ledger.node(name)
        assert state is not None
        fit = evaluate(req, state, policy)
        if fit.ok:
            ledger.reserve(PodRef(f"u{k}", "bench", f"p{k}"), build_assignment(req, name, fit.choices, policy),
                           req.workload_class, req.compute_millis, ttl=None)
    state = ledger.node(name)
    assert state is not None
    return state


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(policy: Policy, runs: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    limit = policy.solver.timeLimitMs / 1000
    rows = []
    cases = [(f"8 GPUs, {k} in flight", 1, k, limit) for k in (1, 2, 3, 4)]
    cases += [("64 GPUs, 8 in flight", 8, 8, limit), ("64 GPUs, 8 in flight, 100 ms limit", 8, 8, 0.1)]
    for label, n_nodes, k, limit in cases:
        stats = SolverStats()
        times = []
        for _ in range(runs):
            states = [busy_node(rng, f"n{j}", 8, policy, rng.randint(4, 14)) for j in range(n_nodes)]
            bins = tuple(b for s in states for b in bins_for_node(s, policy))
            items = []
            for i in range(k):
                req = random_request(rng, policy)
                per_node = [item_for(f"t{i}", req, s, policy) for s in states]
                items.append(Item(f"t{i}", req.workload_class, tuple(c for it in per_node for c in it.cus),
                                  req.memory_bytes, req.memory_limit_bytes, 1, optional=True))
            problem = Problem(bins, tuple(items), Rules.from_policy(policy), Weights.from_policy(policy))
            t0 = time.perf_counter()
            sol = solve(problem, limit, policy.solver.workers, stats=stats)
            times.append(time.perf_counter() - t0)
            assert not violations(problem, sol.placement)
        rows.append(_latency_row(label, times, stats))
    # the whole bind decision: greedy estimate + model + CU layout, one pod on an 8-GPU node
    placer = SolverPlacer()
    times = []
    for _ in range(runs):
        state = busy_node(rng, "n0", 8, policy, rng.randint(4, 14))
        req = random_request(rng, policy)
        t0 = time.perf_counter()
        placer(req, state, policy)
        times.append(time.perf_counter() - t0)
    rows.append(_latency_row("SolverPlacer (bind), 8 GPUs", times, placer.stats))
    return rows


def _latency_row(label: str, times: list[float], stats: SolverStats) -> dict[str, object]:
    return {"case": label, "runs": len(times), "p50Ms": round(statistics.median(times) * 1000, 2),
            "p99Ms": round(percentile(times, 0.99) * 1000, 2), "maxMs": round(max(times) * 1000, 2),
            "outcomes": {k: v for k, v in stats.outcomes.items() if v}}


def synthetic_mix(policy: Policy, n: int, memory_share: float, seed: int, small: bool = False,
                  multi: float = 0.0) -> dict:
    """`n` workloads; memory-bound with probability `memory_share`, sized from the example profiles at
    random targets they can reach (or, `small`, explicit dev/test slices); a `multi` share of the
    memory-bound ones are tensor-parallel over 2 GPUs."""
    rng = random.Random(seed)
    by_class: dict[str, list[str]] = {"memory-bound": [], "compute-bound": []}
    for name, prof in sorted(policy.profiles.items()):
        by_class[prof.workloadClass].append(name)
    out = []
    for i in range(n):
        cls = "memory-bound" if rng.random() < memory_share else "compute-bound"
        if small:
            out.append({"name": f"w{i}", "replicas": rng.choice([1, 1, 2]), "class": cls,
                        "compute": rng.choice(["100m", "105m", "200m"]), "memory": f"{rng.choice([4, 8, 16, 32])}Gi"})
            continue
        prof = rng.choice(by_class[cls])
        top = profile_rps(policy.profiles[prof], 304)
        target = round(top * rng.uniform(0.2, 0.9), 1)
        spec = {"name": f"w{i}", "replicas": rng.choice([1, 1, 2, 3]), "profile": prof, "targetRps": target}
        if cls == "memory-bound" and rng.random() < multi:
            spec["count"] = 2
        out.append(spec)
    return {"workloads": out}


def packing(policy: Policy, seconds: float) -> list[dict[str, object]]:
    cluster = yaml.safe_load((EXAMPLES / "cluster-8node.yaml").read_text())
    big = {"nodes": [{"name": f"n{i}", "gpus": 8} for i in range(16)]}
    mixes = [
        ("40 models at SLAs (examples)", cluster, yaml.safe_load((EXAMPLES / "workloads-40.yaml").read_text())),
        ("decode-heavy 60 (80% memory-bound)", big, synthetic_mix(policy, 60, 0.8, 1)),
        ("balanced 60 (50%)", big, synthetic_mix(policy, 60, 0.5, 2)),
        ("encode-heavy 60 (20% memory-bound)", big, synthetic_mix(policy, 60, 0.2, 3)),
        ("dev/test 80 small slices (50%)", big, synthetic_mix(policy, 80, 0.5, 4, small=True)),
        ("tensor-parallel 50 (60%, 30% of them on 2 GPUs)", big, synthetic_mix(policy, 50, 0.6, 5, multi=0.3)),
    ]
    rows = []
    for label, cluster_doc, workloads_doc in mixes:
        nodes = parse_cluster(cluster_doc, policy)
        workloads, bad = parse_workloads(workloads_doc, policy)
        pk = packing_problem(nodes, workloads, policy)
        problem = pk.problem
        row: dict[str, object] = {"mix": label, "workloads": len(workloads), "rejected": len(bad),
                                  "replicas": len(problem.items),
                                  "memoryBound": sum(it.workload_class == "memory-bound" for it in problem.items),
                                  "onePerGpu": sum(it.count for it in problem.items)}
        for key, decreasing, best in (("firstFit", False, False), ("bestFit", False, True),
                                      ("firstFitDecreasing", True, False)):
            placement = greedy(problem, decreasing=decreasing, best=best)
            assert not violations(problem, placement)
            row[key] = gpus_used(problem, placement)
            row[key + "Unplaced"] = sum(w is None for w in placement)
        result = plan(nodes, workloads, policy, time_limit=seconds)
        row.update({"solver": result.gpus_used, "solverUnplaced": len(result.unplaced) - len(bad),
                    "lowerBound": result.lower_bound, "gap": round(result.gap, 4), "outcome": result.outcome,
                    "solverSeconds": round(result.seconds, 2)})
        rows.append(row)
    return rows


def show(lat: list[dict[str, object]], pack: list[dict[str, object]], console: Console) -> None:
    t = Table(title="per-decision latency (policy time limit applies)")
    for c in ("case", "runs", "p50 ms", "p99 ms", "max ms", "outcomes"):
        t.add_column(c, justify="left" if c in ("case", "outcomes") else "right")
    for r in lat:
        outcomes = ", ".join(f"{k} {v}" for k, v in r["outcomes"].items())  # type: ignore[union-attr]
        t.add_row(str(r["case"]), str(r["runs"]), str(r["p50Ms"]), str(r["p99Ms"]), str(r["maxMs"]), outcomes)
    console.print(t)
    t = Table(title="GPUs used (fewer is better; same class rules for every method)")
    for c in ("mix", "replicas", "1 model/GPU", "first-fit", "best-fit", "FFD", "solver", "lower bound", "gap"):
        t.add_column(c, justify="left" if c == "mix" else "right")
    for r in pack:
        t.add_row(str(r["mix"]), f"{r['replicas']} ({r['memoryBound']} M)", str(r["onePerGpu"]), str(r["firstFit"]),
                  str(r["bestFit"]), str(r["firstFitDecreasing"]), str(r["solver"]), str(r["lowerBound"]),
                  f"{float(r['gap']):.1%}")  # type: ignore[arg-type]
    console.print(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    ap.add_argument("--runs", type=int, default=200, help="decisions per latency case (default 200)")
    ap.add_argument("--plan-seconds", type=float, default=5.0, help="time limit per packing plan (default 5)")
    ap.add_argument("--policy", default=str(EXAMPLES / "policy-profiles.yaml"))
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    policy = load_policy(args.policy)
    lat = latency(policy, args.runs, args.seed)
    pack = packing(policy, args.plan_seconds)
    show(lat, pack, Console(width=160))
    if args.json:
        Path(args.json).write_text(json.dumps({"policyVersion": policy.version, "timeLimitMs":
                                               policy.solver.timeLimitMs, "latency": lat, "packing": pack,
                                               "targets": targets(lat, pack)}, indent=2))
    return 0


def targets(lat: list[dict[str, object]], pack: list[dict[str, object]]) -> dict[str, bool]:
    eight = [r for r in lat if str(r["case"]).startswith("8 GPUs")]
    forty = pack[0]
    return {"p99At8GpusUnder20ms": all(float(r["p99Ms"]) <= 20.0 for r in eight),  # type: ignore[arg-type]
            "solverNoWorseThanBestFit": all(int(r["solver"]) <= int(r["bestFit"]) for r in pack),  # type: ignore
            "within5PercentOfLowerBoundOn40": int(forty["solver"]) <= 1.05 * int(forty["lowerBound"]),  # type: ignore
            }


if __name__ == "__main__":
    raise SystemExit(main())
