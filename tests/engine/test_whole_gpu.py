"""A 1000m request takes an empty GPU whole (burst region included) and nothing else fits beside it."""

from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine


def _pod(uid: str, compute: str) -> PodView:
    return PodView(uid, "default", uid, annotations={"gpuslice.io/compute": compute, "gpuslice.io/memory": "8Gi"})


def test_whole_gpu_request_fits_an_empty_gpu_exclusively() -> None:
    cluster = MemoryCluster()
    cluster.add_node(NodeView("n0", allocatable={"amd.com/gpu": "1"}))
    engine = Engine(cluster, PolicyStore())
    engine.sync()
    whole = _pod("w", "1000m")
    assert engine.filter(whole, names=["n0"]).passed == ["n0"]
    assert engine.bind("default", "w", "w", "n0") == ""
    a = engine.assignment_for("w")
    assert a is not None and len(a.gpus[0].cus) == 304
    small = _pod("s", "100m")
    assert "n0" in engine.filter(small, names=["n0"]).failed


def test_whole_gpu_request_does_not_fit_a_shared_gpu() -> None:
    cluster = MemoryCluster()
    cluster.add_node(NodeView("n0", allocatable={"amd.com/gpu": "1"}))
    engine = Engine(cluster, PolicyStore())
    engine.sync()
    engine.filter(_pod("s", "100m"), names=["n0"])
    assert engine.bind("default", "s", "s", "n0") == ""
    assert "n0" in engine.filter(_pod("w", "1000m"), names=["n0"]).failed


def test_whole_gpus_bind_through_the_solver_placer_with_any_count() -> None:
    from extender.engine.solver_placer import SolverPlacer

    cluster = MemoryCluster()
    cluster.add_node(NodeView("n0", allocatable={"amd.com/gpu": "3"}))
    placer = SolverPlacer()
    engine = Engine(cluster, PolicyStore(), bind_placer=placer)
    engine.sync()
    pair = PodView("w", "default", "w", annotations={"gpuslice.io/compute": "1000m", "gpuslice.io/memory": "8Gi",
                                                     "gpuslice.io/count": "2", "gpuslice.io/computeLimit": "1000m"})
    cluster.add_pod(pair)
    assert engine.filter(pair, names=["n0"]).passed == ["n0"]
    assert engine.bind("default", "w", "w", "n0") == ""
    a = engine.assignment_for("w")
    assert a is not None and [len(g.cus) for g in a.gpus] == [304, 304] and not any(g.burstCus for g in a.gpus)
    assert placer.stats.outcomes["infeasible"] == 0  # the model places whole GPUs itself (no greedy rescue)
    # the one GPU left takes fractional tenants; the two whole ones take none
    small = _pod("s", "100m")
    cluster.add_pod(small)
    assert engine.bind("default", "s", "s", "n0") == ""
    (g,) = engine.assignment_for("s").gpus  # type: ignore[union-attr]
    assert g.index not in {x.index for x in a.gpus}
