"""The fewest GPUs that could carry a minute's demand: a lower bound on what any right-sizer can reach
in `gpuslice simulate --demand`.

At each minute, every followed service gets pods at sizes the SLA-sizing rule gives (its `Ladder`'s
steps: the slices a target-rps can ask the extender for), the pods without a demand curve keep the
slices the engine gave them, and all are packed onto GPUs of the profile's model afresh, with no regard
to where anything was — under the per-GPU fit rule (`core.fit`: CUs in whole atoms, memory, class
limits, bandwidth budget). Optionally (`pinned`) the pods without a curve stay on the GPUs they were
placed on. Each followed pod serves its profile's req/s at its CUs less the interference of the
co-tenants its GPU actually has (`core.interference`, the model SLA-minutes are judged by), so the
floor owes nothing to the sizing rule's worst-case budget. The floor is the least number of GPUs whose
pods carry every service's demand that minute.

Solved exactly as an integer program over GPU *patterns* (every multiset of tenants one GPU can hold,
enumerated through the fit rule itself, less those another pattern does at least as well as) with
OR-Tools' MIP interface (SCIP; CP-SAT takes seconds a minute on this model, SCIP milliseconds): how
many GPUs of each pattern, and which service each pattern's followed slots serve. Capacities are
rounded up and demands down to 1/10000 req/s, which can only lower the optimum: the floor stays a
floor. The fewest GPUs only grows with any service's demand, so a block of minutes whose per-service
minima and maxima need as many GPUs is counted without solving each of its minutes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ortools.linear_solver import pywraplp

from extender.core.errors import InputError
from extender.core.fit import COMPUTE_BOUND, MEMORY_BOUND, Demand, Room, Rules, fits
from extender.core.interference import CoTenants, loss
from extender.core.policy import Policy, profile_rps

SCALE = 10_000  # req/s are compared in 1/SCALE
BLOCK = 15  # minutes whose bounds are tried before each of its minutes is solved


@dataclass(frozen=True, order=True)
class Tenant:
    """One tenant as the fit rule reads it: a pod without a demand curve, or a followed pod's slice."""

    workload_class: str
    cus: int
    memory: int
    memory_limit: int

    @property
    def demand(self) -> Demand:
        return Demand(self.cus, self.memory, self.memory_limit, self.workload_class)


@dataclass(frozen=True)
class Followed:
    """A followed service as the floor sees it: its pods' class, memory, profile and slice sizes."""

    name: str
    workload_class: str
    memory: int
    profile: str
    sizes: tuple[int, ...]


def _adds(room: Room, t: Tenant, rules: Rules) -> Room | None:
    if not fits(room, t.demand, rules):
        return None
    mb, cb = int(t.workload_class == MEMORY_BOUND), int(t.workload_class == COMPUTE_BOUND)
    return room.after(t.cus, t.memory, t.memory_limit, mb, cb, rules.share_units(t.workload_class), 1)


def patterns(room: Room, kinds: Sequence[Tenant], rules: Rules) -> list[tuple[Tenant, ...]]:
    """Every non-empty multiset of `kinds` that one GPU of `room` holds, by the fit rule (tenants
    added one at a time, as placement adds them)."""
    kinds = sorted(set(kinds))
    out: list[tuple[Tenant, ...]] = []

    def grow(r: Room, start: int, held: tuple[Tenant, ...]) -> None:
        for k in range(start, len(kinds)):
            after = _adds(r, kinds[k], rules)
            if after is not None:
                out.append(held + (kinds[k],))
                grow(after, k, held + (kinds[k],))

    grow(room, 0, ())
    return out


def slot_rps(policy: Policy, pattern: tuple[Tenant, ...], slot: Tenant, profile: str) -> float:
    """What a followed pod in `slot` of `pattern` serves beside the pattern's other tenants."""
    mb = sum(t.workload_class == MEMORY_BOUND for t in pattern) - (slot.workload_class == MEMORY_BOUND)
    cb = sum(t.workload_class == COMPUTE_BOUND for t in pattern) - (slot.workload_class == COMPUTE_BOUND)
    return profile_rps(policy.profiles[profile], slot.cus) * (1.0 - loss(policy, CoTenants(mb, cb)))


