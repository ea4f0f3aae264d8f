"""Batch planning: how many GPUs do these workloads need, and where does each replica go?

The same co-location model as bind, over every replica and every GPU of a cluster: first minimise the
GPUs used (CP-SAT, time-limited, from a greedy hint), then, with that many GPUs, maximise class
complementarity and leave the least fragmentation. The exact CUs come from the ledger's layout, and
every replica is reserved in a scratch ledger, so a plan that prints is one the ledger accepts.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from extender.core.assignment import Assignment
from extender.core.errors import InventoryError, SliceRequestError
from extender.core.fit import BANDWIDTH_SCALE, COMPUTE_BOUND, MEMORY_BOUND
from extender.core.inventory import GpuInfo, format_inventory, parse_inventory
from extender.core.ledger import Ledger, NodeState, PodRef, rebuild
from extender.core.policy import Policy
from extender.core.requests import SliceRequest, parse_slice_request
from extender.core.sizing import Prediction, predict
from extender.core.solver import (
    Bin,
    Item,
    Placement,
    Problem,
    Rules,
    Solution,
    Weights,
    best_greedy,
    bins_for_node,
    gpus_used,
    narrow,
    restrict,
    solve,
    widen,
)
from extender.engine.placement import (
    GpuChoice,
    build_assignment,
    choose_slice,
    evaluate,
    gpu_reject_reason,
    gpu_score,
    needed_cus,
)

# Workload fields and the slice-request keys they stand for (the pod-facing API, without the prefix).
WORKLOAD_KEYS = {"compute": "compute", "computeLimit": "computeLimit", "memory": "memory",
                 "memoryLimit": "memoryLimit", "class": "class", "count": "count", "profile": "profile",
                 "targetRps": "target-rps"}
MAX_REPLICAS = 10_000
PLAN_NAMESPACE = "plan"  # the scratch ledger's namespace of planned replicas


@dataclass(frozen=True)
class Workload:
    name: str
    replicas: int
    request: SliceRequest


@dataclass(frozen=True)
class Unplaced:
    workload: str
    replica: int | None  # None: the workload as a whole (bad spec, impossible SLA)
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"workload": self.workload, "replica": self.replica, "reason": self.reason}


@dataclass(frozen=True)
class Placed:
    workload: str
    replica: int
    assignment: Assignment
    cus: int  # guaranteed CUs per GPU
    sla: Prediction | None = None  # a profile + target replica: its req/s beside the co-tenants it got

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"workload": self.workload, "replica": self.replica, "node": self.assignment.node,
                                  "class": self.assignment.workload_class, "computeUnits": self.cus,
                                  "gpus": [g.to_dict() for g in self.assignment.gpus]}
        if self.sla is not None:
            out["sla"] = self.sla.to_dict()
        return out


@dataclass
class Plan:
    gpus_total: int
    gpus_used: int
    lower_bound: int  # GPUs the placed replicas need at least (0 when none is placed)
    bounds: dict[str, int]
    one_per_gpu: int  # GPUs the placed replicas would take with whole GPUs each
    outcome: str
    seconds: float
    placements: list[Placed] = field(default_factory=list)
    unplaced: list[Unplaced] = field(default_factory=list)
    nodes: list[NodeState] = field(default_factory=list)
    replicas: int = 0  # replicas of the well-formed workloads (placed or not)
    lower_bound_all: int = 0  # GPUs every replica that fits some GPU would need at least
    bounds_all: dict[str, int] = field(default_factory=dict)
    one_per_gpu_all: int = 0  # GPUs all the replicas would take with whole GPUs each

    @property
    def gap(self) -> float:
        return (self.gpus_used - self.lower_bound) / self.lower_bound if self.lower_bound else 0.0

    def to_dict(self) -> dict[str, object]:
        return {"gpusUsed": self.gpus_used, "gpusTotal": self.gpus_total, "lowerBound": self.lower_bound,
                "bounds": self.bounds, "gap": round(self.gap, 4), "onePerGpu": self.one_per_gpu,
                "replicas": self.replicas, "replicasPlaced": len(self.placements),
                "lowerBoundAll": self.lower_bound_all, "boundsAll": self.bounds_all,
                "onePerGpuAll": self.one_per_gpu_all,
                "outcome": self.outcome, "seconds": round(self.seconds, 3),
                "placements": [p.to_dict() for p in self.placements],
                "unplaced": [u.to_dict() for u in self.unplaced]}


class PlanInputError(ValueError):
    """The cluster or workloads document is unusable as a whole."""


def parse_cluster(doc: object, policy: Policy) -> dict[str, list[GpuInfo]]:
    """`{"nodes": [{"name", "inventory": [...]}]}`; a node may instead say `gpus: N` and `model`."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("nodes"), list):
        raise PlanInputError('cluster: expected a mapping with a "nodes" list')
    out: dict[str, list[GpuInfo]] = {}
    for i, node in enumerate(doc["nodes"]):
        where = f"nodes[{i}]"
        if not isinstance(node, Mapping) or not isinstance(node.get("name"), str) or not node["name"]:
            raise PlanInputError(f"cluster: {where}: needs a name")
        name = node["name"]
        if name in out:
            raise PlanInputError(f"cluster: {where}: node {name} appears twice")
        try:
            if "inventory" in node:
                gpus = parse_inventory(json.dumps(node["inventory"]))
            else:
                gpus = _shorthand(name, node, policy)
        except (InventoryError, TypeError, ValueError) as exc:
            raise PlanInputError(f"cluster: {where} ({name}): {exc}") from None
        out[name] = gpus
    if not out:
        raise PlanInputError("cluster: no nodes")
    # keep the inventory canonical (round-trips through the annotation format)
    return {n: parse_inventory(format_inventory(g)) for n, g in out.items()}


