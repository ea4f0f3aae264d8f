from __future__ import annotations

from extender.core.solver import (
    Bin,
    Item,
    Problem,
    Rules,
    SolverStats,
    Weights,
    gpus_used,
    greedy,
    objective,
    solve,
    violations,
)

GIB = 2**30


def bins(n: int, node: str = "n0", groups: list[str | None] | None = None, **kw: object) -> tuple[Bin, ...]:
    groups = groups or [None] * n
    base = {"usable_cus": 272, "free_cus": 272, "memory": 192 * GIB, "free_memory": 192 * GIB,
            "limit_room": 192 * GIB, "min_slice": 32}
    base.update(kw)
    return tuple(Bin(node=node, index=i, group=groups[i], **base) for i in range(n))  # type: ignore[arg-type]


def item(key: str, cls: str, cus: int, mem: int, n_bins: int, count: int = 1, optional: bool = False) -> Item:
    return Item(key, cls, (cus,) * n_bins, mem * GIB, mem * GIB, count, optional)


def test_class_rule_forces_a_second_gpu() -> None:
    items = tuple(item(f"m{i}", "memory-bound", 32, 10, 3) for i in range(3))
    p = Problem(bins(3), items, Rules(max_memory_bound=2))
    s = solve(p, 1.0)
    assert s.outcome == "optimal" and violations(p, s.placement) == []
    assert gpus_used(p, s.placement) == 2


def test_bandwidth_budget_is_a_hard_rule() -> None:
    rules = Rules(max_memory_bound=None, bandwidth_budget=0.7)
    items = (item("m", "memory-bound", 32, 10, 2), item("c", "compute-bound", 32, 10, 2),
             item("m2", "memory-bound", 32, 10, 2))
    p = Problem(bins(2), items, rules)
    s = solve(p, 1.0)
    assert violations(p, s.placement) == []
    assert s.placement[0] != s.placement[2]


def test_infeasible_required_item_is_reported() -> None:
    p = Problem(bins(1), (item("big", "compute-bound", 300, 10, 1),))
    s = solve(p, 0.2)
    assert s.outcome == "infeasible" and s.placement == (None,) and s.objective is None


def test_optional_items_that_do_not_fit_stay_unplaced() -> None:
    items = (item("a", "compute-bound", 200, 10, 1, optional=True), item("b", "compute-bound", 200, 10, 1,
                                                                          optional=True))
    p = Problem(bins(1), items)
    s = solve(p, 1.0)
    assert sorted(x is None for x in s.placement) == [False, True]


def test_multi_gpu_pod_stays_on_one_node_and_prefers_one_hive() -> None:
    b = bins(4, "a", groups=["h0", "h1", "h0", "h1"]) + bins(1, "b")
    b = tuple(Bin(**{**x.__dict__, "index": i}) for i, x in enumerate(b))
    pod = Item("p", "compute-bound", (64,) * 5, 10 * GIB, 10 * GIB, count=2)
    p = Problem(b, (pod,), weights=Weights(topology=1000))
    s = solve(p, 1.0)
    where = s.placement[0]
    assert where is not None and len(where) == 2
    assert {b[i].node for i in where} == {"a"} and len({b[i].group for i in where}) == 1


def test_solver_is_never_worse_than_its_greedy_hint() -> None:
    items = tuple(item(f"w{i}", "memory-bound" if i % 3 else "compute-bound", 32 * (1 + i % 4), 20 + 7 * i, 6)
                  for i in range(10))
    p = Problem(bins(6), items, weights=Weights(gpu=10**6))
    hint = greedy(p)
    s = solve(p, 0.5, hint=hint)
    assert objective(p, s.placement) >= objective(p, hint)


def test_stats_record_outcomes_and_a_cumulative_histogram() -> None:
    stats = SolverStats(buckets=(0.01, 0.1))
    stats.record("optimal", 0.005)
    stats.record("fallback-greedy", 0.05)
    stats.record("feasible", 3.0)
    rows, total = stats.histogram()
    assert rows == [("0.01", 1), ("0.1", 2), ("+Inf", 3)]
    assert abs(total - 3.055) < 1e-9
    assert stats.outcomes["optimal"] == 1 and stats.outcomes["infeasible"] == 0
