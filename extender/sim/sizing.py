"""SLA right-sizing and the interference model.

Interference: a tenant loses `interference.memoryBoundPenalty` of its throughput per *other*
memory-bound tenant on its GPU and `interference.computeBoundPenalty` per other compute-bound one
(the DESIGN: two memory-bound halves each lose 13%). Sizing cannot know the co-tenants a pod will
get, so it budgets for the worst the policy's class rules allow: (maxMemoryBoundPerGpu - 1 if the pod
is memory-bound, else maxMemoryBoundPerGpu) memory-bound neighbours, plus maxComputeBoundPerGpu
(less itself) compute-bound ones; an unlimited rule counts as many neighbours as fit by memory
(memory-bound) or by the smallest slice (compute-bound). The pod then gets the smallest CU count,
after the policy's rounding, whose profile throughput less that penalty meets its target, and at
least the profile's minimum memory. A target no CU count meets is infeasible and reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from extender.core.errors import SliceRequestError
from extender.core.policy import Policy, profile_rps
from extender.core.requests import size_for_target

MEMORY_BOUND = "memory-bound"
COMPUTE_BOUND = "compute-bound"
MAX_PENALTY = 0.95


def penalty(policy: Policy, memory_bound_others: int, compute_bound_others: int) -> float:
    p = (policy.interference.memoryBoundPenalty * memory_bound_others
         + policy.interference.computeBoundPenalty * compute_bound_others)
    return min(p, MAX_PENALTY)


def worst_neighbours(policy: Policy, workload_class: str, memory: int, model_name: str) -> tuple[int, int]:
    """(memory-bound, compute-bound) co-tenants the class rules allow next to such a pod."""
    model = policy.models[model_name]
    rules = policy.classes
    usable = model.computeUnits - int(model.computeUnits * policy.burst.sharedFraction)
    min_slice = max(policy.rounding.minComputeUnits, 1)
    by_memory = max(0, model.memory // max(memory, 1) - 1)
    by_cus = max(0, usable // min_slice - 1)
    mb = rules.maxMemoryBoundPerGpu
    cb = rules.maxComputeBoundPerGpu
    mine_mb = 1 if workload_class == MEMORY_BOUND else 0
    mine_cb = 1 - mine_mb
    mb_others = min(by_memory, by_cus) if mb is None else max(0, mb - mine_mb)
    cb_others = by_cus if cb is None else max(0, cb - mine_cb)
    return min(mb_others, by_memory, by_cus), min(cb_others, by_cus)


@dataclass(frozen=True)
class Sizing:
    cus: int | None  # None when infeasible
    predicted_rps: float  # at the budgeted worst-case interference
    penalty: float
    reason: str = ""


def size(policy: Policy, profile_name: str, target_rps: float, workload_class: str, memory: int) -> Sizing:
    profile = policy.profiles[profile_name]
    mb, cb = worst_neighbours(policy, workload_class, memory, profile.gpuModel)
    pen = penalty(policy, mb, cb)
    try:
        cus, rps = size_for_target(policy, profile_name, target_rps, policy.models[profile.gpuModel], pen)
    except SliceRequestError as exc:
        return Sizing(None, 0.0, pen, f"{exc.reason} (budgeting {pen:.0%} interference from {mb} memory-bound "
                                      f"and {cb} compute-bound co-tenants)")
    return Sizing(cus, rps, pen)


def millis_for_cus(cus: int, total: int) -> int:
    """A share in millis that the policy turns back into exactly `cus` CUs (floor, so ceil(m*total/1000)
    lands on `cus` for any GPU with at most 1000 CUs)."""
    return max(1, math.floor(cus * 1000 / total))


def predicted_rps(policy: Policy, profile_name: str, cus: int, memory_bound_others: int,
                  compute_bound_others: int) -> float:
    return profile_rps(policy.profiles[profile_name], cus) * (1 - penalty(policy, memory_bound_others,
                                                                           compute_bound_others))