def _shorthand(name: str, node: Mapping, policy: Policy) -> list[GpuInfo]:
    count, model_name = node.get("gpus"), node.get("model", policy.defaultModel)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"gpus={count!r}: give an inventory list or a whole number of GPUs")
    if model_name not in policy.models:
        raise ValueError(f"model={model_name!r}: not in the policy's models {sorted(policy.models)}")
    m = policy.models[model_name]
    per_numa = max(1, count // 2)
    return [GpuInfo(index=i, id=f"{name}/gpu{i}", model=model_name, computeUnits=m.computeUnits, xcds=m.xcds,
                    shaderEngines=m.shaderEngines, memoryBytes=m.memory, healthy=True, numaNode=i // per_numa)
            for i in range(count)]


def parse_workloads(doc: object, policy: Policy) -> tuple[list[Workload], list[Unplaced]]:
    """Workloads that are well formed, and a per-workload reason for each that is not."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("workloads"), list):
        raise PlanInputError('workloads: expected a mapping with a "workloads" list')
    good: list[Workload] = []
    bad: list[Unplaced] = []
    seen: set[str] = set()
    for i, spec in enumerate(doc["workloads"]):
        name = spec.get("name") if isinstance(spec, Mapping) else None
        label = name if isinstance(name, str) and name else f"workloads[{i}]"
        try:
            good.append(_workload(spec, label, seen, policy))
        except (SliceRequestError, ValueError) as exc:
            bad.append(Unplaced(label, None, str(exc)))
        seen.add(label)
    return good, bad


def _workload(spec: object, label: str, seen: set[str], policy: Policy) -> Workload:
    if not isinstance(spec, Mapping):
        raise ValueError("each workload is a mapping")
    if label in seen:
        raise ValueError(f"name {label!r} repeats")
    unknown = sorted(set(spec) - set(WORKLOAD_KEYS) - {"name", "replicas"})
    if unknown:
        raise ValueError(f"unknown keys {unknown}; known: name, replicas, {', '.join(WORKLOAD_KEYS)}")
    replicas = spec.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"replicas={replicas!r}: must be a whole number 0..{MAX_REPLICAS}")
    annotations = {f"{policy.prefix}/{key}": str(spec[field_])
                   for field_, key in WORKLOAD_KEYS.items() if field_ in spec}
    if not annotations:
        raise ValueError("says nothing about its slice: give compute + memory, or profile + targetRps")
    req = parse_slice_request({}, annotations, policy)
    assert req is not None  # annotations name at least one slice key
    return Workload(label, replicas, req)


def replica_key(workload: str, replica: int) -> str:
    """A planned replica's name and uid in the scratch ledger."""
    return f"{workload}#{replica}"


def _items(workloads: list[Workload], states: list[NodeState], policy: Policy
           ) -> tuple[list[Item], list[tuple[Workload, int]], list[Unplaced]]:
    """One optional model item per replica that fits somewhere beside the existing tenants; a reason for the rest."""
    items: list[Item] = []
    owners: list[tuple[Workload, int]] = []
    unplaced: list[Unplaced] = []
    for w in workloads:
        if not any(_fits_empty(w.request, s, policy) for s in states):
            fits = [evaluate(w.request, s, policy) for s in states]
            reason = "; ".join(f"{s.name}: {f.reason}" for s, f in zip(states, fits, strict=True))
            room = "even when empty" if all(not g.slices for s in states for g in s.gpus) else \
                "in what existing tenants leave free"
            unplaced.append(Unplaced(w.name, None, f"fits on no node {room}: {reason}"))
            continue
        cus = tuple(needed_cus(w.request, g, policy) for s in states for g in s.gpus)
        for r in range(w.replicas):
            items.append(Item(replica_key(w.name, r), w.request.workload_class, cus, w.request.memory_bytes,
                              w.request.memory_limit_bytes, w.request.count, optional=True))
            owners.append((w, r))
    return items, owners, unplaced


def _fits_empty(req: SliceRequest, state: NodeState, policy: Policy) -> bool:
    """Enough GPUs of the node pass the per-GPU rules (evaluate's test, without laying out CUs)."""
    return sum(gpu_reject_reason(req, g, policy) is None for g in state.gpus) >= req.count


def lower_bounds(bins: tuple[Bin, ...], items: list[Item], rules: Rules) -> dict[str, int]:
    """Bounds on the GPUs any placement of `items` needs (each is proven by counting)."""
    if not items or not bins:
        return {}
    # A replica that is a whole GPU wherever it goes takes its GPUs alone; the others share GPUs' usable
    # CUs. When every shared slice is a multiple of g CUs (balanced rounding: 32 on MI300X), a GPU holds at
    # most floor(usable / g) * g of them: 256 of 272 usable CUs.
    whole = [all(b.whole(c) for b, c in zip(bins, it.cus, strict=True)) for it in items]
    shared = [(it, min(c for b, c in zip(bins, it.cus, strict=True) if not b.whole(c)))
              for it, w in zip(items, whole, strict=True) if not w]
    g = math.gcd(*(c for _, c in shared))
    usable = max((b.usable_cus // g) * g for b in bins) if g else max(b.usable_cus for b in bins)
    memory = max(b.memory for b in bins)
    slots = [it.count for it in items]
    whole_gpus = sum(it.count for it, w in zip(items, whole, strict=True) if w)
    out = {"computeUnits": whole_gpus + math.ceil(sum(c * it.count for it, c in shared) / max(usable, 1)),
           "memory": math.ceil(sum(it.memory * it.count for it in items) / memory),
           "gpusPerReplica": max(slots)}
    for cls, cap, key in ((MEMORY_BOUND, rules.max_memory_bound, "memoryBoundPerGpu"),
                          (COMPUTE_BOUND, rules.max_compute_bound, "computeBoundPerGpu")):
        if cap is not None:
            out[key] = math.ceil(sum(it.count for it in items if it.workload_class == cls) / cap)
    if rules.bandwidth_budget is not None:
        room = math.floor(rules.bandwidth_budget * BANDWIDTH_SCALE + 1e-6)
        need = sum(rules.share_units(it.workload_class) * it.count for it in items)
        out["bandwidth"] = math.ceil(need / room) if room > 0 else 0
    return out


@dataclass
class Packing:
    """The batch as a model problem: one optional item per replica over every GPU of the cluster."""

    ledger: Ledger
    problem: Problem  # objective: GPUs used (every other weight 0)
    owners: list[tuple[Workload, int]]
    unplaced: list[Unplaced]


# A tenant already on the cluster: the pod, its assignment and its compute millis (as in ledger.rebuild).
Existing = tuple[PodRef, Assignment, int]


def packing_problem(nodes: Mapping[str, list[GpuInfo]], workloads: list[Workload], policy: Policy,
                    existing: Iterable[Existing] = ()) -> Packing:
    """`existing` tenants are reserved first: the batch is planned on what they leave free."""
    ledger, conflicts = rebuild(nodes, existing, policy.burst.sharedFraction, policy.overcommit.memory,
                                rules=Rules.from_policy(policy))
    if conflicts:
        raise PlanInputError(f"existing tenants do not fit their nodes: {'; '.join(conflicts)}")
    states = [s for s in (ledger.node(n) for n in nodes) if s is not None]
    bins = tuple(b for s in states for b in bins_for_node(s, policy))
    items, owners, unplaced = _items(workloads, states, policy)
    problem = Problem(bins, tuple(items), Rules.from_policy(policy), Weights(0, 0, 0, 0, gpu=1), symmetry=True)
    return Packing(ledger, problem, owners, unplaced)


def plan(nodes: Mapping[str, list[GpuInfo]], workloads: list[Workload], policy: Policy,
         time_limit: float = 5.0, workers: int = 1, existing: Iterable[Existing] = ()) -> Plan:
    start = time.perf_counter()
    packing = packing_problem(nodes, workloads, policy, existing)
    ledger, first, owners, unplaced = packing.ledger, packing.problem, packing.owners, packing.unplaced
    bins, items, rules = first.bins, list(first.items), first.rules
    bounds = lower_bounds(bins, items, rules)
    # The model only needs the nodes greedy used plus one spare: an optimum never uses more GPUs than
    # greedy, and a smaller model searches much better. Its own bound counts only when it saw every GPU.
    hint = best_greedy(first)
    keep = _nodes_to_keep(first, hint)
    sub = restrict(first, keep)
    # Objective = -(GPUs used) once everything is placed, so the counting bound proves optimality.
    found = solve(sub, time_limit * 0.75, workers, hint=narrow(hint, keep),
                  stop_at=-max(bounds.values(), default=0))
    solution = replace(found, placement=widen(found.placement, keep))
    used = gpus_used(first, solution.placement)
    if found.bound is not None and len(keep) == len(bins) and all(w is not None for w in solution.placement):
        bounds["solver"] = math.ceil(-found.bound - 1e-6)
    if items and solution.ok:
        second = Problem(sub.bins, sub.items, rules, replace(Weights.from_policy(policy), spread=False),
                         symmetry=True, max_new_gpus=used)
        # polishing (complementarity, fragmentation) gets what is left, at most a quarter of the limit
        left = max(min(time_limit - (time.perf_counter() - start), time_limit / 4), 0.05)
        better = solve(second, left, workers, hint=found.placement)
        if better.ok and gpus_used(second, better.placement) <= used and _placed(better) >= _placed(found):
            solution = Solution(widen(better.placement, keep), solution.outcome, better.objective, found.bound,
                                found.seconds + better.seconds)
    placed = _with_predictions(_reserve(ledger, bins, items, owners, solution, policy, unplaced), ledger,
                               {w.name: w for w in workloads}, policy)
    used_gpus = sum(1 for s in ledger.nodes() for g in s.gpus if g.slices)
    placed_items = [items[i] for i, w in enumerate(solution.placement) if w is not None]
    # Bounds for what was placed (the gap is measured on them) and for every replica that fits some GPU.
    lb_bounds = lower_bounds(bins, placed_items, rules) if len(placed_items) < len(items) else dict(bounds)
    occupied = sum(1 for b in bins if not b.empty)
    if occupied:  # GPUs existing tenants hold stay in use whatever the batch does
        lb_bounds["occupied"] = occupied
        bounds["occupied"] = occupied
    return Plan(gpus_total=len(bins), gpus_used=used_gpus, lower_bound=max(lb_bounds.values(), default=0),
                bounds=lb_bounds, one_per_gpu=sum(it.count for it in placed_items), outcome=solution.outcome,
                seconds=time.perf_counter() - start, placements=placed, unplaced=unplaced,
                nodes=[s for s in ledger.nodes()], replicas=sum(w.replicas for w in workloads),
                lower_bound_all=max(bounds.values(), default=0), bounds_all=bounds,
                one_per_gpu_all=sum(w.replicas * w.request.count for w in workloads))


def _with_predictions(placed: list[Placed], ledger: Ledger, workloads: Mapping[str, Workload],
                      policy: Policy) -> list[Placed]:
    """Each SLA replica's predicted req/s beside the co-tenants the whole plan gave it."""
    out = []
    for p in placed:
        req = workloads[p.workload].request
        state = ledger.node(p.assignment.node)
        if req.profile is None or req.target_rps is None or state is None:
            out.append(p)
            continue
        gpus = [g for g in (state.gpu(ga.index) for ga in p.assignment.gpus) if g is not None]
        sla = predict(policy, req.profile, req.target_rps, gpus, replica_key(p.workload, p.replica))
        out.append(replace(p, sla=sla))
    return out


def _nodes_to_keep(problem: Problem, hint: Placement) -> list[int]:
    used = {problem.bins[b].node for w in hint for b in w or ()}
    used |= {bn.node for bn in problem.bins if not bn.empty}
    spare = next((bn.node for bn in problem.bins if bn.node not in used), None)
    if spare is not None:
        used.add(spare)
    return [b for b, bn in enumerate(problem.bins) if bn.node in used]


def _placed(solution: Solution) -> int:
    return sum(1 for w in solution.placement if w is not None)


def _reserve(ledger: Ledger, bins: tuple[Bin, ...], items: list[Item], owners: list[tuple[Workload, int]],
             solution: Solution, policy: Policy, unplaced: list[Unplaced]) -> list[Placed]:
    """Lay out exact CUs (largest slices first, so big runs stay whole) and reserve each replica."""
    placed: list[Placed] = []
    left: list[tuple[Workload, int]] = []
    order = sorted(range(len(items)), key=lambda i: (-max(items[i].cus), i))
    for i in order:
        where = solution.placement[i]
        workload, replica = owners[i]
        if where is None:
            left.append((workload, replica))
            continue
        node = bins[where[0]].node
        state = ledger.node(node)
        assert state is not None
        choices = []
        for b in where:
            gpu = state.gpu(bins[b].index)
            assert gpu is not None
            problem = gpu_reject_reason(workload.request, gpu, policy)
            if problem is not None:  # the model and the per-GPU rules disagree: a bug, never hide it
                raise AssertionError(f"plan broke a rule for {items[i].key}: {problem[1]}")
            chosen = choose_slice(workload.request, gpu, needed_cus(workload.request, gpu, policy))
            assert chosen is not None  # the fit rule counted whole atoms, so a set exists
            cus, burst = chosen
            choices.append(GpuChoice(gpu, cus, burst, gpu_score(workload.request, gpu, cus, policy)))
        assignment = build_assignment(workload.request, node, tuple(choices), policy)
        ledger.reserve(PodRef(items[i].key, PLAN_NAMESPACE, items[i].key), assignment, workload.request.workload_class,
                       workload.request.compute_millis, ttl=None, new=True)
        placed.append(Placed(workload.name, replica, assignment, len(choices[0].cus)))
    for workload, replica in left:
        unplaced.append(Unplaced(workload.name, replica, _why_unplaced(workload.request, ledger, policy)))
    placed.sort(key=lambda p: (p.assignment.node, p.assignment.gpus[0].index, p.workload, p.replica))
    return placed


def _why_unplaced(req: SliceRequest, ledger: Ledger, policy: Policy) -> str:
    """Why a replica the plan left out fits nowhere in what the placed ones leave, in the fit rule's words
    (or, if it would fit after all, that the solver ran out of time)."""
    fits = [(s, evaluate(req, s, policy)) for s in sorted(ledger.nodes(), key=lambda s: s.name)]
    room = [s.name for s, f in fits if f.ok]
    if room:
        return (f"the solver left it out within its time limit although {', '.join(room[:3])} could take it "
                "(raise --time-limit)")
    shown = "; ".join(f"{s.name}: {f.reason}" for s, f in fits[:2]) + ("; …" if len(fits) > 2 else "")
    return f"no room left in what the placed replicas leave: {shown}"
