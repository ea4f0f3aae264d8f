"""SLA sizing benchmark: what budgeting the worst co-tenancy costs in GPUs, and what sizing alone breaks.

    python -m bench.sla_sizing [--json OUT] [--plan-seconds S] [--repeats N]

For each mix, `gpuslice plan` on the same cluster and per-GPU rules, with two sizing rules:
- alone: each profile + target replica sized as if it never had a co-tenant (the extender's rule before
  issue 11; here: the policy with its interference penalties set to 0 at sizing time);
- budgeted: core/sizing.size_for_target, the worst co-tenancy the policy's per-GPU rules allow.
Then every SLA replica's req/s is predicted beside the co-tenants the plan actually gave it, with the
policy's real penalties (core/sizing.predict). Reported per mix and rule: GPUs used (median and range
over the repeats: the plan is a time-limited CP-SAT solve), the proven lower bound, CUs guaranteed to
SLA replicas, replicas under their target and the worst predicted/target ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from extender.core.policy import Policy, load_policy, parse_policy, profile_rps
from extender.core.sizing import predict
from extender.engine.planner import parse_cluster, parse_workloads, plan, replica_key

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCENARIO_KEYS = ("name", "replicas", "profile", "targetRps", "compute", "memory", "class", "count")


def seed_fleet() -> tuple[dict, dict, Policy]:
    """The simulator's seed scenario as `plan` input: its pods as workloads, its nodes' GPUs."""
    doc = yaml.safe_load((ROOT / "extender" / "sim" / "data" / "seed.scenario.yaml").read_text())
    workloads = [{k: v for k, v in pod.items() if k in SCENARIO_KEYS} for pod in doc["pods"]]
    nodes = [{"name": f"{n['name']}-{i}", "gpus": n["gpus"], "model": n["model"]}
             for n in doc["nodes"] for i in range(n["count"])]
    return {"nodes": nodes}, {"workloads": workloads}, load_policy(ROOT / "policies" / "mi300x-inference.yaml")


def synthetic(seed: int) -> tuple[dict, dict, Policy]:
    """40 services of the inference policy's profiles at targets 20-80% of each profile's peak."""
    policy = load_policy(ROOT / "policies" / "mi300x-inference.yaml")
    rng = random.Random(seed)
    names = sorted(policy.profiles)
    workloads = []
    for i in range(40):
        prof = rng.choice(names)
        top = profile_rps(policy.profiles[prof], 304)
        workloads.append({"name": f"s{i}", "replicas": rng.choice([1, 1, 2, 3]), "profile": prof,
                          "targetRps": round(top * rng.uniform(0.2, 0.8), 2)})
    return {"nodes": [{"name": f"n{i}", "gpus": 8} for i in range(12)]}, {"workloads": workloads}, policy


def examples() -> tuple[dict, dict, Policy]:
    return (yaml.safe_load((EXAMPLES / "cluster-8node.yaml").read_text()),
            yaml.safe_load((EXAMPLES / "workloads-40.yaml").read_text()),
            load_policy(EXAMPLES / "policy-profiles.yaml"))


def without_interference(policy: Policy) -> Policy:
    doc = policy.model_dump(mode="json", by_alias=True)
    doc["interference"] = {"memoryBoundPenalty": 0.0, "computeBoundPenalty": 0.0}
    return parse_policy(doc)


def run(cluster: dict, workloads_doc: dict, policy: Policy, sizing_policy: Policy, seconds: float) -> dict:
    """Plan with requests sized under `sizing_policy`; predict with `policy` (placement rules are the same)."""
    nodes = parse_cluster(cluster, policy)
    workloads, bad = parse_workloads(workloads_doc, sizing_policy)
    result = plan(nodes, workloads, sizing_policy, time_limit=seconds)
    by_name = {w.name: w for w in workloads}
    states = {s.name: s for s in result.nodes}
    ratios, sla_cus = [], 0
    for p in result.placements:
        req = by_name[p.workload].request
        if req.profile is None or req.target_rps is None:
            continue
        gpus = [g for g in (states[p.assignment.node].gpu(ga.index) for ga in p.assignment.gpus) if g is not None]
        got = predict(policy, req.profile, req.target_rps, gpus, replica_key(p.workload, p.replica))
        if got.predicted_rps is not None:
            ratios.append(got.predicted_rps / req.target_rps)
        sla_cus += p.cus * len(p.assignment.gpus)
    return {"gpus": result.gpus_used, "lowerBound": result.lower_bound, "slaReplicas": len(ratios),
            "underTarget": sum(r < 1 - 1e-9 for r in ratios), "worstRatio": round(min(ratios, default=0.0), 3),
            "slaCus": sla_cus, "unplaced": len(result.unplaced) - len(bad), "refused": len(bad)}


def bench(seconds: float, repeats: int, seed: int) -> list[dict[str, object]]:
    rows = []
    for label, (cluster, workloads_doc, policy) in (("seed fleet (mi300x-inference)", seed_fleet()),
                                                    ("40 examples (policy-profiles)", examples()),
                                                    ("synthetic 40 (mi300x-inference)", synthetic(seed))):
        for rule, sizing_policy in (("alone", without_interference(policy)), ("budgeted", policy)):
            runs = [run(cluster, workloads_doc, policy, sizing_policy, seconds) for _ in range(repeats)]
            gpus = [r["gpus"] for r in runs]
            rows.append({"mix": label, "rule": rule, "gpusMedian": statistics.median(gpus), "gpusMin": min(gpus),
                         "gpusMax": max(gpus), **{k: v for k, v in runs[0].items() if k != "gpus"}})
    return rows


def show(rows: list[dict[str, object]], console: Console) -> None:
    t = Table(title="SLA sizing: GPUs used and SLA replicas under target beside their planned co-tenants")
    for c in ("mix", "sizing", "GPUs (median, range)", "lower bound", "SLA replicas", "CUs to SLA replicas",
              "under target", "worst predicted/target", "unplaced", "refused"):
        t.add_column(c, justify="left" if c in ("mix", "sizing") else "right")
    for r in rows:
        t.add_row(str(r["mix"]), str(r["rule"]), f"{r['gpusMedian']} ({r['gpusMin']}-{r['gpusMax']})",
                  str(r["lowerBound"]), str(r["slaReplicas"]), str(r["slaCus"]), str(r["underTarget"]),
                  str(r["worstRatio"]), str(r["unplaced"]), str(r["refused"]))
    console.print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    ap.add_argument("--plan-seconds", type=float, default=3.0, help="time limit per plan (default 3)")
    ap.add_argument("--repeats", type=int, default=3, help="plans per mix and rule (default 3)")
    ap.add_argument("--seed", type=int, default=11, help="seed of the synthetic mix")
    args = ap.parse_args(argv)
    rows = bench(args.plan_seconds, args.repeats, args.seed)
    show(rows, Console(width=200))
    if args.json:
        Path(args.json).write_text(json.dumps({"planSeconds": args.plan_seconds, "repeats": args.repeats,
                                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
