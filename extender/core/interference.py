"""The interference model: the throughput a tenant loses to the other tenants of its GPU, and the most
of it the policy's per-GPU rules allow.

DESIGN "Why these numbers": two memory-bound Llama-3.1-8B instances on one MI300X each lose 13%
(memory-bandwidth sharing). A tenant loses `interference.memoryBoundPenalty` per *other* memory-bound
tenant of its GPU and `interference.computeBoundPenalty` per other compute-bound one; the losses add
up, capped at MAX_LOSS (a model, not a measurement, past two tenants).
"""

from __future__ import annotations

from dataclasses import dataclass

from extender.core.ledger import GpuState
from extender.core.policy import GpuModel, Policy, guaranteeable, round_cus

MEMORY_BOUND = "memory-bound"
COMPUTE_BOUND = "compute-bound"
MAX_LOSS = 0.95
_EPS = 1e-9  # the bandwidth budget's tolerance, as the per-GPU rule applies it


@dataclass(frozen=True)
class CoTenants:
    """The other tenants of one GPU, by class."""

    memory_bound: int = 0
    compute_bound: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"memoryBound": self.memory_bound, "computeBound": self.compute_bound}


def loss(policy: Policy, others: CoTenants) -> float:
    """Fraction of its throughput a tenant loses beside `others`."""
    p = policy.interference
    return min(MAX_LOSS, p.memoryBoundPenalty * others.memory_bound + p.computeBoundPenalty * others.compute_bound)


def co_tenants(gpu: GpuState, uid: str) -> CoTenants:
    """The tenants of `gpu` other than pod `uid`."""
    others = [s for s in gpu.slices if s.pod.uid != uid]
    mb = sum(1 for s in others if s.workload_class == MEMORY_BOUND)
    return CoTenants(mb, len(others) - mb)


def guaranteeable_cus(policy: Policy, model: GpuModel) -> int:
    """CUs of an empty GPU of `model` that fractional tenants can be guaranteed: all but the policy's
    shared burst region (the ledger's rule)."""
    return guaranteeable(policy, model.computeUnits, model.xcds)


def worst_co_tenants(policy: Policy, workload_class: str, model: GpuModel, cus: int) -> CoTenants:
    """The co-tenancy with the largest loss that the per-GPU rules allow beside a tenant of
    `workload_class` holding `cus` CUs of a GPU of `model`.

    Bounded by the class limits (`maxMemoryBoundPerGpu`, `maxComputeBoundPerGpu`, counting the tenant
    itself), the bandwidth budget (the summed `bandwidthShare` of all tenants) and the CUs left beside
    it (outside the shared burst region), each other tenant holding at least the smallest slice the
    policy's rounding gives. A tenant holding more than the guaranteeable CUs holds the whole GPU, alone.
    """
    total = model.computeUnits
    usable = guaranteeable_cus(policy, model)
    if cus > usable:
        return CoTenants()
    rules = policy.classes
    smallest = round_cus(policy, model, total, 1)
    by_cus = (usable - cus) // smallest
    mine_mb = 1 if workload_class == MEMORY_BOUND else 0
    mine_cb = 1 if workload_class == COMPUTE_BOUND else 0
    cap_mb = by_cus if rules.maxMemoryBoundPerGpu is None else max(0, rules.maxMemoryBoundPerGpu - mine_mb)
    cap_cb = by_cus if rules.maxComputeBoundPerGpu is None else max(0, rules.maxComputeBoundPerGpu - mine_cb)
    share = rules.bandwidthShare

    def within_budget(mb: int, cb: int) -> bool:
        if rules.bandwidthBudget is None:
            return True
        used = share.get(workload_class, 0.0) + mb * share.get(MEMORY_BOUND, 0.0) + cb * share.get(COMPUTE_BOUND, 0.0)
        return used <= rules.bandwidthBudget + _EPS

    worst: tuple[float, CoTenants] | None = None
    for mb in range(min(cap_mb, by_cus) + 1):
        if not within_budget(mb, 0):
            break
        cb = min(cap_cb, by_cus - mb)  # every compute-bound neighbour adds loss: take as many as allowed
        while cb > 0 and not within_budget(mb, cb):
            cb -= 1
        others = CoTenants(mb, cb)
        lost = loss(policy, others)
        if worst is None or lost > worst[0]:
            worst = (lost, others)
    return worst[1] if worst else CoTenants()
