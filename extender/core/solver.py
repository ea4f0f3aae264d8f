"""The co-location solver: which GPUs each tenant goes on, as an OR-Tools CP-SAT model.

The model works on counts (CUs, memory, tenants per class, bandwidth shares) per GPU; the exact CU
bits of a placement come afterwards from core/layout.py, which always finds a set of n bits when n
are free. That keeps the model small enough to solve in milliseconds at bind, and the same model
(with a GPU-count objective) plans whole batches.

A bind's problem (one pod, one node) has at most a few dozen candidate GPU sets; solve() tries them
all against the same objective instead of building the model, which gives the same optimum faster.

Every solve starts from a greedy best-fit answer (as a CP-SAT hint and as the fallback), so the
solver never does worse than greedy and never fails where greedy succeeds.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cache, cached_property
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # OR-Tools is imported by the first CP-SAT model a solve builds: see _cp()
    from ortools.sat.python import cp_model

from extender.core.fit import COMPUTE_BOUND, MEMORY_BOUND, NO_WHOLE, Demand, Room, Rules, fits
from extender.core.layout import is_full
from extender.core.ledger import NodeState
from extender.core.policy import Policy
from extender.core.requests import SliceRequest

OUTCOMES = ("optimal", "feasible", "fallback-greedy", "infeasible")
# Objective terms are fractions scaled to integers, then multiplied by the policy's weights (x100).
UNIT = 1000
PAIR_REWARD = 300  # one memory-bound tenant next to one compute-bound tenant
DOUBLE_PENALTY = 500  # each memory-bound tenant beyond the first on a GPU

ENUMERATE_LIMIT = 256  # candidate GPU sets of a one-item problem below which solve() tries them all
QUICK_LIMIT = 0.5  # seconds; below this a solve is a bind-time decision and skips presolve
Placement = tuple[tuple[int, ...] | None, ...]  # per item: the bin positions it uses, or None (unplaced)


@dataclass(frozen=True)
class Bin:
    """One GPU's room, as the model sees it."""

    node: str
    index: int
    usable_cus: int  # CUs that can ever be guaranteed (total less the burst region)
    free_cus: int
    memory: int
    free_memory: int
    limit_room: int  # memory-limit headroom under the overcommit factor
    memory_bound: int = 0
    compute_bound: int = 0
    bandwidth_units: int = 0  # the tenants' bandwidth shares, in 1/BANDWIDTH_SCALE of the GPU
    group: str | None = None  # XGMI hive, else NUMA node: GPUs close together
    healthy: bool = True
    min_slice: int = 1  # leftovers below this are stranded (fragmentation)
    total_cus: int | None = None  # a guarantee of this many CUs takes the empty GPU whole; None: never

    @property
    def empty(self) -> bool:
        return self.memory_bound + self.compute_bound == 0 and self.free_memory == self.memory

    @cached_property
    def room(self) -> Room:
        """The GPU as the fit rule (core/fit.py) reads it (worked out once: the greedy and the model ask
        for every item)."""
        return Room(self.healthy, NO_WHOLE if self.total_cus is None else self.total_cus, self.free_cus,
                    self.memory_bound + self.compute_bound, self.free_memory, self.limit_room, self.memory_bound,
                    self.compute_bound, self.bandwidth_units)

    def whole(self, cus: int) -> bool:
        """A guarantee of `cus` here is the whole GPU (it fits only on an empty one, alone)."""
        return self.total_cus is not None and cus >= self.total_cus


@dataclass(frozen=True)
class Item:
    """One tenant to place: `count` GPUs on one node, each giving it `cus[b]` CUs (per bin) and memory."""

    key: str
    workload_class: str
    cus: tuple[int, ...]
    memory: int
    memory_limit: int
    count: int = 1
    optional: bool = False  # batch planning may leave it unplaced (reported), a bind may not


def class_room(rules: Rules, b: Bin, workload_class: str) -> int | None:
    """More tenants of this class the GPU may take; None = no limit."""
    limit = rules.class_limit(workload_class)
    if limit is None:
        return None
    return max(0, limit - (b.memory_bound if workload_class == MEMORY_BOUND else b.compute_bound))


def bandwidth_room(rules: Rules, b: Bin) -> int | None:
    """Bandwidth left on a GPU in model units; None when there is no budget."""
    budget = rules.budget_units
    return None if budget is None else budget - b.bandwidth_units


