"""binpack fills used GPUs first for every class: a tenant the class rules allow beside others never
opens an empty GPU while a used one has room (complementarity ranks used GPUs; it never makes an empty
one look better than sharing), and spread still prefers empty GPUs."""

import pytest

from extender.core.policy import Policy
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.engine.solver_placer import SolverPlacer


def _engine(policy: Policy, solver: bool) -> tuple[MemoryCluster, Engine]:
    cluster = MemoryCluster()
    cluster.add_node(NodeView("n0", allocatable={"amd.com/gpu": "4"}))
    engine = Engine(cluster, PolicyStore(policy), bind_placer=SolverPlacer() if solver else None)
    engine.sync()
    return cluster, engine


def _place(cluster: MemoryCluster, engine: Engine, uid: str, cls: str) -> int:
    pod = PodView(uid, "default", uid, annotations={"gpuslice.io/compute": "200m", "gpuslice.io/memory": "40Gi",
                                                   "gpuslice.io/class": cls})
    cluster.add_pod(pod)
    assert engine.filter(pod, names=["n0"]).passed == ["n0"]
    assert engine.bind("default", uid, uid, "n0") == ""
    (gpu,) = engine.assignment_for(uid).gpus  # type: ignore[union-attr]
    return gpu.index


@pytest.mark.parametrize("solver", [False, True], ids=["greedy", "cp-sat"])
@pytest.mark.parametrize("cls", ["memory-bound", "compute-bound"])
def test_binpack_shares_a_used_gpu_before_opening_an_empty_one(cls: str, solver: bool) -> None:
    cluster, engine = _engine(Policy(), solver)
    first = _place(cluster, engine, "a", cls)
    assert _place(cluster, engine, "b", cls) == first  # the class rules allow two; the GPU has room


@pytest.mark.parametrize("solver", [False, True], ids=["greedy", "cp-sat"])
def test_binpack_still_pairs_memory_with_compute_bound_when_it_can(solver: bool) -> None:
    cluster, engine = _engine(Policy(), solver)
    mem = _place(cluster, engine, "m1", "memory-bound")
    comp = _place(cluster, engine, "c1", "compute-bound")
    assert comp == mem
    assert _place(cluster, engine, "m2", "memory-bound") == mem  # 2 memory-bound allowed, room left


def test_binpack_respects_the_class_limit() -> None:
    cluster, engine = _engine(Policy(), False)
    first = _place(cluster, engine, "a", "memory-bound")
    assert _place(cluster, engine, "b", "memory-bound") == first
    assert _place(cluster, engine, "c", "memory-bound") != first  # maxMemoryBoundPerGpu: 2


def test_spread_still_opens_empty_gpus() -> None:
    policy = Policy.model_validate({"scoring": {"strategy": "spread"}})
    cluster, engine = _engine(policy, False)
    assert _place(cluster, engine, "a", "memory-bound") != _place(cluster, engine, "b", "memory-bound")
