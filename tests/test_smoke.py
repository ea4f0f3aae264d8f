from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine


def test_filter_bind_roundtrip() -> None:
    cluster = MemoryCluster()
    cluster.add_node(NodeView("n0", allocatable={"amd.com/gpu": "8"}))
    engine = Engine(cluster, PolicyStore())
    engine.sync()
    pod = PodView("u1", "default", "p1", annotations={"gpuslice.io/compute": "250m", "gpuslice.io/memory": "8Gi"})
    assert engine.filter(pod, names=["n0"]).passed == ["n0"]
    assert engine.bind("default", "p1", "u1", "n0") == ""
    assert engine.assignment_for("u1") is not None
