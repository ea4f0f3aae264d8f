"""Properties of the CP-SAT co-location model on random small instances: its placements never break a
capacity or class rule (checked here independently of the solver module), and where the instance is
small enough to enumerate every placement, the solver's objective is the optimum."""

from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from extender.core.solver import (
    ENUMERATE_LIMIT,
    Bin,
    Item,
    Placement,
    Problem,
    Rules,
    Weights,
    _enumerated,
    objective,
    solve,
    violations,
)

CLASSES = ("memory-bound", "compute-bound")


@st.composite
def problems(draw: st.DrawFn, max_bins: int = 3, max_items: int = 4) -> Problem:
    n_bins = draw(st.integers(1, max_bins))
    bins = []
    for b in range(n_bins):
        usable = draw(st.sampled_from([16, 32, 48]))
        memory = draw(st.sampled_from([8, 16]))
        mb, cb = draw(st.sampled_from([0, 0, 1, 2])), draw(st.sampled_from([0, 0, 1, 2]))
        bins.append(Bin(node=draw(st.sampled_from(["a", "b"])) if n_bins > 1 else "a", index=b,
                        usable_cus=usable, free_cus=draw(st.integers(0, usable)), memory=memory,
                        free_memory=draw(st.integers(0, memory)), limit_room=draw(st.integers(0, 2 * memory)),
                        memory_bound=mb, compute_bound=cb, bandwidth_units=3000 * mb + 1000 * cb,
                        group=draw(st.sampled_from([None, "g0", "g1"])), healthy=draw(st.booleans() | st.just(True)),
                        min_slice=draw(st.sampled_from([1, 8, 16])),
                        total_cus=draw(st.sampled_from([None, usable + 8]))))  # + a burst region of 8
    items = []
    for i in range(draw(st.integers(1, max_items))):
        mem = draw(st.integers(1, 8))
        if draw(st.integers(0, 4)) == 0:  # a whole GPU: each bin's total (bins that take none: more than they have)
            cus = tuple(b.total_cus or 1000 for b in bins)
        else:
            cus = tuple(draw(st.sampled_from([4, 8, 16, 24])) for _ in range(n_bins))
        items.append(Item(f"i{i}", draw(st.sampled_from(CLASSES)), cus, mem,
                          mem + draw(st.integers(0, 4)), draw(st.sampled_from([1, 1, 2])), draw(st.booleans())))
    rules = Rules(draw(st.sampled_from([None, 1, 2, 3])), draw(st.sampled_from([None, 1, 3])),
                  {"memory-bound": 0.3, "compute-bound": 0.1}, draw(st.sampled_from([None, 0.7, 1.0])))
    weights = Weights(draw(st.integers(0, 100)), draw(st.integers(0, 100)), draw(st.integers(0, 100)),
                      draw(st.integers(0, 100)), draw(st.booleans()), draw(st.sampled_from([0, 0, 5000])))
    return Problem(tuple(bins), tuple(items), rules, weights, symmetry=draw(st.booleans()))


