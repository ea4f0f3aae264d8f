"""Placement decisions over one node's ledger state: does a slice fit (filter), how good is the
node (prioritize), and which GPUs and exact CUs does it get (bind).

Filter and prioritize use the same per-GPU rules as the bind decision, so a node that passes
filter and scores high is one where bind succeeds without breaking a class rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from extender.core.assignment import Assignment, GpuAssignment, now_rfc3339
from extender.core.fit import BANDWIDTH_SCALE, COMPUTE_BOUND, Demand, Rules, Verdict, fits, verdict, whole_gpu
from extender.core.fit import MEMORY_BOUND as MEMORY_BOUND  # re-exported for the engine's other modules
from extender.core.layout import (
    best_fit_run,
    choose_burst,
    choose_cus,
    fragmentation,
    fragmentation_after_cut,
    is_full,
)
from extender.core.ledger import GpuState, NodeState
from extender.core.policy import Policy
from extender.core.requests import SliceRequest


@dataclass(frozen=True)
class GpuChoice:
    gpu: GpuState
    cus: frozenset[int]
    burst: frozenset[int]
    score: float


@dataclass(frozen=True)
class NodeFit:
    ok: bool
    reason: str = ""
    category: str = ""  # why it failed, for the rejection metric
    choices: tuple[GpuChoice, ...] = ()
    score: float = 0.0  # 0..1, higher is better


def needed_cus(req: SliceRequest, gpu: GpuState, policy: Policy) -> int:
    """The guarantee on this GPU in whole atoms of its XCDs (its CU count: the whole GPU)."""
    info = gpu.info
    return req.guaranteed_cus(policy, policy.model_for(info.model), info.computeUnits, info.xcds)


def takes_whole(gpu: GpuState, n: int) -> bool:
    """A guarantee of the whole GPU takes an empty GPU whole, burst region included (core/fit.py)."""
    return whole_gpu(n, gpu.info.computeUnits, len(gpu.slices))


_RULES: dict[str, Rules] = {}


def rules_of(policy: Policy) -> Rules:
    """The policy's class rules for the fit rule (worked out once per policy version)."""
    rules = _RULES.get(policy.version)
    if rules is None:
        if len(_RULES) > 64:
            _RULES.clear()
        rules = _RULES[policy.version] = Rules.from_policy(policy)
    return rules


def demand_of(req: SliceRequest, n: int) -> Demand:
    return Demand(n, req.memory_bytes, req.memory_limit_bytes, req.workload_class)


def gpu_verdict(req: SliceRequest, gpu: GpuState, policy: Policy, n: int | None = None) -> Verdict | None:
    """The fit rule's verdict for the slice on this GPU (None: it fits)."""
    n = needed_cus(req, gpu, policy) if n is None else n
    rules = rules_of(policy)
    return verdict(gpu.room(policy.overcommit.memory, rules), demand_of(req, n), rules)


def choose_slice(req: SliceRequest, gpu: GpuState, n: int) -> tuple[frozenset[int], frozenset[int]] | None:
    """The exact guaranteed and burst CUs of a guarantee of n on this GPU: every CU for a whole GPU (no
    burst), else whole atoms of the free CUs and whole atoms of the burst region up to the limit, so
    guarantee and guarantee ∪ burst are both XCC-complete. None when no such set exists."""
    info = gpu.info
    if takes_whole(gpu, n):
        return frozenset(range(info.computeUnits)), frozenset()
    cus = choose_cus(gpu.free_cus, n, info.xcds)
    if cus is None:
        return None
    return cus, choose_burst(gpu.burst_cus, req.limit_cus(info.computeUnits) - n, info.xcds)


def gpu_reject_reason(req: SliceRequest, gpu: GpuState, policy: Policy) -> tuple[str, str] | None:
    """Why the slice cannot go on this GPU: (category, words a person can act on); None if it fits."""
    v = gpu_verdict(req, gpu, policy)
    return None if v is None else (v.category, reject_words(v, gpu.info.index, req, policy))


