"""The placement hot path (count-based `check`, run-based CU choice) agrees with the straightforward
set-based computation built from the public per-GPU rules."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.layout import choose_burst, choose_cus
from extender.core.ledger import Ledger, NodeState, PodRef
from extender.core.policy import Policy, parse_policy
from extender.core.requests import SliceRequest
from extender.engine.demo import mi300x_inventory
from extender.engine.placement import (
    build_assignment,
    check,
    evaluate,
    gpu_reject_reason,
    gpu_score,
    needed_cus,
    rank,
)

CLASSES = ("memory-bound", "compute-bound")


def request(millis: int, limit_extra: int, gib: int, cls: str, count: int) -> SliceRequest:
    return SliceRequest(vendor="amd", compute_millis=millis, compute_limit_millis=min(1000, millis + limit_extra),
                        memory_bytes=gib * 2**30, memory_limit_bytes=(gib + 4) * 2**30, count=count,
                        workload_class=cls)  # type: ignore[arg-type]


requests = st.builds(request, st.integers(10, 900), st.sampled_from([0, 0, 125, 500]), st.integers(1, 120),
                     st.sampled_from(CLASSES), st.sampled_from([1, 1, 1, 2, 4, 8]))
policies = st.builds(
    lambda rounding, max_mb, budget, strategy: parse_policy({
        "rounding": {"mode": rounding},
        "classes": {"maxMemoryBoundPerGpu": max_mb, "bandwidthBudget": budget},
        "scoring": {"strategy": strategy}}),
    st.sampled_from(["balanced", "exact", "powerOfTwo"]),
    st.sampled_from([None, 1, 2]), st.sampled_from([None, 0.8, 1.0]), st.sampled_from(["binpack", "spread"]))


def node_with(tenants: list[SliceRequest], policy: Policy, unhealthy: int | None) -> NodeState:
    ledger = Ledger(policy.burst.sharedFraction, policy.overcommit.memory)
    gpus = mi300x_inventory("n")
    if unhealthy is not None:
        gpus[unhealthy] = replace(gpus[unhealthy], healthy=False)
    ledger.set_node("n", gpus)
    for i, req in enumerate(tenants):
        fit = evaluate(req, ledger.node("n"), policy)
        if fit.ok:
            ledger.reserve(PodRef(f"u{i}", "ns", f"p{i}"), build_assignment(req, "n", fit.choices, policy),
                           req.workload_class, req.compute_millis, None)
    return ledger.node("n")


def reference_candidates(req: SliceRequest, state: NodeState, policy: Policy) -> dict[int, tuple]:
    out = {}
    for gpu in state.gpus:
        if gpu_reject_reason(req, gpu, policy) is not None:
            continue
        n = needed_cus(req, gpu, policy)
        if n >= gpu.info.computeUnits:  # whole GPU: every CU, no burst
            cus, burst = frozenset(range(gpu.info.computeUnits)), frozenset()
        else:
            cus = choose_cus(gpu.free_cus, n, gpu.info.xcds)
            burst = choose_burst(gpu.burst_cus, req.limit_cus(gpu.info.computeUnits) - n, gpu.info.xcds)
        assert cus is not None
        out[gpu.info.index] = (cus, burst, gpu_score(req, gpu, cus, policy))
    return out


@settings(max_examples=120, deadline=None)
@given(tenants=st.lists(requests, max_size=14), req=requests, policy=policies,
       unhealthy=st.one_of(st.none(), st.integers(0, 7)))
def test_fast_paths_agree_with_the_set_based_rules(tenants: list[SliceRequest], req: SliceRequest, policy: Policy,
                                                   unhealthy: int | None) -> None:
    state = node_with(tenants, policy, unhealthy)
    fit = evaluate(req, state, policy)
    quick = check(req, state, policy)
    ranked = rank(req, state, policy)
    assert (ranked.ok, ranked.reason, ranked.category, ranked.score) == (fit.ok, fit.reason, fit.category, fit.score)
    ref = reference_candidates(req, state, policy)
    assert fit.ok == quick.ok == (len(ref) >= req.count)
    assert (fit.reason, fit.category) == (quick.reason, quick.category)
    if not fit.ok:
        assert fit.reason.startswith(f"{len(ref)}/8 GPUs can take the slice")
        return
    assert len(fit.choices) == req.count
    for c in fit.choices:
        cus, burst, score = ref[c.gpu.info.index]
        assert (c.cus, c.burst) == (cus, burst)
        assert math.isclose(c.score, score, abs_tol=1e-12)
    if req.count == 1:  # the best-scored GPU, lowest index on ties
        best = max(ref, key=lambda i: (ref[i][2], -i))
        assert fit.choices[0].gpu.info.index == best


@settings(max_examples=200, deadline=None)
@given(free=st.frozensets(st.integers(0, 127), max_size=128), n=st.integers(1, 64), min_slice=st.integers(1, 40))
def test_fragmentation_after_cut_matches_the_set_computation(free: frozenset[int], n: int, min_slice: int) -> None:
    from extender.core.layout import best_fit_run, fragmentation, fragmentation_after_cut, runs

    rs = runs(free)
    index = best_fit_run(rs, n)
    if index is None:
        assert all(length < n for _, length in rs)
        return
    start = rs[index][0]
    taken = frozenset(range(start, start + n))
    assert taken == choose_cus(free, n, 1)
    assert fragmentation_after_cut(rs, index, n, min_slice) == fragmentation(free - taken, min_slice)
