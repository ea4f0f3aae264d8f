"""One fit rule (core/fit.py), and every path that decides a per-GPU fit held to it: for random GPU states
(tenants placed by the engine, legacy masks read back from pods, whole GPUs, unhealthy GPUs, 8-, 4- and
1-XCD GPUs) and random requests and policies, each path's verdict is the rule's:

- placement (`gpu_reject_reason`, the cached `_Limits.fits` behind filter and bind);
- the vectorised filter (`Columns.code`, the rule as numpy columns);
- the solver's feasibility (`_fits` on the bins `bins_for_node` builds: the model's variables and greedy);
- the ledger's check of a new reservation (it accepts the CU sets placement lays out exactly when the rule
  says the slice fits, and refuses a valid set when a memory or class rule says no);
- the simulator's GPU screen (the rule's health, capacity and memory tests; tests/sim/test_atoms_replay.py).
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.core.assignment import Assignment, GpuAssignment
from extender.core.errors import LedgerConflict
from extender.core.fit import Demand, Rules, verdict
from extender.core.inventory import GpuInfo
from extender.core.ledger import Ledger, NodeState, PodRef
from extender.core.policy import Policy, parse_policy
from extender.core.requests import SliceRequest
from extender.core.solver import Problem, _fits, _Load, bins_for_node, item_for
from extender.engine.placement import _Limits, build_assignment, choose_slice, evaluate, gpu_reject_reason, needed_cus
from extender.engine.vectorised import CATEGORIES, Columns

GI = 2**30
CLASSES = ("memory-bound", "compute-bound")
# (model, CUs, XCDs): an MI300X, an MI300X in a 4-XCD partition, an MI250X GCD (one XCD)
SHAPES = [("MI300X", 304, 8), ("MI300X", 152, 4), ("MI250X", 110, 1)]


def request(millis: int, limit_extra: int, gib: int, limit_gib: int, cls: str) -> SliceRequest:
    return SliceRequest(vendor="amd", compute_millis=millis, compute_limit_millis=min(1000, millis + limit_extra),
                        memory_bytes=gib * GI, memory_limit_bytes=(gib + limit_gib) * GI, count=1,
                        workload_class=cls)  # type: ignore[arg-type]


requests = st.builds(request, st.one_of(st.integers(1, 1000), st.sampled_from([10, 100, 250, 900, 950, 1000])),
                     st.sampled_from([0, 0, 100, 1000]), st.integers(1, 100), st.sampled_from([0, 0, 30]),
                     st.sampled_from(CLASSES))
policies = st.builds(
    lambda rounding, minimum, frac, over, mb, cb, budget: parse_policy({
        "rounding": {"mode": rounding, "minComputeUnits": minimum}, "burst": {"sharedFraction": frac},
        "overcommit": {"memory": over},
        "classes": {"maxMemoryBoundPerGpu": mb, "maxComputeBoundPerGpu": cb, "bandwidthBudget": budget}}),
    st.sampled_from(["balanced", "exact", "powerOfTwo"]), st.sampled_from([1, 8, 30]),
    st.sampled_from([0.0, 0.125, 0.5]), st.sampled_from([1.0, 1.5]), st.sampled_from([None, 1, 2]),
    st.sampled_from([None, 2]), st.sampled_from([None, 0.7, 1.0]))


@st.composite
def nodes(draw: st.DrawFn, policy: Policy) -> tuple[Ledger, NodeState]:
    infos = []
    for i in range(draw(st.integers(1, 4))):
        model, cus, xcds = draw(st.sampled_from(SHAPES))
        memory = draw(st.sampled_from([64, 192])) * GI
        infos.append(GpuInfo(index=i, id=f"g{i}", model=model, computeUnits=cus, xcds=xcds, shaderEngines=4 * xcds,
                             memoryBytes=memory, healthy=draw(st.booleans() | st.just(True))))
    ledger = Ledger(policy.burst.sharedFraction, policy.overcommit.memory, rules=Rules.from_policy(policy))
    ledger.set_node("n", infos)
    for k in range(draw(st.integers(0, 6))):
        pod = PodRef(f"t{k}", "ns", f"t{k}")
        state = ledger.node("n")
        assert state is not None
        if draw(st.booleans()):  # a tenant the engine places
            req = draw(requests)
            fit = evaluate(req, state, policy)
            if fit.ok:
                ledger.reserve(pod, build_assignment(req, "n", fit.choices, policy), req.workload_class,
                               req.compute_millis, None, new=True)
        else:  # a legacy assignment read back from a pod: any free bits, complete or not
            gpu = state.gpus[draw(st.integers(0, len(state.gpus) - 1))]
            free = sorted(gpu.free_cus)
            if not free:
                continue
            cus = frozenset(draw(st.lists(st.sampled_from(free), min_size=1, max_size=40)))
            mem = draw(st.integers(1, 16)) * GI
            if mem > gpu.memory_free:
                continue
            ga = GpuAssignment(gpu.info.index, gpu.info.id, cus, frozenset(), mem, mem)
            try:
                legacy = Assignment("n", (ga,), draw(st.sampled_from(CLASSES)), "old", "2025-01-01T00:00:00Z")
                ledger.reserve(pod, legacy, legacy.workload_class, 100, None)
            except LedgerConflict:
                pass
    state = ledger.node("n")
    assert state is not None
    return ledger, state


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), policy=policies, reqs=st.lists(requests, min_size=1, max_size=4))
def test_every_path_gives_the_rules_verdict(data: st.DataObject, policy: Policy, reqs: list[SliceRequest]) -> None:
    ledger, state = data.draw(nodes(policy))
    rules = Rules.from_policy(policy)
    slot = int(ledger.gpu_index.slots_of(["n"]).slots[0])
    for req in reqs:
        cols = Columns(req, policy, ledger.gpu_index)
        bins = bins_for_node(state, policy)
        problem = Problem(bins, (item_for("x", req, state, policy),), rules)
        limits = _Limits(req, policy)
        for pos, gpu in enumerate(state.gpus):
            n = needed_cus(req, gpu, policy)
            rule = verdict(gpu.room(policy.overcommit.memory, rules),
                           Demand(n, req.memory_bytes, req.memory_limit_bytes, req.workload_class), rules)
            category = "" if rule is None else rule.category
            # placement
            reason = gpu_reject_reason(req, gpu, policy)
            assert (reason[0] if reason else "") == category
            assert limits.fits(gpu, n) == (rule is None)
            # vectorised filter
            assert CATEGORIES[int(cols.code[slot, pos])] == category
            assert bool(cols.ok[slot, pos]) == (rule is None)
            # solver
            assert _fits(problem, pos, problem.items[0], _Load()) == (rule is None)
            # ledger: the laid-out sets of a fitting slice are accepted, a valid set of a failing one refused
            chosen = choose_slice(req, gpu, n)
            if category == "compute":
                assert chosen is None  # no XCC-complete set of n free CUs exists
            elif category != "unhealthy":
                assert chosen is not None, (rule, n, sorted(gpu.free_cus))
            if chosen is None or category == "unhealthy":
                continue
            cus, burst = chosen
            ga = GpuAssignment(gpu.info.index, gpu.info.id, cus, burst, req.memory_bytes, req.memory_limit_bytes)
            a = Assignment("n", (ga,), req.workload_class, policy.version, "2026-01-01T00:00:00Z")
            try:
                ledger.reserve(PodRef("new", "ns", "new"), a, req.workload_class, req.compute_millis, 30.0)
            except LedgerConflict:
                assert rule is not None
            else:
                assert rule is None
                ledger.release("new")
        assert ledger.node("n") is state or ledger.node("n") == state


def test_a_whole_gpu_request_fits_only_an_empty_gpu_and_nothing_joins_it() -> None:
    rules = Rules(max_memory_bound=None)
    empty = GpuInfo(0, "g", "MI300X", 304, 8, 32, 192 * GI, True)
    ledger = Ledger(0.125, rules=rules)
    ledger.set_node("n", [empty, replace(empty, index=1, id="h")])
    gpu = ledger.node("n").gpus[0]  # type: ignore[union-attr]
    room = gpu.room(1.0, rules)
    assert verdict(room, Demand(304, GI, GI, "memory-bound"), rules) is None
    assert room.free_cus == 272  # the burst region (32 CUs) is never guaranteed to a fractional tenant
    assert verdict(room, Demand(280, GI, GI, "memory-bound"), rules).category == "compute"  # type: ignore[union-attr]
    whole = GpuAssignment(0, "g", frozenset(range(304)), frozenset(), GI, GI)
    ledger.reserve(PodRef("w", "ns", "w"), Assignment("n", (whole,), "memory-bound", "v", "t"), "memory-bound", 1000,
                   30.0)
    after = ledger.node("n").gpus[0].room(1.0, rules)  # type: ignore[union-attr]
    assert after.free_cus == 0
    assert verdict(after, Demand(8, GI, GI, "compute-bound"), rules).category == "compute"  # type: ignore[union-attr]
    assert verdict(after, Demand(304, GI, GI, "compute-bound"), rules).category == "compute"  # type: ignore[union-attr]