@dataclass(frozen=True)
class Weights:
    """Objective weights (the policy's scoring weights, x100 as integers)."""

    packing: int = 100
    complementarity: int = 100
    fragmentation: int = 50
    topology: int = 25
    spread: bool = False  # the `spread` strategy prefers empty GPUs instead of filling used ones
    gpu: int = 0  # cost of each GPU that goes from empty to used (batch planning makes it dominant)

    @classmethod
    def from_policy(cls, policy: Policy) -> Weights:
        w = policy.scoring.weights
        return cls(round(w.packing * 100), round(w.complementarity * 100), round(w.fragmentation * 100),
                   round(w.topology * 100), policy.scoring.strategy == "spread")


@dataclass(frozen=True)
class Problem:
    bins: tuple[Bin, ...]
    items: tuple[Item, ...]
    rules: Rules = Rules()
    weights: Weights = Weights()
    symmetry: bool = False  # order identical empty GPUs (sound, and it helps batch planning)
    max_new_gpus: int | None = None  # cap on empty GPUs the placement may start using


@dataclass(frozen=True)
class Solution:
    placement: Placement
    outcome: str  # one of OUTCOMES
    objective: int | None  # value of `objective(problem, placement)`; None when infeasible
    bound: float | None  # CP-SAT's proven upper bound on the objective, when it had one
    seconds: float

    @property
    def ok(self) -> bool:
        return self.outcome != "infeasible"


