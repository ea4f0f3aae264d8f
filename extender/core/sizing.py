"""SLA sizing: the CUs a pod with a throughput profile and a target req/s gets, and the throughput a
placed replica is predicted to reach. One rule for the extender, `gpuslice plan` and the simulator.

The rule (DESIGN "SLA sizing"): the smallest CU count, after the policy's rounding, whose profile
throughput less the interference of its co-tenants meets the target. Sizing happens before placement,
so it budgets the worst co-tenancy the policy's per-GPU rules allow beside that many CUs
(`interference.worst_co_tenants`): any placement those rules accept then keeps the pod, and every SLA
tenant already on the GPU, at its target. The CU count is one of a whole GPU of the profile's model
(the model its throughput was measured on); the pod asks for it as a share of a GPU (`millis`), so on
a GPU of another model or size it gets the same share, like any compute request — its throughput
there is not measured, and no prediction is made for it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from extender.core.errors import SliceRequestError
from extender.core.interference import (
    COMPUTE_BOUND,
    MEMORY_BOUND,
    CoTenants,
    co_tenants,
    guaranteeable_cus,
    loss,
    worst_co_tenants,
)
from extender.core.ledger import GpuState
from extender.core.policy import GpuClass, GpuModel, Policy, profile_rps, round_cus


@dataclass(frozen=True)
class Sizing:
    """A target's size on one whole GPU of the profile's model."""

    profile: str
    target_rps: float
    cus: int  # guaranteed CUs
    millis: int  # the same as a share of a GPU: ceil(millis x CUs / 1000) == cus on the profile's model
    alone_rps: float  # the profile's throughput at `cus`
    predicted_rps: float  # alone_rps less the budgeted interference; >= target_rps
    budget: CoTenants  # the worst co-tenancy the policy allows beside `cus` CUs
    loss: float  # the budget's throughput loss


def rps_within_budget(policy: Policy, profile_name: str, cus: int,
                      workload_class: GpuClass | None = None) -> tuple[float, CoTenants]:
    """Throughput at `cus` CUs of the profile's model beside the worst co-tenancy the policy allows, and
    that co-tenancy."""
    profile = policy.profiles[profile_name]
    model = policy.models[profile.gpuModel]
    budget = worst_co_tenants(policy, workload_class or profile.workloadClass, model, cus)
    return profile_rps(profile, cus) * (1.0 - loss(policy, budget)), budget


_SIZED: dict[tuple[str, str, float, str | None], Sizing | SliceRequestError] = {}
_SIZED_LIMIT = 4096


def size_for_target(policy: Policy, profile_name: str, target_rps: float,
                    workload_class: GpuClass | None = None) -> Sizing:
    """The smallest CU count (after the policy's rounding, on one GPU of the profile's model) whose
    throughput beside the worst co-tenancy the policy allows meets `target_rps`. Counts between the
    guaranteeable CUs (all but the shared burst region) and the whole GPU are skipped: the next size up
    is the whole GPU, which has no co-tenant.

    `workload_class` is the pod's class when it overrides the profile's. Raises SliceRequestError
    naming `<prefix>/profile` for a profile the policy lacks and `<prefix>/target-rps` for a target
    that is not a positive number or that no CU count meets. A pure function of its arguments,
    memoised on the policy's version (every verb of a scheduling cycle parses the pod again).
    """
    if profile_name not in policy.profiles:
        known = ", ".join(sorted(policy.profiles)) or "none defined"
        raise SliceRequestError(f"{policy.prefix}/profile", profile_name, f"unknown profile (policy has: {known})")
    if not (math.isfinite(target_rps) and target_rps > 0):
        raise SliceRequestError(f"{policy.prefix}/target-rps", f"{target_rps:g}", "must be a finite number above 0")
    key = (policy.version, profile_name, target_rps, workload_class)
    answer = _SIZED.get(key)
    if answer is None:
        if len(_SIZED) >= _SIZED_LIMIT:
            _SIZED.clear()
        try:
            answer = _size(policy, profile_name, target_rps, workload_class)
        except SliceRequestError as exc:
            answer = exc
        _SIZED[key] = answer
    if isinstance(answer, SliceRequestError):
        raise SliceRequestError(answer.key, answer.value, answer.reason)
    return answer


def _size(policy: Policy, profile_name: str, target_rps: float, workload_class: GpuClass | None) -> Sizing:
    profile = policy.profiles[profile_name]
    model = policy.models[profile.gpuModel]
    total = model.computeUnits
    usable = guaranteeable_cus(policy, model)
    best: tuple[float, int, CoTenants] | None = None
    last = 0
    for wanted in range(1, total + 1):
        cus = round_cus(policy, model, total, wanted)
        if usable < cus < total:
            cus = total
        if cus == last:
            continue
        last = cus
        rps, budget = rps_within_budget(policy, profile_name, cus, workload_class)
        if rps >= target_rps:
            return Sizing(profile_name, target_rps, cus, millis_for_cus(cus, total), profile_rps(profile, cus),
                          rps, budget, loss(policy, budget))
        if best is None or rps > best[0]:
            best = (rps, cus, budget)
    top, at, budget = best if best else (0.0, 0, CoTenants())
    raise SliceRequestError(f"{policy.prefix}/target-rps", f"{target_rps:g}",
                            f"profile {profile_name} reaches at most {top:.1f} req/s on one {total}-CU "
                            f"{profile.gpuModel} ({at} CUs, budgeting {loss(policy, budget):.0%} interference "
                            f"from {budget.memory_bound} memory-bound and {budget.compute_bound} compute-bound "
                            f"co-tenants the policy allows); lower the target or run more replicas")


def millis_for_cus(cus: int, total: int) -> int:
    """A share in millis that gives back exactly `cus` of `total` CUs (ceil(m x total / 1000) == cus for
    any GPU of at most 1000 CUs): the floor, not the ceiling, of cus x 1000 / total."""
    return max(1, math.floor(cus * 1000 / total))


@dataclass(frozen=True)
class Prediction:
    """A placed replica's throughput beside its actual co-tenants (on its worst GPU)."""

    target_rps: float
    cus: int  # its CUs on that GPU
    co_tenants: CoTenants
    predicted_rps: float | None  # None: the GPU is not of the profile's model (throughput not measured)

    @property
    def met(self) -> bool | None:
        return None if self.predicted_rps is None else self.predicted_rps + 1e-9 >= self.target_rps

    def to_dict(self) -> dict[str, object]:
        return {"targetRps": self.target_rps, "computeUnits": self.cus, "coTenants": self.co_tenants.to_dict(),
                "predictedRps": None if self.predicted_rps is None else round(self.predicted_rps, 2),
                "met": self.met}


