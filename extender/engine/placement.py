"""Placement decisions over one node's ledger state: does a slice fit (filter), how good is the
node (prioritize), and which GPUs and exact CUs does it get (bind).

Filter and prioritize use the same per-GPU rules as the bind decision, so a node that passes
filter and scores high is one where bind succeeds without breaking a class rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from extender.core.assignment import Assignment, GpuAssignment, now_rfc3339
from extender.core.layout import choose_burst, choose_cus, fragmentation
from extender.core.ledger import GpuState, NodeState
from extender.core.policy import Policy
from extender.core.requests import SliceRequest

MEMORY_BOUND = "memory-bound"
COMPUTE_BOUND = "compute-bound"


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
    return req.guaranteed_cus(policy, policy.model_for(gpu.info.model), gpu.info.computeUnits)


def usable_cus(gpu: GpuState, n: int) -> frozenset[int]:
    """CUs a guarantee of `n` may take. A request for the whole GPU takes an empty GPU whole, burst
    region included (exclusive use, e.g. cooperative launches); otherwise the burst region is never
    guaranteed, so without this a 1000m request could never fit."""
    if n >= gpu.info.computeUnits and not gpu.slices:
        return frozenset(range(gpu.info.computeUnits))
    return gpu.free_cus


def gpu_reject_reason(req: SliceRequest, gpu: GpuState, policy: Policy) -> tuple[str, str] | None:
    """Why the slice cannot go on this GPU: (category, words a person can act on); None if it fits."""
    i = gpu.info.index
    if not gpu.info.healthy:
        return "unhealthy", f"gpu {i}: unhealthy"
    n = needed_cus(req, gpu, policy)
    free = len(usable_cus(gpu, n))
    if n > free:
        return "compute", f"gpu {i}: needs {n} CUs, {free} free"
    if req.memory_bytes > gpu.memory_free:
        return "memory", f"gpu {i}: needs {_gib(req.memory_bytes)} memory, {_gib(gpu.memory_free)} free"
    cap = gpu.info.memoryBytes * policy.overcommit.memory
    if gpu.memory_limit_used + req.memory_limit_bytes > cap:
        return "memory-limit", (f"gpu {i}: memory limit {_gib(req.memory_limit_bytes)} would take limits past "
                f"{policy.overcommit.memory:g}x the GPU ({_gib(int(cap - gpu.memory_limit_used))} left)")
    rules = policy.classes
    if req.workload_class == MEMORY_BOUND and rules.maxMemoryBoundPerGpu is not None:
        have = gpu.count(MEMORY_BOUND)
        if have >= rules.maxMemoryBoundPerGpu:
            return "class-rule", (f"gpu {i}: {have} memory-bound tenants already "
                                  f"(policy max {rules.maxMemoryBoundPerGpu})")
    if req.workload_class == COMPUTE_BOUND and rules.maxComputeBoundPerGpu is not None:
        have = gpu.count(COMPUTE_BOUND)
        if have >= rules.maxComputeBoundPerGpu:
            return "class-rule", (f"gpu {i}: {have} compute-bound tenants already "
                                  f"(policy max {rules.maxComputeBoundPerGpu})")
    if rules.bandwidthBudget is not None:
        used = bandwidth_used(gpu, policy)
        mine = rules.bandwidthShare.get(req.workload_class, 0.0)
        if used + mine > rules.bandwidthBudget + 1e-9:
            return "bandwidth", (f"gpu {i}: bandwidth {used + mine:.2f} of the GPU would exceed "
                                 f"the budget {rules.bandwidthBudget:g}")
    return None


def bandwidth_used(gpu: GpuState, policy: Policy) -> float:
    share = policy.classes.bandwidthShare
    return sum(share.get(s.workload_class, 0.0) for s in gpu.slices)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}Gi"


def complementarity(req_class: str, gpu: GpuState) -> float:
    """1 when the newcomer's class complements every tenant, 0 when it doubles up on memory bandwidth."""
    if not gpu.slices:
        return 0.5
    total = 0.0
    for s in gpu.slices:
        if s.workload_class != req_class:
            total += 1.0
        elif req_class == COMPUTE_BOUND:
            total += 0.6
    return total / len(gpu.slices)