def independent_check(p: Problem, placement: Placement) -> list[str]:
    """Every rule, written out again from the problem statement (not from the solver module)."""
    errors = []
    for item, where in zip(p.items, placement, strict=True):
        if where is None:
            if not item.optional:
                errors.append(f"{item.key} required but unplaced")
            continue
        if len(where) != item.count or len(set(where)) != item.count:
            errors.append(f"{item.key}: {where} is not {item.count} distinct GPUs")
        if len({p.bins[b].node for b in where}) != 1:
            errors.append(f"{item.key}: spans nodes")
    for b, bn in enumerate(p.bins):
        on = [it for it, where in zip(p.items, placement, strict=True) if where and b in where]
        if not on:
            continue
        if not bn.healthy:
            errors.append(f"bin {b}: unhealthy but used")
        whole = [it for it in on if bn.total_cus is not None and it.cus[b] >= bn.total_cus]
        if whole and (len(on) > 1 or bn.memory_bound + bn.compute_bound > 0):
            errors.append(f"bin {b}: a whole-GPU tenant shares its GPU")
        if not whole and sum(it.cus[b] for it in on) > bn.free_cus:
            errors.append(f"bin {b}: CUs")
        if sum(it.memory for it in on) > bn.free_memory:
            errors.append(f"bin {b}: memory")
        if sum(it.memory_limit for it in on) > bn.limit_room:
            errors.append(f"bin {b}: memory limits")
        new_mb = sum(it.workload_class == "memory-bound" for it in on)
        new_cb = len(on) - new_mb
        r = p.rules
        if r.max_memory_bound is not None and new_mb and bn.memory_bound + new_mb > r.max_memory_bound:
            errors.append(f"bin {b}: memory-bound tenants")
        if r.max_compute_bound is not None and new_cb and bn.compute_bound + new_cb > r.max_compute_bound:
            errors.append(f"bin {b}: compute-bound tenants")
        if r.bandwidth_budget is not None:
            bw = bn.bandwidth_units / 10_000 + sum(r.bandwidth_share[it.workload_class] for it in on)
            if bw > r.bandwidth_budget + 1e-9:
                errors.append(f"bin {b}: bandwidth {bw:.2f}")
    return errors


def every_placement(p: Problem) -> list[Placement]:
    per_item = []
    for item in p.items:
        options: list[tuple[int, ...] | None] = [None]
        options += [c for c in itertools.combinations(range(len(p.bins)), item.count)
                    if len({p.bins[b].node for b in c}) == 1]
        per_item.append(options)
    return list(itertools.product(*per_item))


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(problems(max_bins=4, max_items=6))
def test_solver_never_breaks_capacity_or_class_rules(p: Problem) -> None:
    s = solve(p, time_limit=2.0)
    if s.outcome == "infeasible":
        assert all(w is None for w in s.placement)
        assert not all(it.optional for it in p.items)
        return
    assert independent_check(p, s.placement) == []


@SETTINGS
@given(problems())
def test_solver_objective_is_the_enumerated_optimum(p: Problem) -> None:
    feasible = [pl for pl in every_placement(p) if not independent_check(p, pl)]
    s = solve(p, time_limit=5.0)
    if not feasible:
        assert s.outcome == "infeasible"
        return
    best = max(objective(p, pl) for pl in feasible)
    assert s.outcome in ("optimal", "fallback-greedy")
    assert s.objective == objective(p, s.placement) == best


def test_objective_terms_by_hand() -> None:
    """Two 8-CU tenants, complementary classes, on an empty 16-CU GPU with min slice 16."""
    b = (Bin("a", 0, usable_cus=16, free_cus=16, memory=8, free_memory=8, limit_room=8, min_slice=16),)
    items = (Item("m", "memory-bound", (8,), 1, 1), Item("c", "compute-bound", (8,), 1, 1))
    p = Problem(b, items, Rules(), Weights(packing=1, complementarity=1, fragmentation=1, topology=0, gpu=7))
    # packing: -1 * open cost 1000; gpu: -7; one complementary pair: +300; leftover 0: no fragmentation
    assert objective(p, ((0,), (0,))) == -1000 - 7 + 300
    # only the memory-bound one: leftover 8 < 16 is stranded (-1000), the compute-bound one unplaced
    alone = objective(p, ((0,), None))
    assert alone < -1000 - 7 - 1000


@SETTINGS
@given(problems(max_bins=4, max_items=1))
def test_enumeration_and_cp_sat_agree_on_one_item(p: Problem) -> None:
    """A bind's problem is solved by trying every GPU set; CP-SAT on the same model finds the same optimum."""
    by_enumeration = solve(p, time_limit=5.0)
    by_model = solve(p, time_limit=5.0, enumerate_limit=0)
    assert by_enumeration.outcome == by_model.outcome or {by_enumeration.outcome, by_model.outcome} <= {
        "optimal", "fallback-greedy"}
    assert by_enumeration.objective == by_model.objective
    if by_enumeration.objective is not None:
        assert independent_check(p, by_enumeration.placement) == []


