"""The per-GPU fit rule, defined once: can a guarantee of n CUs (with its memory and class) go on this GPU?

Capacity in whole atoms, memory and memory limits, class limits, the bandwidth budget and whole-GPU
exclusivity, in that order; the first rule that fails is the verdict. Every path that decides a fit uses
this function (placement's filter, score and bind; the solver's feasibility and greedy; the ledger's check
of a new reservation) or is property-tested against it (the vectorised filter, the simulator's screen,
the CP-SAT model's linear rows): tests/core/test_fit_rule.py.

The rule reads counts only (`Room`): a GPU's room is worked out from the ledger's exact CU sets by
`GpuState.room`, and the solver subtracts what it has already put there (`Room.after`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

from extender.core.policy import Policy

MEMORY_BOUND = "memory-bound"
COMPUTE_BOUND = "compute-bound"
# Bandwidth shares are fractions of a GPU; the rule counts them in 1/10000ths, so that every path adds
# the same integers (no float sums in different orders).
BANDWIDTH_SCALE = 10_000
NO_WHOLE = 1 << 62  # total_cus of a room that never takes a whole-GPU tenant
CATEGORIES = ("unhealthy", "compute", "memory", "memory-limit", "class-rule", "bandwidth")


class Room(NamedTuple):
    """What the rule reads of one GPU."""

    healthy: bool
    total_cus: int  # a guarantee of this many CUs is the whole GPU (burst region included)
    free_cus: int  # CUs that can still be guaranteed, counted in whole atoms (a multiple of the XCD count)
    tenants: int
    free_memory: int
    limit_room: int  # memory-limit headroom: floor(memory x overcommit) - limits already promised
    memory_bound: int = 0
    compute_bound: int = 0
    bandwidth_units: int = 0  # tenants' bandwidth shares, in 1/BANDWIDTH_SCALE of the GPU

    def after(self, cus: int, memory: int, limit: int, memory_bound: int, compute_bound: int, bandwidth: int,
              tenants: int) -> Room:
        """The room once tenants with these totals are added (the solver's partial placements)."""
        return Room(self.healthy, self.total_cus, self.free_cus - cus, self.tenants + tenants,
                    self.free_memory - memory, self.limit_room - limit, self.memory_bound + memory_bound,
                    self.compute_bound + compute_bound, self.bandwidth_units + bandwidth)


class Demand(NamedTuple):
    """One tenant's need on one GPU: `cus` after rounding (whole atoms; `total_cus` = the whole GPU)."""

    cus: int
    memory: int
    memory_limit: int
    workload_class: str


class Verdict(NamedTuple):
    """Why a demand does not fit: the rule's category and the numbers its words show."""

    category: str
    need: int = 0  # compute: CUs needed
    free: int = 0  # compute: CUs free; memory: bytes free; memory-limit: bytes of limit left
    have: int = 0  # class-rule: tenants of the class already there
    limit: int = 0  # class-rule: the policy's maximum
    used_units: int = 0  # bandwidth: units the tenants already take


@dataclass(frozen=True)
class Rules:
    """The policy's per-GPU class rules (`classes` in the policy)."""

    max_memory_bound: int | None = 2
    max_compute_bound: int | None = None
    bandwidth_share: Mapping[str, float] = field(default_factory=lambda: {MEMORY_BOUND: 0.5, COMPUTE_BOUND: 0.2})
    bandwidth_budget: float | None = None

    @classmethod
    def from_policy(cls, policy: Policy) -> Rules:
        c = policy.classes
        return cls(c.maxMemoryBoundPerGpu, c.maxComputeBoundPerGpu, dict(c.bandwidthShare), c.bandwidthBudget)

    def share_units(self, workload_class: str) -> int:
        return round(self.bandwidth_share.get(workload_class, 0.0) * BANDWIDTH_SCALE)

    @cached_property
    def budget_units(self) -> int | None:
        if self.bandwidth_budget is None:
            return None
        return math.floor(self.bandwidth_budget * BANDWIDTH_SCALE + 1e-6)

    def class_limit(self, workload_class: str) -> int | None:
        if workload_class == MEMORY_BOUND:
            return self.max_memory_bound
        if workload_class == COMPUTE_BOUND:
            return self.max_compute_bound
        return None

    def units_of(self, classes: Mapping[str, int]) -> int:
        """Bandwidth units of tenants counted by class."""
        return sum(self.share_units(c) * n for c, n in classes.items())


def whole_gpu(cus: int, total_cus: int, tenants: int) -> bool:
    """A guarantee of the whole GPU takes an empty GPU whole, burst region included; no other tenant may
    be there or join it (DESIGN, whole GPUs)."""
    return cus >= total_cus and tenants == 0


def takes_whole(room: Room, cus: int) -> bool:
    return whole_gpu(cus, room.total_cus, room.tenants)


def free_for(room: Room, cus: int) -> int:
    """CUs a guarantee of `cus` may take here."""
    return room.total_cus if takes_whole(room, cus) else room.free_cus


def verdict(room: Room, demand: Demand, rules: Rules) -> Verdict | None:
    """None when the demand fits the GPU; else the first rule it breaks."""
    if not room.healthy:
        return Verdict("unhealthy")
    free = free_for(room, demand.cus)
    if demand.cus > free:
        return Verdict("compute", need=demand.cus, free=free)
    if demand.memory > room.free_memory:
        return Verdict("memory", free=room.free_memory)
    if demand.memory_limit > room.limit_room:
        return Verdict("memory-limit", free=room.limit_room)
    cls = demand.workload_class
    limit = rules.class_limit(cls)
    if limit is not None:
        have = room.memory_bound if cls == MEMORY_BOUND else room.compute_bound
        if have >= limit:
            return Verdict("class-rule", have=have, limit=limit)
    budget = rules.budget_units
    if budget is not None and room.bandwidth_units + rules.share_units(cls) > budget:
        return Verdict("bandwidth", used_units=room.bandwidth_units)
    return None


def fits(room: Room, demand: Demand, rules: Rules) -> bool:
    return verdict(room, demand, rules) is None
