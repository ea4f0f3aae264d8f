"""Why a pod does (not) fit: the engine's own filter and scores, read back for a person.

`explain` asks the engine exactly what kube-scheduler would (filter, then prioritize over the nodes
that passed), so its verdict is the extender's. For nodes that fail it adds the binding constraint
(the category filter counts the rejection under: compute, memory, memory-limit, class-rule,
bandwidth, unhealthy, inventory, quota) and ranks them by how far their best GPUs are from the
request, then says what would make the pod fit on the nearest one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from extender.core.errors import SliceRequestError
from extender.core.fit import free_for
from extender.core.ledger import GpuState, NodeState
from extender.core.policy import Policy
from extender.core.requests import SliceRequest, parse_slice_request
from extender.engine.cluster import PodView
from extender.engine.placement import check, gpu_reject_reason, needed_cus, rules_of
from extender.engine.scheduler import Engine

GIB = 2**30


@dataclass(frozen=True)
class NodeVerdict:
    node: str
    fits: bool
    score: int = 0  # prioritize's 0..10 where it fits
    constraint: str = ""  # the binding constraint where it does not
    detail: str = ""  # filter's words for this node
    shortfall: float = 0.0  # 0 fits; larger is further from fitting (for ranking)


@dataclass
class Explanation:
    pod: str
    request: SliceRequest | None = None
    request_error: str = ""
    placed_on: str | None = None
    quota: str = ""
    fitting: int = 0
    nodes_considered: int = 0
    best: list[NodeVerdict] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)


def explain(engine: Engine, pod: PodView, top: int = 3) -> Explanation:
    """The pod's request, the `top` best nodes with their binding constraint, and what would help."""
    policy = engine.policies.current
    out = Explanation(pod.key)
    try:
        req = parse_slice_request(pod.labels, pod.annotations, policy)
    except SliceRequestError as exc:
        out.request_error = str(exc)
        out.hints.append(f"fix {exc.key}: {exc.reason}")
        return out
    if req is None:
        out.hints.append(f"the pod carries no {policy.prefix}/ keys: gpuslice passes it through untouched")
        return out
    out.request = req
    entry = engine.ledger.entry(pod.uid)
    if entry is not None:
        out.placed_on = entry.assignment.node
    names = engine.ledger.node_names()
    out.nodes_considered = len(names)
    result = engine.filter(pod, names=names)
    if result.error:
        out.hints.append(result.error)
    scores = dict(engine.prioritize(pod, names=result.passed)) if result.passed else {}
    out.fitting = len(result.passed)
    verdicts = [NodeVerdict(n, True, score=scores.get(n, 0)) for n in result.passed]
    quota = next((m for m in result.failed.values() if " quota: " in m), "")
    if quota:
        out.quota = quota.removeprefix("gpuslice: ")
        out.hints.append(f"{out.quota}: raise quotas.{pod.namespace} in the policy or free a tenant there")
    else:
        states = {s.name: s for s in engine.ledger.nodes()}
        for name, message in result.failed.items():
            state = states.get(name)
            verdicts.append(_failing(req, state, engine, message) if state is not None
                            else NodeVerdict(name, False, constraint="inventory", detail=message, shortfall=99.0))
    verdicts.sort(key=lambda v: (not v.fits, -v.score if v.fits else v.shortfall, v.node))
    out.best = verdicts[:top]
    if out.fitting or quota:
        return out
    if out.best:
        out.hints += _what_would_fit(req, out.best[0], states.get(out.best[0].node), engine)
    else:
        out.hints.append("no node has GPU inventory: is the gpuslice agent running on the GPU nodes?")
    return out


def _failing(req: SliceRequest, state: NodeState, engine: Engine, message: str) -> NodeVerdict:
    """The node's binding constraint and, in a few words, its nearest GPU's numbers."""
    policy = engine.policies.current
    if not state.gpus:
        return NodeVerdict(state.name, False, constraint="no-gpus", detail=message.removeprefix("gpuslice: "),
                           shortfall=99.0)
    fit = check(req, state, policy)
    ranked = sorted(state.gpus, key=lambda g: (_gap(req, g, engine), g.info.index))
    gaps = [_gap(req, g, engine) for g in ranked]
    fitting = sum(1 for g in state.gpus if gpu_reject_reason(req, g, policy) is None)
    shortfall = sum(gaps[: req.count]) + 99.0 * max(0, req.count - len(gaps))
    if fitting >= min(req.count, len(state.gpus)) or not fit.category:
        # every GPU that could take a share does, but the node has too few (or the rest are spoken for)
        return NodeVerdict(state.name, False, constraint="gpu-count",
                           detail=f"{fitting} of its {len(state.gpus)} GPUs can take the slice, the pod needs "
                                  f"{req.count}", shortfall=shortfall)
    nearest = ranked[fitting] if fitting < len(ranked) else ranked[0]
    reason = gpu_reject_reason(req, nearest, policy)
    words = reason[1] if reason else fit.reason
    category = reason[0] if reason else fit.category
    return NodeVerdict(state.name, False, constraint=category,
                       detail=f"{words} ({fitting} of {len(state.gpus)} GPUs fit, the pod needs {req.count})",
                       shortfall=shortfall)