class GpuFloor:
    """The fewest GPUs carrying given demands (req/s per followed service), memoised."""

    def __init__(self, policy: Policy, empty: Room, fixed: Sequence[Tenant], followed: Sequence[Followed],
                 max_gpus: int, pinned: Sequence[tuple[Tenant, ...]] | None = None) -> None:
        """`fixed`: the pods without a demand curve. With `pinned` (their tenants per GPU, as placed) they
        stay on those GPUs and only the followed pods are packed afresh around them."""
        self.policy, self.followed, self.max_gpus = policy, list(followed), max_gpus
        self.fixed = Counter(fixed)
        self.pinned = None if pinned is None else Counter(tuple(sorted(p)) for p in pinned)
        # a slot's size fits any service of the same class and memory: one kind per (class, cus, memory)
        kinds = {Tenant(f.workload_class, c, f.memory, f.memory) for f in self.followed for c in f.sizes}
        kinds = {k for k in kinds if not any(self._better(s, k) for s in kinds if s.cus < k.cus)}
        every = patterns(empty, [*self.fixed, *kinds], Rules.from_policy(policy))
        if self.pinned is not None:
            every = [p for p in every if self._fixed_of(p) in self.pinned or not self._fixed_of(p)]
        # of patterns that stand in for each other, the first in order stays
        self.patterns = [p for p in every if not any(
            self._dominates(q, p) and (q < p or not self._dominates(p, q)) for q in every if q != p)]
        self._memo: dict[tuple[int, ...], int | None] = {}
        self._model: tuple[pywraplp.Solver, list[pywraplp.Constraint]] | None = None

    def _fixed_of(self, pattern: tuple[Tenant, ...]) -> tuple[Tenant, ...]:
        return tuple(t for t in pattern if t in self.fixed)

    def _rps(self, pattern: tuple[Tenant, ...], slot: Tenant) -> list[float]:
        """A slot's req/s for each followed service (0 for one it cannot serve)."""
        return [slot_rps(self.policy, pattern, slot, f.profile) if self._serves(f, slot) else 0.0
                for f in self.followed]

    @staticmethod
    def _serves(f: Followed, slot: Tenant) -> bool:
        return (f.workload_class, f.memory) == (slot.workload_class, slot.memory) and slot.cus in f.sizes

    def _better(self, small: Tenant, big: Tenant) -> bool:
        """`small` serves every service `big` serves at least as well, alone: `big` is never needed (a
        smaller slice fits wherever a larger one does, and interference does not depend on CUs)."""
        return (small.workload_class, small.memory) == (big.workload_class, big.memory) and all(
            self._serves(f, small) and slot_rps(self.policy, (small,), small, f.profile)
            >= slot_rps(self.policy, (big,), big, f.profile) for f in self.followed if self._serves(f, big))

    def _dominates(self, b: tuple[Tenant, ...], a: tuple[Tenant, ...]) -> bool:
        """A GPU of pattern `b` can stand in for one of `a`: the same fixed tenants and followed slots
        of the same classes, each of `b`'s (in order of size) serving every service at least as well."""
        fixed_a, fixed_b = self._fixed_of(a), self._fixed_of(b)
        slots_a, slots_b = [t for t in a if t not in self.fixed], [t for t in b if t not in self.fixed]
        if fixed_a != fixed_b or [(t.workload_class, t.memory) for t in slots_a] != \
                [(t.workload_class, t.memory) for t in slots_b]:
            return False
        return all(rb >= ra for sa, sb in zip(slots_a, slots_b, strict=True)
                   for ra, rb in zip(self._rps(a, sa), self._rps(b, sb), strict=True))

    def gpus(self, demand: Sequence[float]) -> int | None:
        """The fewest GPUs carrying `demand` (one req/s figure per followed service, in order); None
        when no packing of at most `max_gpus` GPUs does."""
        key = tuple(math.floor(d * SCALE) for d in demand)
        if key not in self._memo:
            self._memo[key] = self._solve(key)
        return self._memo[key]

    def _solve(self, need: tuple[int, ...]) -> int | None:
        if self._model is None:
            self._model = self._build()
        solver, demand = self._model
        for row, n in zip(demand, need, strict=True):
            row.SetLb(n)
        status = solver.Solve()
        if status == solver.OPTIMAL:
            return round(solver.Objective().Value())
        if status == solver.INFEASIBLE:
            return None
        raise InputError("floor", str(need), f"the MIP solver ended with status {status} without an optimum")

    def _build(self) -> tuple[pywraplp.Solver, list[pywraplp.Constraint]]:
        """The integer program, built once; each solve sets the demand rows' right-hand sides."""
        solver = pywraplp.Solver.CreateSolver("SCIP")
        count = [solver.IntVar(0, self.max_gpus, f"p{j}") for j in range(len(self.patterns))]
        serves: list[list[tuple[int, pywraplp.Variable]]] = [[] for _ in self.followed]
        for j, pat in enumerate(self.patterns):
            for kind, n in Counter(pat).items():
                if kind in self.fixed:
                    continue
                users = []
                for i, f in enumerate(self.followed):
                    if self._serves(f, kind):
                        y = solver.IntVar(0, n * self.max_gpus, f"y{j}_{i}_{kind.cus}")
                        users.append(y)
                        serves[i].append((math.ceil(slot_rps(self.policy, pat, kind, f.profile) * SCALE), y))
                solver.Add(solver.Sum(users) <= n * count[j])  # each slot serves one service
        if self.pinned is None:
            for kind, n in self.fixed.items():
                solver.Add(solver.Sum([Counter(pat)[kind] * count[j] for j, pat in enumerate(self.patterns)
                                       if kind in pat]) >= n)
        else:  # as many GPUs of each placed content as there are
            for held, n in self.pinned.items():
                solver.Add(solver.Sum([count[j] for j, pat in enumerate(self.patterns)
                                       if self._fixed_of(pat) == held]) == n)
        demand = [solver.Add(solver.Sum([c * y for c, y in terms]) >= 0) for terms in serves]
        solver.Add(solver.Sum(count) <= self.max_gpus)
        solver.Minimize(solver.Sum(count))
        return solver, demand

    def day(self, demands: Sequence[Sequence[float]]) -> float:
        """GPU-hours of the floor over the minutes of `demands` (per service, per minute). The floor only
        grows with any service's demand: a block of BLOCK minutes whose per-service minima need as many
        GPUs as its maxima needs that many throughout; other blocks are solved minute by minute."""
        minutes = len(demands[0]) if demands else 0
        total = 0
        for a in range(0, minutes, BLOCK):
            cols = [d[a:a + BLOCK] for d in demands]
            lo, hi = self._need([min(c) for c in cols]), self._need([max(c) for c in cols])
            total += lo * len(cols[0]) if lo == hi else sum(self._need(list(m)) for m in zip(*cols, strict=True))
        return round(total / 60, 1)

    def _need(self, demand: Sequence[float]) -> int:
        n = self.gpus(demand)
        if n is None:
            raise InputError("demand", f"{max(demand):g}", f"no packing of {self.max_gpus} GPUs carries it")
        return n