def reject_words(v: Verdict, i: int, req: SliceRequest, policy: Policy) -> str:
    """The words of a fit-rule verdict for GPU `i` (shared with the column filter, so both say the same)."""
    category = v.category
    if category == "unhealthy":
        return f"gpu {i}: unhealthy"
    if category == "compute":
        return f"gpu {i}: needs {v.need} CUs, {v.free} free"
    if category == "memory":
        return f"gpu {i}: needs {_gib(req.memory_bytes)} memory, {_gib(v.free)} free"
    if category == "memory-limit":
        return (f"gpu {i}: memory limit {_gib(req.memory_limit_bytes)} would take limits past "
                f"{policy.overcommit.memory:g}x the GPU ({_gib(v.free)} left)")
    if category == "class-rule":
        return f"gpu {i}: {v.have} {req.workload_class} tenants already (policy max {v.limit})"
    rules = rules_of(policy)
    used = (v.used_units + rules.share_units(req.workload_class)) / BANDWIDTH_SCALE
    return f"gpu {i}: bandwidth {used:.2f} of the GPU would exceed the budget {rules.bandwidth_budget:g}"


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}Gi"


def empty_complementarity(strategy: str) -> float:
    """An empty GPU's complementarity. Under binpack it is the least a shared GPU can score, so the term
    ranks used GPUs among themselves and never makes opening a GPU look better than sharing one (the
    class rules and the SLA sizing already bound what sharing costs); spread keeps it neutral."""
    return 0.0 if strategy == "binpack" else 0.5


def complementarity(req_class: str, gpu: GpuState, strategy: str = "binpack") -> float:
    """1 when the newcomer's class complements every tenant, 0 when it doubles up on memory bandwidth."""
    if not gpu.slices:
        return empty_complementarity(strategy)
    total = 0.0
    for s in gpu.slices:
        if s.workload_class != req_class:
            total += 1.0
        elif req_class == COMPUTE_BOUND:
            total += 0.6
    return total / len(gpu.slices)


def gpu_score(req: SliceRequest, gpu: GpuState, cus: frozenset[int], policy: Policy) -> float:
    """0..1: packing per the strategy, class complementarity, fragmentation left behind."""
    return _score(req, gpu, len(cus), policy, fragmentation(gpu.free_cus - cus, _min_slice(gpu, policy)))


def _score(req: SliceRequest, gpu: GpuState, n: int, policy: Policy, frag: float) -> float:
    """gpu_score for a guarantee of n CUs that leaves fragmentation `frag`."""
    usable = gpu.info.computeUnits - len(gpu.shared)
    after = min(1.0, (gpu.used_cus + n) / usable) if usable else 1.0
    pack = after if policy.scoring.strategy == "binpack" else 1.0 - after
    mem_after = (gpu.memory_used + req.memory_bytes) / gpu.info.memoryBytes
    pack = 0.7 * pack + 0.3 * (mem_after if policy.scoring.strategy == "binpack" else 1.0 - mem_after)
    comp = complementarity(req.workload_class, gpu, policy.scoring.strategy)
    w = policy.scoring.weights
    total_w = w.packing + w.complementarity + w.fragmentation
    if total_w == 0:
        return 0.5
    if frag and policy.scoring.strategy == "binpack" and is_full(len(gpu.free_cus) - n, _min_slice(gpu, policy)):
        frag = 0.0  # binpack: a GPU left with less than a slice is full, not fragmented
    return (w.packing * pack + w.complementarity * comp + w.fragmentation * (1.0 - frag)) / total_w


def _min_slice(gpu: GpuState, policy: Policy) -> int:
    return _min_slice_for(gpu.info.model, policy)


def _min_slice_for(model_name: str, policy: Policy) -> int:
    model = policy.model_for(model_name)
    if policy.rounding.mode == "balanced":
        return max(policy.rounding.minComputeUnits, model.balanced_multiple)
    return policy.rounding.minComputeUnits


