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

The alternative to budgeting, checking the actual co-tenancy at placement, has no CP-SAT model here, so
a second table compares the three rules under one placer: first-fit-decreasing over the cluster's GPUs
(the per-GPU rule `gpu_reject_reason`), replicas in descending size. `check` sizes each replica for the
co-tenants the candidate GPU would give it (itself included) and refuses a GPU where it, or an SLA tenant
already there, would fall under its target.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import replace
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from extender.core.interference import MEMORY_BOUND, CoTenants, co_tenants, loss
from extender.core.layout import choose_cus
from extender.core.ledger import GpuState, Ledger, PodRef
from extender.core.policy import Policy, load_policy, parse_policy, profile_rps, round_cus
from extender.core.requests import SliceRequest
from extender.core.sizing import millis_for_cus, predict
from extender.engine.placement import GpuChoice, build_assignment, gpu_reject_reason, needed_cus
from extender.engine.planner import Workload, parse_cluster, parse_workloads, plan, replica_key

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


def _alone_cus(policy: Policy, req: SliceRequest, others: CoTenants) -> int | None:
    """The smallest rounded CU count meeting the target beside exactly `others`, or None."""
    profile = policy.profiles[req.profile or ""]
    model = policy.models[profile.gpuModel]
    for wanted in range(1, model.computeUnits + 1):
        cus = round_cus(policy, model, model.computeUnits, wanted)
        if profile_rps(profile, cus) * (1 - loss(policy, others)) >= (req.target_rps or 0):
            return cus
    return None


def _check_size(policy: Policy, req: SliceRequest, gpu: GpuState, slas: dict[str, SliceRequest]) -> SliceRequest | None:
    """`req` sized for the co-tenants this GPU would give it, if it and every SLA tenant there stay at target."""
    if req.profile is not None and req.target_rps is not None:
        cus = _alone_cus(policy, req, co_tenants(gpu, ""))
        if cus is None:
            return None
        req = replace(req, compute_millis=millis_for_cus(cus, gpu.info.computeUnits))
        req = replace(req, compute_limit_millis=req.compute_millis)
    for s in gpu.slices:
        other = slas.get(s.pod.uid)
        if other is None:
            continue
        now = co_tenants(gpu, s.pod.uid)
        after = CoTenants(now.memory_bound + (req.workload_class == MEMORY_BOUND),
                          now.compute_bound + (req.workload_class != MEMORY_BOUND))
        rps = profile_rps(policy.profiles[other.profile or ""], len(s.cus)) * (1 - loss(policy, after))
        if rps < (other.target_rps or 0):
            return None
    return req


def first_fit(cluster: dict, workloads_doc: dict, policy: Policy, rule: str) -> dict:
    """First-fit-decreasing of single-GPU replicas under one sizing rule; predictions as in `run`."""
    sizing_policy = without_interference(policy) if rule in ("alone", "check") else policy
    workloads, bad = parse_workloads(workloads_doc, sizing_policy)
    ledger = Ledger(policy.burst.sharedFraction, policy.overcommit.memory)
    for name, gpus in parse_cluster(cluster, policy).items():
        ledger.set_node(name, gpus)
    replicas: list[tuple[Workload, int]] = [(w, r) for w in workloads for r in range(w.replicas)]
    replicas.sort(key=lambda wr: -wr[0].request.compute_millis)
    slas: dict[str, SliceRequest] = {}
    unplaced = 0
    for w, r in replicas:
        uid = replica_key(w.name, r)
        placed = False
        for state in ledger.nodes():
            for gpu in state.gpus:
                req = _check_size(policy, w.request, gpu, slas) if rule == "check" else w.request
                if req is None or req.count != 1 or gpu_reject_reason(req, gpu, policy) is not None:
                    continue
                cus = choose_cus(gpu.free_cus, needed_cus(req, gpu, policy), gpu.info.xcds)
                if cus is None:
                    continue
                a = build_assignment(req, state.name, (GpuChoice(gpu, cus, frozenset(), 0.0),), policy)
                ledger.reserve(PodRef(uid, "bench", uid), a, req.workload_class, req.compute_millis, None)
                if req.profile is not None and req.target_rps is not None:
                    slas[uid] = req
                placed = True
                break
            if placed:
                break
        unplaced += not placed
    ratios = []
    for uid, req in slas.items():
        entry = ledger.entry(uid)
        state = ledger.node(entry.assignment.node) if entry else None
        if entry is None or state is None:
            continue
        gpus = [g for g in (state.gpu(ga.index) for ga in entry.assignment.gpus) if g is not None]
        got = predict(policy, req.profile or "", req.target_rps or 0, gpus, uid)
        if got.predicted_rps is not None:
            ratios.append(got.predicted_rps / (req.target_rps or 1))
    return {"mix": "", "rule": rule, "gpus": sum(1 for s in ledger.nodes() for g in s.gpus if g.slices),
            "slaReplicas": len(ratios), "underTarget": sum(x < 1 - 1e-9 for x in ratios),
            "worstRatio": round(min(ratios, default=0.0), 3), "unplaced": unplaced, "refused": len(bad)}


def mixes(seed: int) -> list[tuple[str, tuple[dict, dict, Policy]]]:
    return [("seed fleet (mi300x-inference)", seed_fleet()), ("40 examples (policy-profiles)", examples()),
            ("synthetic 40 (mi300x-inference)", synthetic(seed))]


def bench_first_fit(seed: int) -> list[dict[str, object]]:
    return [{**first_fit(cluster, doc, policy, rule), "mix": label}
            for label, (cluster, doc, policy) in mixes(seed) for rule in ("alone", "check", "budgeted")]


def bench(seconds: float, repeats: int, seed: int) -> list[dict[str, object]]:
    rows = []
    for label, (cluster, workloads_doc, policy) in mixes(seed):
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


def show_first_fit(rows: list[dict[str, object]], console: Console) -> None:
    t = Table(title="one placer (first-fit-decreasing), three sizing rules")
    for c in ("mix", "sizing", "GPUs", "SLA replicas", "under target", "worst predicted/target", "unplaced"):
        t.add_column(c, justify="left" if c in ("mix", "sizing") else "right")
    for r in rows:
        t.add_row(str(r["mix"]), str(r["rule"]), str(r["gpus"]), str(r["slaReplicas"]), str(r["underTarget"]),
                  str(r["worstRatio"]), str(r["unplaced"]))
    console.print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    ap.add_argument("--plan-seconds", type=float, default=3.0, help="time limit per plan (default 3)")
    ap.add_argument("--repeats", type=int, default=3, help="plans per mix and rule (default 3)")
    ap.add_argument("--seed", type=int, default=11, help="seed of the synthetic mix")
    args = ap.parse_args(argv)
    rows = bench(args.plan_seconds, args.repeats, args.seed)
    greedy_rows = bench_first_fit(args.seed)
    console = Console(width=200)
    show(rows, console)
    show_first_fit(greedy_rows, console)
    if args.json:
        Path(args.json).write_text(json.dumps({"planSeconds": args.plan_seconds, "repeats": args.repeats,
                                               "rows": rows, "firstFit": greedy_rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
