"""What a replay produced: GPUs used and idle, allocation against arrived load, fragmentation,
pending pods, per-class interference and, per pod with an SLA, predicted req/s against its target.

- allocatedPct: GPUs asked by the placed pods (trace accounting: num_gpu x gpu_milli/1000; for a
  profile-sized pod its CUs / the GPU's CUs) as % of all GPUs. arrivedPct: the same for every pod
  that arrived and has not departed (placed or pending). cuAllocatedPct: CUs actually guaranteed
  (after rounding, whole GPUs) / all CUs.
- idleGpus: healthy GPUs without any tenant. gpus: GPUs with at least one tenant.
- fragmentationPct (after the FGD paper's idea): free compute on partly used GPUs weighted by the
  share of arrived GPU pods too big for it, as % of all GPUs — free capacity the workload cannot use.
- interference: per class, tenants sharing a GPU and their modelled throughput loss (core/interference.py).
- sla: per pod with a profile and a target, its predicted req/s beside the co-tenants it has at the end
  (core/sizing.predict, as `gpuslice plan` reports it).
"""

from __future__ import annotations

import bisect
from collections import defaultdict

from extender.core.interference import co_tenants, loss
from extender.core.layout import fragmentation
from extender.core.ledger import GpuState
from extender.core.sizing import predict
from extender.sim.replay import ReplayState


def summarize(st: ReplayState) -> dict[str, object]:
    policy = st.spec.policy
    gpus = [g for n in st.engine.ledger.nodes() for g in n.gpus]
    total = len(gpus)
    total_cus = sum(g.info.computeUnits for g in gpus) or 1
    used = [g for g in gpus if g.slices]
    idle = sum(1 for g in gpus if g.info.healthy and not g.slices)
    arrived = [o for o in st.outcomes if o.view is not None or o.infeasible]
    placed = [o for o in st.outcomes if o.node is not None]
    pending = [o for o in st.outcomes if o.node is None and not o.departed and not o.infeasible and o.view]
    infeasible = [o for o in st.outcomes if o.infeasible]
    demand_arrived = sum(o.demand for o in st.outcomes if not o.departed)
    demand_placed = sum(o.demand for o in placed)
    guaranteed = sum(len(g.guaranteed) for g in gpus)

    shares = sorted(min(1.0, o.demand / max(o.pod.gpu.count, 1)) for o in st.outcomes
                    if o.pod.gpu is not None and o.demand > 0)
    frag = 0.0
    cu_frag = []
    for g in used:
        free = len(g.free_cus) / g.info.computeUnits
        if shares and free > 0:
            too_big = len(shares) - bisect.bisect_right(shares, free)
            frag += free * too_big / len(shares)
        min_slice = max(policy.rounding.minComputeUnits, 1)
        cu_frag.append(fragmentation(g.free_cus, min_slice))

    interference: dict[str, dict[str, float]] = {}
    by_class: dict[str, list[float]] = defaultdict(list)
    for g in used:
        for s in g.slices:
            by_class[s.workload_class].append(loss(policy, co_tenants(g, s.pod.uid)))
    for cls, losses in sorted(by_class.items()):
        shared = [x for x in losses if x > 0]
        interference[cls] = {"tenants": len(losses), "sharing": len(shared),
                             "meanLossPct": round(100 * sum(losses) / len(losses), 2),
                             "maxLossPct": round(100 * max(losses), 2)}

    sla = _sla(st)
    pct = 100 / total if total else 0.0
    return {
        "label": st.spec.label, "source": st.spec.source, "policyVersion": policy.version,
        "gpusTotal": total, "gpus": len(used), "idleGpus": idle,
        "allocatedPct": round(demand_placed * pct, 2), "arrivedPct": round(demand_arrived * pct, 2),
        "cuAllocatedPct": round(100 * guaranteed / total_cus, 2), "gpusUsedPct": round(len(used) * pct, 2),
        "fragmentationPct": round(frag * pct, 2),
        "cuFragmentation": round(sum(cu_frag) / len(cu_frag), 4) if cu_frag else 0.0,
        "tenantsPerUsedGpu": round(sum(len(g.slices) for g in used) / len(used), 2) if used else 0.0,
        "pods": {"arrived": len(arrived), "placed": len(placed), "pending": len(pending),
                 "infeasible": len(infeasible), "departed": sum(1 for o in st.outcomes if o.departed)},
        "pendingReasons": _reasons(pending),
        # whole- and multi-GPU pods (count > 1 or a whole GPU each): placed against arrived, not starved
        "multiGpu": {"arrived": sum(1 for o in arrived if _multi(o)), "placed": sum(1 for o in placed if _multi(o))},
        "infeasible": [{"pod": o.pod.name, "reason": o.infeasible} for o in infeasible[:20]],
        "interference": interference,
        "sla": sla,
        "slaMet": sla["met"] == sla["pods"],  # every pod with an SLA placed and meeting it
        "elapsedSeconds": round(st.elapsed, 3),
        "schedulingAttempts": st.attempts,
        "series": {"arrivedPct": [round(a * pct, 3) for a, _ in st.series],
                   "allocatedPct": [round(p * pct, 3) for _, p in st.series]},
        "occupancy": [round(len(g.guaranteed) / g.info.computeUnits, 4) for g in gpus],
        "occupancyByClass": _occupancy_by_class(gpus) if total <= 256 else [],
    }


def _multi(o: object) -> bool:
    ask = o.pod.gpu  # type: ignore[attr-defined]
    return ask is not None and ask.count > 1


def _reasons(pending: list) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for o in pending:
        out[o.reason.split(":")[0][:80] if o.reason else "not tried"] += 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:5])


def _occupancy_by_class(gpus: list[GpuState]) -> list[dict[str, float]]:
    out = []
    for g in gpus:
        row: dict[str, float] = defaultdict(float)
        for s in g.slices:
            row[s.workload_class] += len(s.cus) / g.info.computeUnits
        out.append(dict(row))
    return out


def _sla(st: ReplayState) -> dict[str, object]:
    """Per pod with a profile and a target: predicted req/s with the co-tenants it has at the end."""
    policy = st.spec.policy
    rows = []
    met = 0
    for o in st.outcomes:
        ask = o.pod.gpu
        if ask is None or ask.profile is None or ask.target_rps is None:
            continue
        row: dict[str, object] = {"pod": o.pod.name, "service": o.pod.service, "targetRps": ask.target_rps}
        entry = st.engine.ledger.entry(o.uid) if o.node else None
        if o.infeasible:
            row.update(status="infeasible", reason=o.infeasible)
        elif entry is None:
            row.update(status="pending", reason=o.reason)
        else:
            state = st.engine.ledger.node(o.node or "")
            gpus = [g for g in (state.gpu(ga.index) if state else None for ga in entry.assignment.gpus) if g]
            if not gpus:
                continue
            pred = predict(policy, ask.profile, ask.target_rps, gpus, o.uid)
            met += bool(pred.met)
            status = {True: "met", False: "violated", None: "unmeasured"}[pred.met]
            row.update(status=status, predictedRps=None if pred.predicted_rps is None else round(pred.predicted_rps, 2),
                       cus=pred.cus, coTenants=pred.co_tenants.memory_bound + pred.co_tenants.compute_bound,
                       node=o.node)
        rows.append(row)
    return {"pods": len(rows), "met": met, "violated": sum(1 for r in rows if r["status"] == "violated"),
            "infeasible": sum(1 for r in rows if r["status"] == "infeasible"),
            "pending": sum(1 for r in rows if r["status"] == "pending"), "perPod": rows}
