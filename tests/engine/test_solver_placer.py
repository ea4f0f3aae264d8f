"""Bind with the CP-SAT placer agrees with filter/prioritize (greedy): on random clusters, every node
that passes filter and gets a score is one where the solver's bind succeeds within the class rules."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.core.assignment import ASSIGNMENT_ANNOTATION, parse_assignment
from extender.core.inventory import INVENTORY_ANNOTATION
from extender.core.ledger import NodeState
from extender.core.policy import Policy, parse_policy
from extender.core.requests import parse_slice_request
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.placement import evaluate
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.engine.solver_placer import SolverPlacer

GIB = 2**30


def gpu(i: int, model: str, numa: int) -> dict:
    cus, xcds, engines, mem = (304, 8, 32, 192 * GIB) if model == "MI300X" else (110, 1, 4, 64 * GIB)
    return {"index": i, "id": f"g{i}-{model}", "model": model, "computeUnits": cus, "xcds": xcds,
            "shaderEngines": engines, "memoryBytes": mem, "healthy": True, "numaNode": numa}


policies = st.builds(
    lambda mb, cb, budget, strategy, rounding: {
        "classes": {"maxMemoryBoundPerGpu": mb, "maxComputeBoundPerGpu": cb, "bandwidthBudget": budget},
        "scoring": {"strategy": strategy}, "rounding": {"mode": rounding},
        "solver": {"timeLimitMs": 50}},
    st.sampled_from([None, 1, 2, 3]), st.sampled_from([None, 1, 2, 4]), st.sampled_from([None, 0.7, 1.0]),
    st.sampled_from(["binpack", "spread"]),
    st.sampled_from(["balanced", "exact", "powerOfTwo"]))

pods = st.builds(
    lambda compute, limit, mem, cls, count: {
        "gpuslice.io/compute": f"{compute}m", "gpuslice.io/computeLimit": f"{max(compute, limit)}m",
        "gpuslice.io/memory": f"{mem}Gi", "gpuslice.io/class": cls, "gpuslice.io/count": str(count)},
    st.integers(20, 700), st.integers(0, 1000), st.integers(1, 90),
    st.sampled_from(["memory-bound", "compute-bound"]), st.sampled_from([1, 1, 1, 2, 4]))

clusters = st.lists(st.tuples(st.integers(1, 8), st.sampled_from(["MI300X", "MI250X"])), min_size=1, max_size=4)


def class_rules_hold(state: NodeState, policy: Policy) -> list[str]:
    rules = policy.classes
    broken = []
    for g in state.gpus:
        mb, cb = g.count("memory-bound"), g.count("compute-bound")
        if rules.maxMemoryBoundPerGpu is not None and mb > rules.maxMemoryBoundPerGpu:
            broken.append(f"gpu {g.info.index}: {mb} memory-bound")
        if rules.maxComputeBoundPerGpu is not None and cb > rules.maxComputeBoundPerGpu:
            broken.append(f"gpu {g.info.index}: {cb} compute-bound")
        bw = sum(rules.bandwidthShare.get(s.workload_class, 0.0) for s in g.slices)
        if rules.bandwidthBudget is not None and bw > rules.bandwidthBudget + 1e-9:
            broken.append(f"gpu {g.info.index}: bandwidth {bw}")
        if g.memory_used > g.info.memoryBytes:
            broken.append(f"gpu {g.info.index}: memory")
    return broken


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies, clusters, st.lists(pods, min_size=1, max_size=14))
def test_bind_agrees_with_filter_and_prioritize(policy_doc: dict, shape: list, requests: list) -> None:
    policy = parse_policy(policy_doc)
    cluster = MemoryCluster()
    for n, (count, model) in enumerate(shape):
        inv = [gpu(i, model, i * 2 // count) for i in range(count)]
        cluster.add_node(NodeView(f"n{n}", annotations={INVENTORY_ANNOTATION: json.dumps(inv)}))
    placer = SolverPlacer()
    engine = Engine(cluster, PolicyStore(policy), bind_placer=placer)
    engine.sync()
    names = [f"n{n}" for n in range(len(shape))]
    for k, asked in enumerate(requests):
        pod = PodView(f"u{k}", "default", f"p{k}", annotations=asked)
        cluster.add_pod(pod)
        req = parse_slice_request({}, asked, policy)
        assert req is not None
        passed = engine.filter(pod, names=names).passed
        scores = dict(engine.prioritize(pod, names=names))
        for name in passed:
            state = engine.ledger.node(name)
            assert state is not None
            fit = placer(req, state, policy)
            assert fit.ok, fit.reason  # every node filter passes is one the solver can bind on
            assert len({c.gpu.info.index for c in fit.choices}) == req.count
        for name in names:
            if name not in passed:
                assert scores[name] == 0
        if not passed:
            continue
        best = max(passed, key=lambda n: (scores[n], n))
        assert engine.bind("default", f"p{k}", f"u{k}", best) == ""
        assignment = parse_assignment(cluster.get_pod("default", f"p{k}").annotations[ASSIGNMENT_ANNOTATION])
        assert len(assignment.gpus) == req.count
        for name in names:
            state = engine.ledger.node(name)
            assert state is not None
            assert class_rules_hold(state, policy) == []
    assert placer.rejected_choices == 0


def test_solver_disabled_is_greedy() -> None:
    policy = parse_policy({"solver": {"enabled": False}})
    cluster = MemoryCluster()
    cluster.add_node(NodeView("n0", allocatable={"amd.com/gpu": "4"}))
    engine = Engine(cluster, PolicyStore(policy))
    engine.sync()
    state = engine.ledger.node("n0")
    req = parse_slice_request({}, {"gpuslice.io/compute": "250m", "gpuslice.io/memory": "8Gi"}, policy)
    assert req is not None and state is not None
    placer = SolverPlacer()
    assert placer(req, state, policy) == evaluate(req, state, policy)
    assert placer.stats.count == 0


def test_solver_binds_next_to_the_complementary_class() -> None:
    """Binpack and complementarity both say: the compute-bound pod joins the memory-bound one."""
    policy = parse_policy({"solver": {"timeLimitMs": 200}})
    cluster = MemoryCluster()
    cluster.add_node(NodeView("n0", allocatable={"amd.com/gpu": "2"}))
    placer = SolverPlacer()
    engine = Engine(cluster, PolicyStore(policy), bind_placer=placer)
    engine.sync()
    first = {"gpuslice.io/compute": "250m", "gpuslice.io/memory": "20Gi"}
    for uid, cls in (("a", "memory-bound"), ("b", "compute-bound")):
        pod = PodView(uid, "default", uid, annotations={**first, "gpuslice.io/class": cls})
        cluster.add_pod(pod)
        assert engine.filter(pod, names=["n0"]).passed == ["n0"]
        assert engine.bind("default", uid, uid, "n0") == ""
    state = engine.ledger.node("n0")
    assert state is not None
    assert [(g.count("memory-bound"), g.count("compute-bound")) for g in state.gpus] in ([(1, 1), (0, 0)],
                                                                                         [(0, 0), (1, 1)])
    assert placer.stats.count == 2 and placer.stats.outcomes["optimal"] == 2