def gpu_score(req: SliceRequest, gpu: GpuState, cus: frozenset[int], policy: Policy) -> float:
    """0..1: packing per the strategy, class complementarity, fragmentation left behind."""
    usable = gpu.info.computeUnits - len(gpu.shared)
    after = min(1.0, (len(gpu.guaranteed - gpu.shared) + len(cus)) / usable) if usable else 1.0
    pack = after if policy.scoring.strategy == "binpack" else 1.0 - after
    mem_after = (gpu.memory_used + req.memory_bytes) / gpu.info.memoryBytes
    pack = 0.7 * pack + 0.3 * (mem_after if policy.scoring.strategy == "binpack" else 1.0 - mem_after)
    comp = complementarity(req.workload_class, gpu)
    frag = fragmentation(gpu.free_cus - cus, _min_slice(gpu, policy))
    w = policy.scoring.weights
    total_w = w.packing + w.complementarity + w.fragmentation
    if total_w == 0:
        return 0.5
    return (w.packing * pack + w.complementarity * comp + w.fragmentation * (1.0 - frag)) / total_w


def _min_slice(gpu: GpuState, policy: Policy) -> int:
    model = policy.model_for(gpu.info.model)
    if policy.rounding.mode == "balanced":
        return max(policy.rounding.minComputeUnits, model.balanced_multiple)
    return policy.rounding.minComputeUnits


def _topology_key(gpu: GpuState) -> object:
    return gpu.info.hiveId if gpu.info.hiveId is not None else gpu.info.numaNode


GPU_MEMO_LIMIT = 64


def gpu_option(req: SliceRequest, gpu: GpuState, policy: Policy) -> GpuChoice | tuple[str, str]:
    """The slice on one GPU: the CUs it would get and their score, or (category, reason) why not.
    A pure function of the request, the (immutable) GPU state and the policy, so it is memoized on
    the GPU state: a node whose other GPUs changed re-evaluates only those."""
    key = (req, policy.version)
    hit = gpu.memo.get(key)
    if hit is not None:
        return hit  # type: ignore[return-value]
    option = _gpu_option(req, gpu, policy)
    if len(gpu.memo) >= GPU_MEMO_LIMIT:
        gpu.memo.clear()
    gpu.memo[key] = option
    return option


def _gpu_option(req: SliceRequest, gpu: GpuState, policy: Policy) -> GpuChoice | tuple[str, str]:
    reason = gpu_reject_reason(req, gpu, policy)
    if reason is not None:
        return reason
    n = needed_cus(req, gpu, policy)
    cus = choose_cus(usable_cus(gpu, n), n, policy.layout.mode, gpu.info.xcds)
    if cus is None:  # cannot happen after the count check, kept as a guard
        return ("compute", f"gpu {gpu.info.index}: no CU set of {n}")
    extra = max(0, req.limit_cus(gpu.info.computeUnits) - n)
    burst = choose_burst(gpu.burst_cus, extra)
    return GpuChoice(gpu, cus, burst, gpu_score(req, gpu, cus, policy))


def evaluate(req: SliceRequest, state: NodeState, policy: Policy) -> NodeFit:
    """Greedy best-per-GPU placement of the whole request on one node (filter, score and bind)."""
    candidates: list[GpuChoice] = []
    reasons: list[tuple[str, str]] = []
    for gpu in state.gpus:
        option = gpu_option(req, gpu, policy)
        if isinstance(option, GpuChoice):
            candidates.append(option)
        else:
            reasons.append(option)
    if len(candidates) < req.count:
        category = reasons[0][0] if reasons else "no-gpus"
        return NodeFit(False, _reject_message(req, state, [r for _, r in reasons], len(candidates)), category)
    chosen, topo = _pick(candidates, req.count)
    score = sum(c.score for c in chosen) / len(chosen)
    w = policy.scoring.weights
    if req.count > 1 and (w.packing + w.complementarity + w.fragmentation + w.topology) > 0:
        base = w.packing + w.complementarity + w.fragmentation
        score = (score * base + w.topology * topo) / (base + w.topology)
    return NodeFit(True, choices=tuple(chosen), score=score)


def _pick(candidates: list[GpuChoice], count: int) -> tuple[list[GpuChoice], float]:
    ranked = sorted(candidates, key=lambda c: (-c.score, c.gpu.info.index))
    if count == 1:
        return ranked[:1], 1.0
    groups: dict[object, list[GpuChoice]] = {}
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


def _reject_message(req: SliceRequest, state: NodeState, reasons: list[str], fitting: int) -> str:
    if not state.gpus:
        return "node has no GPUs in its inventory"
    head = f"{fitting}/{len(state.gpus)} GPUs can take the slice (pod needs {req.count})"
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