def predict(policy: Policy, profile_name: str, target_rps: float, gpus: Iterable[GpuState], uid: str) -> Prediction:
    """The replica `uid`'s predicted throughput beside the co-tenants it has on `gpus` (its GPUs), taken
    on the GPU where it is lowest (a multi-GPU replica runs at the pace of its slowest GPU)."""
    profile = policy.profiles[profile_name]
    worst: Prediction | None = None
    for gpu in gpus:
        mine = next((s for s in gpu.slices if s.pod.uid == uid), None)
        if mine is None:
            continue
        others = co_tenants(gpu, uid)
        rps = None
        if gpu.info.model == profile.gpuModel:
            cus = round(len(mine.cus) * policy.models[profile.gpuModel].computeUnits / gpu.info.computeUnits)
            rps = profile_rps(profile, cus) * (1.0 - loss(policy, others))
        here = Prediction(target_rps, len(mine.cus), others, rps)
        if worst is None or (rps is not None and (worst.predicted_rps is None or rps < worst.predicted_rps)):
            worst = here
    if worst is None:
        raise ValueError(f"pod {uid} holds none of the GPUs it was asked about")
    return worst


def gpu_share(policy: Policy, model: GpuModel, workload_class: GpuClass, cus: int, memory: int) -> float:
    """The fraction of one GPU of `model` that a pod of `workload_class` holding `cus` guaranteed CUs and
    `memory` bytes takes from every other tenant under the per-GPU rules: the largest of its CUs of the
    guaranteeable ones, its memory of what the GPU may hand out, one over its class's per-GPU limit and
    its bandwidth share of the budget. A slice that leaves less than the smallest slice beside it holds
    the GPU alone (1). The least number of GPUs a set of pods can fill is at least the sum of their
    shares for any one class; `gpuslice simulate --demand` reports it beside the GPUs actually used.
    """
    usable = guaranteeable_cus(policy, model)
    if cus > usable or usable - cus < round_cus(policy, model, model.computeUnits, 1):
        return 1.0
    rules = policy.classes
    parts = [cus / usable, memory / (model.memory * policy.overcommit.memory)]
    limit = {MEMORY_BOUND: rules.maxMemoryBoundPerGpu, COMPUTE_BOUND: rules.maxComputeBoundPerGpu}.get(workload_class)
    if limit is not None:
        parts.append(1.0 / limit)
    if rules.bandwidthBudget is not None:
        parts.append(rules.bandwidthShare.get(workload_class, 0.0) / rules.bandwidthBudget)
    return min(1.0, max(parts))