def _topology_key(gpu: GpuState) -> object:
    return gpu.info.hiveId if gpu.info.hiveId is not None else gpu.info.numaNode


class _Limits:
    """One request's per-GPU test with its constants worked out once per node evaluation. `fits` is
    the fit rule's `fits` (core/fit.py), without building words."""

    __slots__ = ("req", "policy", "need", "min_slices", "rules", "overcommit")

    def __init__(self, req: SliceRequest, policy: Policy) -> None:
        self.req = req
        self.policy = policy
        self.need: dict[tuple[str, int, int], int] = {}
        self.min_slices: dict[str, int] = {}
        self.rules = rules_of(policy)
        self.overcommit = policy.overcommit.memory

    def needed(self, gpu: GpuState) -> int:
        model = (gpu.info.model, gpu.info.computeUnits, gpu.info.xcds)
        n = self.need.get(model)
        if n is None:
            n = self.need[model] = needed_cus(self.req, gpu, self.policy)
        return n

    def min_slice(self, gpu: GpuState) -> int:
        m = self.min_slices.get(gpu.info.model)
        if m is None:
            m = self.min_slices[gpu.info.model] = _min_slice(gpu, self.policy)
        return m

    def fits(self, gpu: GpuState, n: int) -> bool:
        return fits(gpu.room(self.overcommit, self.rules), demand_of(self.req, n), self.rules)


class _Candidate:
    """A GPU that can take the slice; its CU sets are only built if it is chosen."""

    __slots__ = ("gpu", "n", "start", "cus", "score")

    def __init__(self, gpu: GpuState, n: int, start: int | None, cus: frozenset[int] | None, score: float) -> None:
        self.gpu, self.n, self.start, self.cus, self.score = gpu, n, start, cus, score

    def choice(self, req: SliceRequest) -> GpuChoice:
        info = self.gpu.info
        cus = self.cus if self.cus is not None else frozenset(range(self.start or 0, (self.start or 0) + self.n))
        extra = 0 if len(cus) >= info.computeUnits else req.limit_cus(info.computeUnits) - self.n
        return GpuChoice(self.gpu, cus, choose_burst(self.gpu.burst_cus, extra, info.xcds), self.score)


class _Shared:
    """One request shape's constants, and the keys of its per-GPU answers. The answers live on the GPU
    state's Shape (core/ledger.py), shared by every GPU of that shape: a request is worked out once per
    distinct GPU state, not once per GPU (e.g. once for all empty GPUs), and the answers go when no
    live GPU has that shape any more. Keyed by fit_key, so pods of the same shape share it too."""

    __slots__ = ("key", "limits", "fits", "places", "reasons")

    def __init__(self, key: str, req: SliceRequest, policy: Policy) -> None:
        self.key = key
        self.limits = _Limits(req, policy)
        self.fits = "fits|" + key  # -> bool
        self.places = "place|" + key  # -> (CUs, run start, CU set, score) or None
        self.reasons = "why|" + key  # -> (category, words) or None


_SHARED: dict[str, _Shared] = {}
_SHARED_KEYS = 256
_ANSWERS_PER_SHAPE = 3 * _SHARED_KEYS  # a long-lived shape (an empty GPU) meets every request ever made
_MISSING = object()
# The last request seen: filter and prioritize ask about one request object for thousands of nodes.
_last: tuple[object, object, _Shared | None] = (None, None, None)


def _shared(req: SliceRequest, policy: Policy) -> _Shared:
    global _last
    last_req, last_policy, shared = _last
    if last_req is req and last_policy is policy and shared is not None:
        return shared
    key = fit_key(req, policy)
    shared = _SHARED.get(key)
    if shared is None:
        if len(_SHARED) >= _SHARED_KEYS:
            _SHARED.clear()
        shared = _SHARED[key] = _Shared(key, req, policy)
    _last = (req, policy, shared)
    return shared