# --- stats for the Prometheus face ------------------------------------------------------------------
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class SolverStats:
    """Outcome counts and a duration histogram (cumulative buckets, as Prometheus wants them).

    A collector reads it at scrape time as `gpuslice_solver_duration_seconds` and
    `gpuslice_solver_outcome_total{outcome}`."""

    def __init__(self, buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.outcomes: Counter[str] = Counter({o: 0 for o in OUTCOMES})
        self.bucket_counts = [0] * len(self.buckets)
        self.count = 0
        self.sum = 0.0
        self._lock = threading.Lock()

    def record(self, outcome: str, seconds: float) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            self.count += 1
            self.sum += seconds
            for i, le in enumerate(self.buckets):
                if seconds <= le:
                    self.bucket_counts[i] += 1

    def histogram(self) -> tuple[list[tuple[str, int]], float]:
        """([(le, cumulative count)] including "+Inf", sum), the shape of a Prometheus histogram."""
        with self._lock:
            rows = [(repr(le), n) for le, n in zip(self.buckets, self.bucket_counts, strict=True)]
            rows.append(("+Inf", self.count))
            return rows, self.sum


# --- building problems from the ledger ------------------------------------------------------------
def min_slice(policy: Policy, model_name: str) -> int:
    model = policy.model_for(model_name)
    if policy.rounding.mode == "balanced":
        return max(policy.rounding.minComputeUnits, model.balanced_multiple)
    return policy.rounding.minComputeUnits


def bins_for_node(state: NodeState, policy: Policy) -> tuple[Bin, ...]:
    rules = Rules.from_policy(policy)
    out = []
    for g in state.gpus:
        info = g.info
        room = g.room(policy.overcommit.memory, rules)
        out.append(Bin(
            node=state.name, index=info.index, usable_cus=info.computeUnits - len(g.shared),
            free_cus=room.free_cus, memory=info.memoryBytes, free_memory=room.free_memory,
            limit_room=room.limit_room, memory_bound=room.memory_bound, compute_bound=room.compute_bound,
            bandwidth_units=room.bandwidth_units, group=topology_group(info.hiveId, info.numaNode),
            healthy=info.healthy, min_slice=min_slice(policy, info.model), total_cus=info.computeUnits))
    return tuple(out)


def topology_group(hive: str | None, numa: int | None) -> str | None:
    if hive is not None:
        return f"hive:{hive}"
    return None if numa is None else f"numa:{numa}"


def item_for(key: str, req: SliceRequest, state: NodeState, policy: Policy, optional: bool = False) -> Item:
    cus = tuple(req.guaranteed_cus(policy, policy.model_for(g.info.model), g.info.computeUnits, g.info.xcds)
                for g in state.gpus)
    return Item(key, req.workload_class, cus, req.memory_bytes, req.memory_limit_bytes, req.count, optional)


# --- feasibility, objective and greedy (plain Python; the model encodes exactly these) ---------------
@dataclass
class _Load:
    """What a placement adds to one bin."""

    cus: int = 0
    memory: int = 0
    limit: int = 0
    memory_bound: int = 0
    compute_bound: int = 0
    bandwidth: int = 0
    items: int = 0


def _fits(problem: Problem, b: int, item: Item, load: _Load) -> bool:
    """The fit rule (core/fit.py) on the bin's room less what the placement already put there."""
    room = problem.bins[b].room
    if load.items:
        room = room.after(load.cus, load.memory, load.limit, load.memory_bound, load.compute_bound, load.bandwidth,
                          load.items)
    return fits(room, Demand(item.cus[b], item.memory, item.memory_limit, item.workload_class), problem.rules)


def _weight(problem: Problem, item: Item, b: int) -> int:
    """CUs the item takes of the bin's guaranteeable room: all of it for a whole GPU (none is left to share)."""
    bn = problem.bins[b]
    return bn.free_cus if bn.whole(item.cus[b]) else item.cus[b]


def _add(load: _Load, item: Item, b: int, problem: Problem) -> None:
    rules = problem.rules
    load.cus += _weight(problem, item, b)
    load.memory += item.memory
    load.limit += item.memory_limit
    load.memory_bound += item.workload_class == MEMORY_BOUND
    load.compute_bound += item.workload_class == COMPUTE_BOUND
    load.bandwidth += rules.share_units(item.workload_class)
    load.items += 1


def loads(problem: Problem, placement: Placement) -> list[_Load]:
    out = [_Load() for _ in problem.bins]
    for item, where in zip(problem.items, placement, strict=True):
        for b in where or ():
            _add(out[b], item, b, problem)
    return out


def violations(problem: Problem, placement: Placement) -> list[str]:
    """Every capacity or class rule the placement breaks (empty = feasible)."""
    problems: list[str] = []
    out = [_Load() for _ in problem.bins]
    for item, where in zip(problem.items, placement, strict=True):
        if where is None:
            if not item.optional:
                problems.append(f"{item.key}: unplaced")
            continue
        if len(set(where)) != item.count or len(where) != item.count:
            problems.append(f"{item.key}: needs {item.count} distinct GPUs, got {where}")
        if len({problem.bins[b].node for b in where}) > 1:
            problems.append(f"{item.key}: GPUs on more than one node")
        for b in where:
            if not _fits(problem, b, item, out[b]):
                problems.append(f"{item.key}: does not fit gpu {problem.bins[b].node}/{problem.bins[b].index}")
            _add(out[b], item, b, problem)
    opened = sum(1 for bn, load in zip(problem.bins, out, strict=True) if bn.empty and load.items)
    if problem.max_new_gpus is not None and opened > problem.max_new_gpus:
        problems.append(f"{opened} GPUs newly used, more than {problem.max_new_gpus}")
    return problems


def _double_penalty(w: Weights) -> int:
    """What each memory-bound tenant beyond a GPU's first costs. Under binpack nothing: as in the greedy
    score (engine/placement.empty_complementarity), doubling up must not rank below opening an empty GPU;
    the class rules bound it and pairing with a compute-bound tenant is still rewarded."""
    return DOUBLE_PENALTY if w.spread else 0


def _open_cost(b: Bin) -> int:
    """0..UNIT: how empty the GPU is before this decision (a best-fit measure over CUs and memory)."""
    cu = b.free_cus / b.usable_cus if b.usable_cus else 0.0
    mem = b.free_memory / b.memory if b.memory else 0.0
    return round(UNIT * (cu + mem) / 2)


def _together(problem: Problem, where: Sequence[int]) -> bool:
    groups = {problem.bins[b].group for b in where}
    return len(groups) == 1 and None not in groups


def objective(problem: Problem, placement: Placement) -> int:
    """The value the model maximises, computed directly (tests compare it with brute force)."""
    w = problem.weights
    total = 0
    for bn, load in zip(problem.bins, loads(problem, placement), strict=True):
        touched = load.items > 0
        if touched:
            total += (1 if w.spread else -1) * w.packing * _open_cost(bn)
            if bn.empty:
                total -= w.gpu
        mb = bn.memory_bound + load.memory_bound
        cb = bn.compute_bound + load.compute_bound
        total += w.complementarity * (PAIR_REWARD * min(mb, cb) - _double_penalty(w) * max(0, mb - 1))
        left = bn.free_cus - load.cus
        if w.spread and 0 < left and is_full(left, bn.min_slice):  # binpack: full, not stranded
            total -= w.fragmentation * UNIT
    for item, where in zip(problem.items, placement, strict=True):
        if where is None:
            total -= unplaced_penalty(problem)
        elif item.count > 1 and _together(problem, where):
            total += w.topology * UNIT
    return total


def secondary_range(problem: Problem) -> int:
    """An upper bound on |objective| without the GPU and unplaced terms."""
    w = problem.weights
    n = len(problem.items) + max((b.memory_bound + b.compute_bound for b in problem.bins), default=0)
    per_bin = w.packing * UNIT + w.complementarity * (PAIR_REWARD + DOUBLE_PENALTY) * n + w.fragmentation * UNIT
    return len(problem.bins) * per_bin + w.topology * UNIT * len(problem.items)


def unplaced_penalty(problem: Problem) -> int:
    return (secondary_range(problem) + problem.weights.gpu) * (len(problem.bins) + 1) + 1


def greedy(problem: Problem, decreasing: bool = True, best: bool = True) -> Placement:
    """Best-fit (or first-fit) in the given or decreasing-size order, under the same rules. An item that
    fits nowhere is left unplaced (None)."""
    order = list(range(len(problem.items)))
    if decreasing:
        order.sort(key=lambda i: (-_size(problem, problem.items[i]), i))
    out = [_Load() for _ in problem.bins]
    placement: list[tuple[int, ...] | None] = [None] * len(problem.items)
    for i in order:
        item = problem.items[i]
        where = _choose(problem, item, out, best)
        if where is not None:
            for b in where:
                _add(out[b], item, b, problem)
            placement[i] = where
    return tuple(placement)


def _size(problem: Problem, item: Item) -> float:
    b0 = problem.bins[0] if problem.bins else None
    if b0 is None:
        return 0.0
    return item.count * (_weight(problem, item, 0) / max(b0.usable_cus, 1) + item.memory / max(b0.memory, 1))


def _left(problem: Problem, b: int, item: Item, load: _Load) -> float:
    bn = problem.bins[b]
    cu = (bn.free_cus - load.cus - _weight(problem, item, b)) / max(bn.usable_cus, 1)
    mem = (bn.free_memory - load.memory - item.memory) / max(bn.memory, 1)
    return cu + mem


def _choose(problem: Problem, item: Item, out: list[_Load], best: bool) -> tuple[int, ...] | None:
    by_node: dict[str, list[int]] = {}
    for b, bn in enumerate(problem.bins):
        if _fits(problem, b, item, out[b]):
            by_node.setdefault(bn.node, []).append(b)
    options: list[tuple[float, tuple[int, ...]]] = []
    for bins in by_node.values():
        if len(bins) < item.count:
            continue
        if best:
            ranked = sorted(bins, key=lambda b: (_left(problem, b, item, out[b]), b))[: item.count]
            options.append((sum(_left(problem, b, item, out[b]) for b in ranked), tuple(sorted(ranked))))
        else:
            options.append((min(bins), tuple(bins[: item.count])))
    if not options:
        return None
    return min(options)[1]


# --- the CP-SAT model ---------------------------------------------------------------------------------
def _cp() -> ModuleType:
    """OR-Tools' CP-SAT module, imported on first use: with the pandas it loads it adds ~55 MiB to a
    process, and a bind (solved by enumeration), filter and prioritize never build a model."""
    from ortools.sat.python import cp_model

    return cp_model


def _sum(pairs: Sequence[tuple[int, cp_model.IntVar]]) -> cp_model.LinearExprT:
    return _cp().LinearExpr.weighted_sum([v for _, v in pairs], [c for c, _ in pairs])


class _Model:
    def __init__(self, problem: Problem) -> None:
        self.p = problem
        self.m = _cp().CpModel()
        self.x: dict[tuple[int, int], cp_model.IntVar] = {}
        self.by_bin: list[list[tuple[int, cp_model.IntVar]]] = [[] for _ in problem.bins]
        self.by_item: list[dict[int, cp_model.IntVar]] = [{} for _ in problem.items]
        self.placed: list[cp_model.IntVar | int] = []
        self.obj: list[tuple[int, cp_model.IntVar]] = []  # (coefficient, variable); constants are dropped
        # auxiliary variables and how to compute each from a placement's loads (for complete hints)
        self.aux: list[tuple[cp_model.IntVar, Callable[[list[_Load], Placement], int]]] = []
        # Memory in bytes makes huge coefficients; dividing everything by the common divisor is exact.
        values = [v for b in problem.bins for v in (b.free_memory, b.limit_room)]
        values += [v for it in problem.items for v in (it.memory, it.memory_limit)]
        self.mem_unit = math.gcd(*values) or 1
        self._variables()
        self._bins()
        self._items()

    def _variables(self) -> None:
        p, empty = self.p, _Load()
        penalty = unplaced_penalty(p)
        for i, item in enumerate(p.items):
            for b in range(len(p.bins)):
                if _fits(p, b, item, empty):
                    v = self.m.new_bool_var(f"x{i}_{b}")
                    self.x[i, b] = v
                    self.by_bin[b].append((i, v))
                    self.by_item[i][b] = v
            if item.optional:
                placed = self.m.new_bool_var(f"placed{i}")
                self.placed.append(placed)
                self.obj.append((penalty, placed))
            else:
                self.placed.append(1)

    def _capacity(self, terms: list[tuple[int, cp_model.IntVar]], room: int) -> None:
        if sum(c for c, _ in terms) > room:  # skip rows that no placement can violate
            self.m.add(_sum(terms) <= room)

    def _bins(self) -> None:
        p, m, w, rules = self.p, self.m, self.p.weights, self.p.rules
        previous: tuple[cp_model.IntVar, int] | None = None
        opened = []
        u = self.mem_unit
        for b, bn in enumerate(p.bins):
            on = [(p.items[i], v) for i, v in self.by_bin[b]]
            if not on:
                continue
            # A whole-GPU item weighs all the bin's room, so nothing else can join it (core/fit.py).
            self._capacity([(_weight(p, it, b), v) for it, v in on], bn.free_cus)
            self._capacity([(1, v) for it, v in on if bn.whole(it.cus[b])], 1)
            self._capacity([(it.memory // u, v) for it, v in on], bn.free_memory // u)
            self._capacity([(it.memory_limit // u, v) for it, v in on], bn.limit_room // u)
            for cls in (MEMORY_BOUND, COMPUTE_BOUND):
                room = class_room(rules, bn, cls)
                if room is not None:
                    self._capacity([(1, v) for it, v in on if it.workload_class == cls], room)
            bw = bandwidth_room(rules, bn)
            if bw is not None:
                self._capacity([(rules.share_units(it.workload_class), v) for it, v in on], bw)
            touched = m.new_bool_var(f"touched{b}")
            self.aux.append((touched, lambda ls, _, b=b: int(ls[b].items > 0)))
            for _, v in on:
                m.add_implication(v, touched)
            m.add(touched <= _sum([(1, v) for _, v in on]))
            self.obj.append(((1 if w.spread else -1) * w.packing * _open_cost(bn) - (w.gpu if bn.empty else 0),
                             touched))
            self._complementarity(b, bn, on)
            self._fragmentation(b, bn, on)
            if p.symmetry and bn.empty and previous is not None and self._twins(previous[1], b):
                m.add(previous[0] >= touched)
            previous = (touched, b) if bn.empty else None
            if bn.empty:
                opened.append(touched)
        if p.max_new_gpus is not None:
            m.add(sum(opened) <= p.max_new_gpus)

    def _complementarity(self, b: int, bn: Bin, on: list[tuple[Item, cp_model.IntVar]]) -> None:
        w, m = self.p.weights, self.m
        if w.complementarity == 0:
            return
        new_mb = [(1, v) for it, v in on if it.workload_class == MEMORY_BOUND]
        new_cb = [(1, v) for it, v in on if it.workload_class == COMPUTE_BOUND]
        n = len(on) + bn.memory_bound + bn.compute_bound
        if new_mb or new_cb:
            can_pair = (bn.memory_bound or new_mb) and (bn.compute_bound or new_cb)
            if can_pair:
                pairs = m.new_int_var(0, n, f"pairs{b}")
                self.aux.append((pairs, lambda ls, _, b=b, bn=bn: min(
                    bn.memory_bound + ls[b].memory_bound, bn.compute_bound + ls[b].compute_bound)))
                m.add(pairs <= bn.memory_bound + _sum(new_mb))
                m.add(pairs <= bn.compute_bound + _sum(new_cb))
                self.obj.append((w.complementarity * PAIR_REWARD, pairs))
        if new_mb and bn.memory_bound + len(new_mb) > 1 and _double_penalty(w):
            doubled = m.new_int_var(0, n, f"doubled{b}")
            self.aux.append((doubled, lambda ls, _, b=b, bn=bn: max(0, bn.memory_bound + ls[b].memory_bound - 1)))
            m.add(doubled >= bn.memory_bound - 1 + _sum(new_mb))
            self.obj.append((-w.complementarity * DOUBLE_PENALTY, doubled))

    def _fragmentation(self, b: int, bn: Bin, on: list[tuple[Item, cp_model.IntVar]]) -> None:
        # Counts only: a leftover under a slice is all the model sees of stranding, and under binpack a
        # GPU left so is full, not stranded (core/layout.is_full): the term is spread's alone.
        if self.p.weights.fragmentation == 0 or bn.min_slice <= 1 or not self.p.weights.spread:
            return
        # Leftovers stay congruent to free_cus modulo the slices' common divisor g: when that is 0 and
        # g >= min_slice, nothing can be stranded here and the three booleans are not needed.
        g = math.gcd(*(_weight(self.p, it, b) for it, _ in on))
        if g >= bn.min_slice and bn.free_cus % g == 0:
            return
        m = self.m
        used = _sum([(_weight(self.p, it, b), v) for it, v in on])
        zero, big, stranded = m.new_bool_var("zero"), m.new_bool_var("big"), m.new_bool_var("stranded")
        m.add(used == bn.free_cus).only_enforce_if(zero)
        m.add(used <= bn.free_cus - bn.min_slice).only_enforce_if(big)
        m.add_bool_or([zero, big, stranded])
        rest, ms = bn.free_cus, bn.min_slice
        self.aux += [(zero, lambda ls, _, b=b: int(rest - ls[b].cus == 0)),
                     (big, lambda ls, _, b=b: int(rest - ls[b].cus >= ms)),
                     (stranded, lambda ls, _, b=b: int(0 < rest - ls[b].cus < ms))]
        self.obj.append((-self.p.weights.fragmentation * UNIT, stranded))

    def _items(self) -> None:
        p, m = self.p, self.m
        for i, item in enumerate(p.items):
            mine = self.by_item[i]
            m.add(_sum([(1, v) for v in mine.values()]) == item.count * self.placed[i])
            nodes: dict[str, list[cp_model.IntVar]] = {}
            for b, v in mine.items():
                nodes.setdefault(p.bins[b].node, []).append(v)
            if item.count > 1 and len(nodes) > 1:
                pick = {n: m.new_bool_var(f"node{i}_{n}") for n in nodes}
                m.add(sum(pick.values()) == self.placed[i])
                for n, vs in nodes.items():
                    for v in vs:
                        m.add_implication(v, pick[n])
                    self.aux.append((pick[n], lambda _, pl, i=i, n=n: int(
                        pl[i] is not None and p.bins[pl[i][0]].node == n)))
            if item.count > 1 and p.weights.topology:
                self._topology(i, item, mine, self.placed[i])

    def _topology(self, i: int, item: Item, mine: dict[int, cp_model.IntVar], placed: cp_model.IntVar | int) -> None:
        p, m = self.p, self.m
        groups: dict[tuple[str, str], list[int]] = {}
        for b in mine:
            g = p.bins[b].group
            if g is not None:
                groups.setdefault((p.bins[b].node, g), []).append(b)
        groups = {k: v for k, v in groups.items() if len(v) >= item.count}
        if not groups:
            return
        together = m.new_bool_var("together")
        self.aux.append((together, lambda _, pl: int(pl[i] is not None and _together(p, pl[i]))))
        inside = []
        for members in groups.values():
            q = m.new_bool_var("in_group")
            for b, v in mine.items():
                if b not in members:
                    m.add_implication(q, v.negated())
            inside.append(q)
            self.aux.append((q, lambda _, pl, members=frozenset(members): int(
                pl[i] is not None and set(pl[i]) <= members)))
        m.add_bool_or(inside).only_enforce_if(together)
        if not isinstance(placed, int):
            m.add_implication(together, placed)
        self.obj.append((p.weights.topology * UNIT, together))

    def _twins(self, a: int, b: int) -> bool:
        """Two empty GPUs that no tenant and no objective term can tell apart."""
        x, y = self.p.bins[a], self.p.bins[b]
        same = (x.node, x.group, x.usable_cus, x.free_cus, x.memory, x.limit_room, x.healthy, x.min_slice,
                x.total_cus) == (y.node, y.group, y.usable_cus, y.free_cus, y.memory, y.limit_room, y.healthy,
                                 y.min_slice, y.total_cus)
        return same and all(it.cus[a] == it.cus[b] for it in self.p.items)

    def objective(self) -> cp_model.LinearExprT:
        """The model's objective: `objective()` less its constant part (scores of untouched GPUs)."""
        return _sum(self.obj)

    def hint(self, placement: Placement) -> None:
        chosen = {(i, b) for i, where in enumerate(placement) for b in where or ()}
        # Hints are ints: older OR-Tools (9.10) rejects Python booleans in the hint proto.
        for key, v in self.x.items():
            self.m.add_hint(v, int(key in chosen))
        for i, placed in enumerate(self.placed):
            if not isinstance(placed, int):
                self.m.add_hint(placed, int(placement[i] is not None))
        ls = loads(self.p, placement)
        for var, value in self.aux:
            self.m.add_hint(var, int(value(ls, placement)))

    def value_at(self, placement: Placement) -> int:
        """The model's objective at a placement (its auxiliaries at their best, as in `hint`)."""
        values: dict[int, int] = {}
        chosen = {(i, b) for i, where in enumerate(placement) for b in where or ()}
        for key, v in self.x.items():
            values[v.index] = int(key in chosen)
        for i, placed in enumerate(self.placed):
            if not isinstance(placed, int):
                values[placed.index] = int(placement[i] is not None)
        ls = loads(self.p, placement)
        for var, value in self.aux:
            values[var.index] = value(ls, placement)
        return sum(c * values[v.index] for c, v in self.obj)

    def read(self, solver: cp_model.CpSolver) -> Placement:
        out: list[tuple[int, ...] | None] = []
        for mine in self.by_item:
            where = tuple(sorted(b for b, v in mine.items() if solver.boolean_value(v)))
            out.append(where or None)
        return tuple(out)


@cache
def _stop_at_class() -> type:
    """The solution callback class (its base class is OR-Tools', so it is made at first use)."""
    class _StopAt(_cp().CpSolverSolutionCallback):
        """Stop the search at a solution whose objective reaches a bound proven elsewhere."""

        def __init__(self, target: float) -> None:
            super().__init__()
            self.target = target

        def on_solution_callback(self) -> None:
            if self.objective_value >= self.target:
                self.stop_search()

    return _StopAt


def solve(problem: Problem, time_limit: float, workers: int = 1, hint: Placement | None = None,
          stats: SolverStats | None = None, stop_at: int | None = None,
          enumerate_limit: int = ENUMERATE_LIMIT) -> Solution:
    """Solve within `time_limit` seconds (wall clock, see below). `hint` (default: greedy best-fit) seeds the search
    and is the fallback; the better of the two by `objective` is returned. `stop_at`: an upper bound on
    the objective proven outside the model; a solution reaching it is optimal and ends the search.

    One required item with at most `enumerate_limit` candidate GPU sets (a bind: one pod on one
    node, at most C(8, 4) = 70 sets) is solved exactly by trying every set: the optimum of the same
    objective, in well under a millisecond, where building the CP-SAT model alone takes several."""
    start = time.perf_counter()
    exact = _enumerated(problem, hint, enumerate_limit)
    if exact is not None:
        return _finish(problem, exact, "optimal", objective(problem, exact), start, stats)
    if hint is None or violations(problem, hint):
        hint = _best_greedy(problem, quick=time_limit < QUICK_LIMIT)
    fallback_ok = not violations(problem, hint)
    if fallback_ok and stop_at is not None and objective(problem, hint) >= stop_at:
        return _finish(problem, hint, "optimal", None, start, stats)
    loading = time.perf_counter()
    _cp()  # OR-Tools' first import (once per process) is not charged to the search's time limit
    start += time.perf_counter() - loading
    model = _Model(problem)
    model.hint(hint)
    model.m.maximize(model.objective())
    offset = objective(problem, hint) - model.value_at(hint)  # the constant part the model leaves out
    cp_model = _cp()
    solver = cp_model.CpSolver()
    # The search gets what is left of the limit after the hint and the model are built (building is
    # counted against the limit but not interrupted: on 64 GPUs it alone can exceed 15 ms).
    solver.parameters.max_time_in_seconds = max(time_limit - (time.perf_counter() - start), 0.001)
    solver.parameters.num_workers = workers
    if time_limit < QUICK_LIMIT:
        # At bind the budget is milliseconds: presolve and symmetry detection would spend it all before
        # the search even loads the (complete, feasible) greedy hint.
        solver.parameters.cp_model_presolve = False
        solver.parameters.symmetry_level = 0
    status = solver.solve(model.m, _stop_at_class()(stop_at - offset) if stop_at is not None else None)
    outcome, placement, bound = "infeasible", hint, None
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        found = model.read(solver)
        bound = solver.best_objective_bound + offset
        if stop_at is not None and solver.objective_value + offset >= stop_at:
            status = cp_model.OPTIMAL
        if violations(problem, found):  # never trust a model bug over the rules
            outcome = "fallback-greedy" if fallback_ok else "infeasible"
        elif fallback_ok and objective(problem, hint) > objective(problem, found):
            outcome = "fallback-greedy"
        else:
            outcome, placement = ("optimal" if status == cp_model.OPTIMAL else "feasible"), found
    elif fallback_ok:
        outcome = "fallback-greedy"
    return _finish(problem, placement, outcome, bound, start, stats)


def _enumerated(problem: Problem, hint: Placement | None, limit: int) -> Placement | None:
    """The optimal placement of a one-item problem by exhaustion; None if the problem is not of that
    kind, has more than `limit` candidate sets, or has no feasible one (the model then reports it)."""
    if len(problem.items) != 1 or problem.items[0].optional:
        return None
    item = problem.items[0]
    empty = _Load()
    fits = [b for b in range(len(problem.bins)) if _fits(problem, b, item, empty)]
    if len(fits) < item.count or math.comb(len(fits), item.count) > limit:
        return None
    sets: Iterable[tuple[int, ...]] = itertools.combinations(fits, item.count)
    if item.count == 1:
        # One GPU: two GPUs alike but for their name give the same room and the same objective, and ties
        # keep the earlier, so only the first of each kind is tried (a node's empty GPUs are one kind).
        kinds: dict[tuple[Bin, int], int] = {}
        for b in fits:
            kinds.setdefault((_nameless(problem.bins[b]), item.cus[b]), b)
        sets = ((b,) for b in kinds.values())
    # The hint first: among equal objectives the greedy answer (what filter and prioritize saw) stays.
    options = itertools.chain([hint] if hint is not None else [], ((where,) for where in sets))
    best, best_value = None, None
    for placement in options:
        if violations(problem, placement):
            continue
        value = objective(problem, placement)
        if best_value is None or value > best_value:
            best, best_value = placement, value
    return best


def _nameless(b: Bin) -> Bin:
    """The GPU without what names it (node, index, group): what a one-GPU item's room and score read."""
    return replace(b, node="", index=0, group=None)


def _finish(problem: Problem, placement: Placement, outcome: str, bound: float | None, start: float,
            stats: SolverStats | None) -> Solution:
    seconds = time.perf_counter() - start
    if stats is not None:
        stats.record(outcome, seconds)
    if outcome == "infeasible":
        return Solution(tuple(None for _ in problem.items), outcome, None, bound, seconds)
    return Solution(placement, outcome, objective(problem, placement), bound, seconds)


def restrict(problem: Problem, keep: Sequence[int]) -> Problem:
    """The same problem over a subset of its GPUs (positions `keep`, in order)."""
    items = tuple(replace(it, cus=tuple(it.cus[b] for b in keep)) for it in problem.items)
    return replace(problem, bins=tuple(problem.bins[b] for b in keep), items=items)


def narrow(placement: Placement, keep: Sequence[int]) -> Placement:
    """A placement on the full problem, renumbered for `restrict(problem, keep)` (it must use only `keep`)."""
    pos = {b: k for k, b in enumerate(keep)}
    return tuple(None if w is None else tuple(pos[b] for b in w) for w in placement)


def widen(placement: Placement, keep: Sequence[int]) -> Placement:
    """A placement on `restrict(problem, keep)`, renumbered for the full problem."""
    return tuple(None if w is None else tuple(keep[k] for k in w) for w in placement)


def best_greedy(problem: Problem) -> Placement:
    """The best by `objective` of best-fit and first-fit, in given and decreasing order."""
    return _best_greedy(problem)


def _best_greedy(problem: Problem, quick: bool = False) -> Placement:
    # at bind only best-fit (both orders); first-fit rarely wins and costs as much again
    kinds = [(True, True), (False, True)] if quick else [(d, b) for d in (True, False) for b in (True, False)]
    options = [greedy(problem, decreasing=d, best=b) for d, b in kinds]
    feasible = [o for o in options if not violations(problem, o)] or options
    return max(feasible, key=lambda o: objective(problem, o))


def gpus_used(problem: Problem, placement: Placement) -> int:
    """GPUs holding at least one tenant after the placement (including tenants already there)."""
    touched = {b for where in placement for b in where or ()}
    return sum(1 for b, bn in enumerate(problem.bins) if b in touched or not bn.empty)