def _free(gpu: GpuState, n: int, policy: Policy) -> int:
    """CUs a guarantee of n may take on this GPU, as the fit rule counts them (whole atoms)."""
    return free_for(gpu.room(policy.overcommit.memory, rules_of(policy)), n)


def _gap(req: SliceRequest, gpu: GpuState, engine: Engine) -> float:
    """How far one GPU is from taking the slice: the fraction of CUs and of memory missing, plus one
    for a rule (health, class, bandwidth) that no amount of room would satisfy."""
    policy = engine.policies.current
    n = needed_cus(req, gpu, policy)
    free = _free(gpu, n, policy)
    gap = max(0, n - free) / max(n, 1) + max(0, req.memory_bytes - gpu.memory_free) / max(req.memory_bytes, 1)
    reason = gpu_reject_reason(req, gpu, policy)
    if reason is not None and reason[0] not in ("compute", "memory"):
        gap += 1.0
    return gap


def _what_would_fit(req: SliceRequest, best: NodeVerdict, state: NodeState | None, engine: Engine) -> list[str]:
    """Concrete changes that would let the pod onto the nearest node."""
    if state is None or not state.gpus:
        return [f"{best.node}: {best.detail}"]
    policy = engine.policies.current
    prefix = policy.prefix
    if req.count > len(state.gpus):
        return [f"{prefix}/count {req.count} is more GPUs than any node has ({len(state.gpus)} on {best.node})"]
    gpu = min(state.gpus, key=lambda g: (_gap(req, g, engine), g.info.index))
    n = needed_cus(req, gpu, policy)
    free = _free(gpu, n, policy)
    where = f"{best.node} gpu {gpu.info.index}"
    hints = []
    reason = gpu_reject_reason(req, gpu, policy)
    category = reason[0] if reason else best.constraint
    if category == "unhealthy":
        hints.append(f"{where} is unhealthy; the healthy GPUs there are full")
    if n > free:
        millis = _largest_millis(req, gpu, engine, free)
        hints.append(f"{where} has {free} of the {n} CUs needed: free {n - free} CUs there, or ask "
                     f"{prefix}/compute <= {millis}m")
    if req.memory_bytes > gpu.memory_free:
        hints.append(f"{where} has {gpu.memory_free / GIB:.0f}Gi of the {req.memory_bytes / GIB:.0f}Gi memory "
                     f"needed: free {(req.memory_bytes - gpu.memory_free) / GIB:.0f}Gi there, or ask "
                     f"{prefix}/memory <= {gpu.memory_free // GIB}Gi")
    if category == "memory-limit":
        hints.append(f"{where}: lower {prefix}/memoryLimit, or raise overcommit.memory in the policy")
    if category == "class-rule":
        hints.append(f"{where}: {reason[1] if reason else best.detail}; another class, or the policy's classes "
                     f"limits, would let it share")
    if category == "bandwidth":
        hints.append(f"{where}: raise classes.bandwidthBudget in the policy, or wait for a tenant to leave")
    if req.count > 1:
        hints.append(f"the pod needs {req.count} such GPUs on one node")
    return hints or [f"{best.node}: {best.detail}"]


def _largest_millis(req: SliceRequest, gpu: GpuState, engine: Engine, free: int) -> int:
    """The largest compute request whose guarantee (after the policy's rounding) fits in `free` CUs."""
    lo, hi = 0, 1000
    while lo < hi:  # guaranteed CUs grow with the request: bisect
        mid = (lo + hi + 1) // 2
        if needed_cus(replace(req, compute_millis=mid, compute_cus=None), gpu, engine.policies.current) <= free:
            lo = mid
        else:
            hi = mid - 1
    return lo