def _store(gpu: GpuState, key: str, value: object) -> None:
    answers = gpu.shape.answers
    if len(answers) >= _ANSWERS_PER_SHAPE:  # only costs time
        answers.clear()
    answers[key] = value


def _place_on(limits: _Limits, gpu: GpuState) -> tuple[int, int | None, frozenset[int] | None, float] | None:
    """(CUs, start of the run they are cut from or None, the CU set when not a run cut, score), or None
    when the slice does not fit this GPU."""
    req, policy = limits.req, limits.policy
    n = limits.needed(gpu)
    if not limits.fits(gpu, n):
        return None
    if takes_whole(gpu, n):
        return n, None, frozenset(range(gpu.info.computeUnits)), _score(req, gpu, n, policy, 0.0)
    run = best_fit_run(gpu.free_runs, n)
    if run is not None:  # choose_cus's answer (whole atoms of one run), and what it leaves, from cached runs
        frag = fragmentation_after_cut(gpu.free_runs, run, n, limits.min_slice(gpu))
        return n, gpu.free_runs[run][0], None, _score(req, gpu, n, policy, frag)
    cus = choose_cus(gpu.free_cus, n, gpu.info.xcds)
    if cus is None:  # cannot happen after the rule's count of whole atoms, kept as a guard
        return None
    return n, None, cus, _score(req, gpu, n, policy, fragmentation(gpu.free_cus - cus, limits.min_slice(gpu)))


def _place(shared: _Shared, gpu: GpuState) -> tuple[int, int | None, frozenset[int] | None, float] | None:
    entry = gpu.shape.answers.get(shared.places, _MISSING)
    if entry is _MISSING:
        entry = _place_on(shared.limits, gpu)
        _store(gpu, shared.places, entry)
    return entry  # type: ignore[return-value]


def evaluate(req: SliceRequest, state: NodeState, policy: Policy) -> NodeFit:
    """Greedy best-per-GPU placement of the whole request on one node (filter, score and bind)."""
    return _evaluate(req, state, policy, True)


def rank(req: SliceRequest, state: NodeState, policy: Policy) -> NodeFit:
    """`evaluate` without building the chosen GPUs' CU sets: prioritize needs only the verdict and score."""
    if req.count != 1:
        return _evaluate(req, state, policy, False)
    shared = _shared(req, policy)
    places = shared.places
    best: tuple[float, int] | None = None
    for gpu in state.gpus:
        entry = gpu.shape.answers.get(places, _MISSING)
        if entry is _MISSING:
            entry = _place(shared, gpu)
        if entry is not None:
            candidate = (entry[3], -gpu.info.index)  # type: ignore[index]  # as _pick: best score, lowest index
            if best is None or candidate > best:
                best = candidate
    if best is None:
        return _rejection(req, state, policy, 0, shared)
    return NodeFit(True, score=best[0])


def _evaluate(req: SliceRequest, state: NodeState, policy: Policy, with_choices: bool) -> NodeFit:
    shared = _shared(req, policy)
    candidates: list[_Candidate] = []
    for gpu in state.gpus:
        entry = _place(shared, gpu)
        if entry is not None:
            candidates.append(_Candidate(gpu, *entry))
    if len(candidates) < req.count:
        return _rejection(req, state, policy, len(candidates), shared)
    chosen, topo = _pick(candidates, req.count)
    score = sum(c.score for c in chosen) / len(chosen)
    w = policy.scoring.weights
    if req.count > 1 and (w.packing + w.complementarity + w.fragmentation + w.topology) > 0:
        base = w.packing + w.complementarity + w.fragmentation
        score = (score * base + w.topology * topo) / (base + w.topology)
    return NodeFit(True, choices=tuple(c.choice(req) for c in chosen) if with_choices else (), score=score)


FIT_OK = NodeFit(True)


def fit_key(req: SliceRequest, policy: Policy) -> str:
    """What a placement result depends on besides the node state: the request's sizes and class, and
    the policy. A string, so its hash is computed once however many node memos it is looked up in."""
    return (f"{req.compute_millis}|{req.compute_cus}|{req.compute_limit_millis}|{req.memory_bytes}|"
            f"{req.memory_limit_bytes}|{req.workload_class}|{req.count}|{policy.version}")