WHOLE_AND_SHARED = Problem(
    (Bin("a", 0, usable_cus=32, free_cus=32, memory=8, free_memory=8, limit_room=16, total_cus=40),),
    (Item("w", "compute-bound", (40,), 1, 1, 1, True), Item("f", "compute-bound", (8,), 1, 1, 1, True)),
    Rules(max_memory_bound=None))


@SETTINGS
@given(problems(max_bins=4, max_items=5))
@example(WHOLE_AND_SHARED)
def test_the_cp_sat_model_itself_obeys_the_rules(p: Problem) -> None:
    """The model's raw answer, before `solve` checks it against the fit rule: its linear rows (capacity in
    whole atoms, whole-GPU exclusivity, memory, class and bandwidth rows) encode the rule exactly."""
    from ortools.sat.python import cp_model

    from extender.core.solver import _Model

    model = _Model(p)
    model.m.maximize(model.objective())
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = 2.0
    solver.parameters.num_workers = 1
    if solver.solve(model.m) in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        assert independent_check(p, model.read(solver)) == []


def _exhausted(p: Problem, hint: Placement | None) -> Placement | None:
    """A one-item problem solved by trying the hint and then every GPU set in order, keeping the first
    best: what `solve` answered before alike GPUs were tried once."""
    item = p.items[0]
    options = [hint] if hint is not None else []
    options += [(c,) for c in itertools.combinations(range(len(p.bins)), item.count)]
    feasible = [placement for placement in options if not violations(p, placement)]
    values = [objective(p, placement) for placement in feasible]
    return feasible[values.index(max(values))] if feasible else None  # index: the first of the best


@st.composite
def alike_gpus(draw: st.DrawFn) -> tuple[Problem, Placement | None]:
    """One item on a node whose GPUs are copies of a few (a bind: a node's empty GPUs look alike), in any order."""
    base = draw(problems(max_bins=3, max_items=1))
    item = base.items[0]
    copies = draw(st.lists(st.integers(0, len(base.bins) - 1), min_size=1, max_size=8))
    bins = []
    for i, k in enumerate(copies):  # some copies differ from their original in one field: not alike
        b = replace(base.bins[k], node="n", index=i, group=draw(st.sampled_from([None, "g0", "g1"])))
        field = draw(st.sampled_from([None, None, "free_cus", "free_memory", "limit_room", "memory_bound",
                                      "compute_bound", "bandwidth_units", "healthy", "min_slice"]))
        if field == "healthy":
            b = replace(b, healthy=not b.healthy)
        elif field is not None:
            b = replace(b, **{field: max(0, getattr(b, field) + draw(st.sampled_from([-8, -1, 1, 8])))})
        bins.append(b)
    cus = tuple(item.cus[k] for k in copies)
    p = replace(base, bins=tuple(bins), items=(replace(item, cus=cus, optional=False),))
    count = min(item.count, len(bins))
    hint = draw(st.none() | st.sampled_from([tuple(c) for c in itertools.combinations(range(len(bins)), count)]))
    return replace(p, items=(replace(p.items[0], count=count),)), None if hint is None else (hint,)


@settings(max_examples=1000, deadline=None)
@given(alike_gpus())
def test_alike_gpus_tried_once_give_the_placement_of_trying_every_gpu(case: tuple[Problem, Placement | None]) -> None:
    """A bind tries each kind of GPU once (the first of its kind): a GPU whose room and share equal an
    earlier one's scores the same, and ties keep the earlier one, so the placement is the same."""
    p, hint = case
    assert _enumerated(p, hint, ENUMERATE_LIMIT) == _exhausted(p, hint)
