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