def check(req: SliceRequest, state: NodeState, policy: Policy) -> NodeFit:
    """Filter's question only: can the slice go on this node? Counts free CUs and memory per GPU
    instead of choosing CU sets (a guarantee of n CUs always has a set once n are free), so it is
    cheap, and gives exactly `evaluate`'s verdict and rejection message."""
    shared = _shared(req, policy)
    cache, limits, count = shared.fits, shared.limits, req.count
    fits = 0
    for gpu in state.gpus:
        ok = gpu.shape.answers.get(cache)
        if ok is None:
            ok = limits.fits(gpu, limits.needed(gpu))
            _store(gpu, cache, ok)
        if ok:
            fits += 1
            if fits >= count:
                return FIT_OK
    return _rejection(req, state, policy, fits, shared)


def _rejection(req: SliceRequest, state: NodeState, policy: Policy, fitting: int, shared: _Shared) -> NodeFit:
    reasons: list[tuple[str, str]] = []
    for gpu in state.gpus:
        reason = gpu.shape.answers.get(shared.reasons, _MISSING)
        if reason is _MISSING:  # cached without the GPU's index, which differs between GPUs of one shape
            words = gpu_reject_reason(req, gpu, policy)
            prefix = f"gpu {gpu.info.index}: "
            reason = None if words is None else (words[0], words[1].removeprefix(prefix))
            _store(gpu, shared.reasons, reason)
        if reason is not None:
            reasons.append((reason[0], f"gpu {gpu.info.index}: {reason[1]}"))  # type: ignore[index]
    category = reasons[0][0] if reasons else "no-gpus"
    return NodeFit(False, reject_message(req, len(state.gpus), [r for _, r in reasons], fitting), category)


def _pick(candidates: list[_Candidate], count: int) -> tuple[list[_Candidate], float]:
    if count == 1:
        return [max(candidates, key=lambda c: (c.score, -c.gpu.info.index))], 1.0
    ranked = sorted(candidates, key=lambda c: (-c.score, c.gpu.info.index))
    groups: dict[object, list[_Candidate]] = {}
    for c in ranked:
        groups.setdefault(_topology_key(c.gpu), []).append(c)
    best_group = [g for k, g in groups.items() if k is not None and len(g) >= count]
    if best_group:
        group = max(best_group, key=lambda g: sum(c.score for c in g[:count]))
        return group[:count], 1.0
    chosen = ranked[:count]
    keys = [_topology_key(c.gpu) for c in chosen]
    same = max(keys.count(k) for k in keys) if keys[0] is not None else 0
    return chosen, same / count


def reject_message(req: SliceRequest, gpus: int, reasons: list[str], fitting: int) -> str:
    if not gpus:
        return "node has no GPUs in its inventory"
    head = f"{fitting}/{gpus} GPUs can take the slice (pod needs {req.count})"
    shown = "; ".join(reasons[:3]) + ("; …" if len(reasons) > 3 else "")
    return f"{head}: {shown}" if shown else head


def to_score(fit: NodeFit) -> int:
    """kube-scheduler extender scores are integers 0..10."""
    if not fit.ok:
        return 0
    return max(0, min(10, round(fit.score * 10)))


def build_assignment(req: SliceRequest, node: str, choices: tuple[GpuChoice, ...], policy: Policy) -> Assignment:
    gpus = tuple(GpuAssignment(index=c.gpu.info.index, id=c.gpu.info.id, cus=c.cus, burstCus=c.burst,
                               memoryBytes=req.memory_bytes, memoryLimitBytes=req.memory_limit_bytes)
                 for c in sorted(choices, key=lambda c: c.gpu.info.index))
    return Assignment(node=node, gpus=gpus, workload_class=req.workload_class, policy=policy.version,
                      assignedAt=now_rfc3339())
