"""Every CU set the product hands out is XCC-complete (DESIGN hardware rule): random arrival and departure
sequences on 8-XCD and 1-XCD GPUs through the real code — the extender engine (filter, greedy or CP-SAT
bind) and the planner (CP-SAT model, exact CUs from the ledger) — with random policies (every rounding
mode, tiny minimums, burst regions), legacy incomplete masks already on the GPUs, whole-GPU requests and
fragmentation. Each assignment is checked with `atoms.is_xcc_complete`: the guarantee and the guarantee ∪
burst of every GPU, unless the GPU is handed out whole (every CU, no burst, so the agent sets no mask).
The simulator's path is tests/sim/test_atoms_replay.py."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, GpuAssignment, parse_assignment
from extender.core.atoms import is_xcc_complete
from extender.core.inventory import INVENTORY_ANNOTATION, GpuInfo, format_inventory
from extender.core.ledger import NodeState, PodRef
from extender.core.policy import Policy, parse_policy
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.planner import parse_cluster, parse_workloads, plan
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.engine.solver_placer import SolverPlacer

GI = 2**30
CLASSES = ("memory-bound", "compute-bound")
MODELS = {"MI300X": (304, 8, 192), "MI250X": (110, 1, 64)}


def check_handed_out(a: Assignment, state: NodeState) -> None:
    for g in a.gpus:
        gpu = state.gpu(g.index)
        assert gpu is not None
        total, xcds = gpu.info.computeUnits, gpu.info.xcds
        if len(g.cus) == total:  # a whole GPU: every CU, no burst, no mask; nobody else on it
            assert not g.burstCus
            assert [s.pod.uid for s in gpu.slices] == [s.pod.uid for s in gpu.slices if s.cus == g.cus]
            continue
        assert is_xcc_complete(g.cus, xcds), (sorted(g.cus), xcds)
        assert is_xcc_complete(g.cus | g.burstCus, xcds), (sorted(g.cus), sorted(g.burstCus), xcds)


def inventory(node: str, model: str, n: int) -> list[GpuInfo]:
    cus, xcds, gib = MODELS[model]
    return [GpuInfo(index=i, id=f"{node}-{i}", model=model, computeUnits=cus, xcds=xcds, shaderEngines=4 * xcds,
                    memoryBytes=gib * GI, healthy=True) for i in range(n)]


policies = st.builds(
    lambda rounding, minimum, frac, mb, solver: parse_policy({
        "rounding": {"mode": rounding, "minComputeUnits": minimum}, "burst": {"sharedFraction": frac},
        "classes": {"maxMemoryBoundPerGpu": mb}, "solver": {"enabled": solver, "timeLimitMs": 20}}),
    st.sampled_from(["exact", "balanced", "powerOfTwo"]), st.sampled_from([1, 2, 4, 8, 30]),
    st.sampled_from([0.0, 0.125, 0.3]), st.sampled_from([None, 3]), st.booleans())
slices = st.fixed_dictionaries({
    "compute": st.one_of(st.integers(1, 1000), st.sampled_from([5, 13, 100, 900, 1000])),
    "extra": st.sampled_from([0, 0, 50, 400, 1000]),
    "memory": st.integers(1, 30), "class": st.sampled_from(CLASSES), "count": st.sampled_from([1, 1, 1, 2])})
# a legacy tenant: bits that the old code could hand out (one XCD's stride, a short run), on gpu 0
legacy = st.tuples(st.sampled_from(["stride", "run"]), st.integers(0, 7), st.integers(1, 12))


def legacy_assignment(node: str, kind: str, start: int, size: int, info: GpuInfo, k: int) -> Assignment:
    base = 64 * k  # the k-th legacy tenant's own window of bits, so legacy tenants never overlap
    if kind == "stride":
        cus = frozenset(range(base + start % 8, base + 64, 8)[:size])
    else:
        cus = frozenset(range(base + start, base + start + size))
    ga = GpuAssignment(info.index, info.id, cus, frozenset(), GI, GI)
    return Assignment(node, (ga,), "compute-bound", "old", "2025-01-01T00:00:00Z")


def annotations(s: dict) -> dict[str, str]:
    return {"gpuslice.io/compute": f"{s['compute']}m",
            "gpuslice.io/computeLimit": f"{min(1000, s['compute'] + s['extra'])}m",
            "gpuslice.io/memory": f"{s['memory']}Gi", "gpuslice.io/class": s["class"],
            "gpuslice.io/count": str(s["count"])}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(policy=policies, olds=st.lists(legacy, max_size=3),
       ops=st.lists(st.one_of(st.tuples(st.just("arrive"), slices, st.integers(0, 3)),
                              st.tuples(st.just("depart"), st.integers(0, 50))), min_size=1, max_size=40))
def test_engine_hands_out_only_complete_masks(policy: Policy, olds: list[tuple[str, int, int]],
                                              ops: list[tuple]) -> None:
    cluster = MemoryCluster()
    nodes = {"a": inventory("a", "MI300X", 2), "b": inventory("b", "MI250X", 2), "c": inventory("c", "MI300X", 1)}
    for name, gpus in nodes.items():
        cluster.add_node(NodeView(name, annotations={INVENTORY_ANNOTATION: format_inventory(gpus)}))
    for k, (kind, start, size) in enumerate(olds):  # pods running since before the atom rule
        a = legacy_assignment("a", kind, start, size, nodes["a"][0], k)
        cluster.add_pod(PodView(f"old{k}", "ns", f"old{k}", node_name="a", phase="Running",
                                annotations={ASSIGNMENT_ANNOTATION: a.to_json()}))
    engine = Engine(cluster, PolicyStore(policy), bind_placer=SolverPlacer() if policy.solver.enabled else None)
    engine.sync()
    running: list[str] = []
    for n, op in enumerate(ops):
        if op[0] == "depart":
            if running:
                uid = running.pop(op[1] % len(running))
                cluster.remove_pod(uid)
                engine.forget_pod(uid)
            continue
        _, s, pick = op
        pod = PodView(f"p{n}", "ns", f"p{n}", annotations=annotations(s))
        cluster.add_pod(pod)
        passed = engine.filter(pod, names=list(nodes)).passed
        if not passed:
            cluster.remove_pod(pod.uid)
            continue
        node = passed[pick % len(passed)]
        assert engine.bind("ns", pod.name, pod.uid, node) == ""
        running.append(pod.uid)
        a = engine.assignment_for(pod.uid)
        state = engine.ledger.node(node)
        assert a is not None and state is not None
        assert parse_assignment(a.to_json()) == a
        check_handed_out(a, state)
    # legacy tenants stay counted: nothing new ever got one of their CUs
    state = engine.ledger.node("a")
    assert state is not None
    for k in range(len(olds)):
        old = state.pods[f"old{k}"].assignment.gpus[0]  # every legacy tenant is counted
        gpu = state.gpu(old.index)
        assert gpu is not None
        assert all(not (old.cus & (s.cus | s.burst)) for s in gpu.slices if s.pod.uid != f"old{k}")


workload_specs = st.lists(st.fixed_dictionaries({
    "compute": st.one_of(st.integers(1, 1000), st.sampled_from([5, 100, 1000])),
    "extra": st.sampled_from([0, 200, 1000]), "memory": st.integers(1, 40), "class": st.sampled_from(CLASSES),
    "count": st.sampled_from([1, 1, 2]), "replicas": st.integers(1, 4)}), min_size=1, max_size=5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, specs=workload_specs, olds=st.lists(legacy, max_size=2))
def test_plan_hands_out_only_complete_masks(policy: Policy, specs: list[dict],
                                            olds: list[tuple[str, int, int]]) -> None:
    nodes = parse_cluster({"nodes": [{"name": "a", "gpus": 2, "model": "MI300X"},
                                     {"name": "b", "gpus": 2, "model": "MI250X"}]}, policy)
    existing = [(PodRef(f"old{k}", "ns", f"old{k}"), legacy_assignment("a", kind, start, size, nodes["a"][0], k), 100)
                for k, (kind, start, size) in enumerate(olds)]
    workloads, bad = parse_workloads({"workloads": [
        {"name": f"w{k}", "replicas": s["replicas"], "compute": f"{s['compute']}m",
         "computeLimit": f"{min(1000, s['compute'] + s['extra'])}m", "memory": f"{s['memory']}Gi",
         "class": s["class"], "count": s["count"]} for k, s in enumerate(specs)]}, policy)
    assert not bad
    result = plan(nodes, workloads, policy, time_limit=0.5, existing=existing)
    states = {s.name: s for s in result.nodes}
    for p in result.placements:
        check_handed_out(p.assignment, states[p.assignment.node])
    assert len(result.placements) + sum(1 for u in result.unplaced if u.replica is not None) + sum(
        w.replicas for w in workloads if any(u.workload == w.name and u.replica is None for u in result.unplaced)
    ) == sum(w.replicas for w in workloads)
