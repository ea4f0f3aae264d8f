"""engine.repack: whether deleting a pod alone on its GPU would let the extender place its replacement
beside other tenants (freeing the GPU), asked of the extender's own filter, prioritize and bind."""

from __future__ import annotations

from pathlib import Path

from extender.core.policy import load_policy
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.policy_store import PolicyStore
from extender.engine.repack import co_tenants, moves_beside_tenants, replacement_landings
from extender.engine.scheduler import Engine

POLICY = load_policy(Path(__file__).resolve().parents[2] / "policies" / "mi300x-inference.yaml")


def _pod(uid: str, cus: int = 128) -> PodView:
    return PodView(uid, "default", uid, labels={"app": "chat"}, annotations={
        "gpuslice.io/compute": f"{cus * 1000 // 304}m", "gpuslice.io/memory": "60G",
        "gpuslice.io/class": "memory-bound"})


def _cluster(gpus: int, nodes: tuple[str, ...] = ("n",)) -> tuple[Engine, MemoryCluster]:
    cluster = MemoryCluster()
    for name in nodes:
        cluster.add_node(NodeView(name, allocatable={"amd.com/gpu": str(gpus), "cpu": "64", "memory": "256Gi"}))
    engine = Engine(cluster, PolicyStore(POLICY))
    engine.sync()
    return engine, cluster


def _bind(engine: Engine, cluster: MemoryCluster, pod: PodView, node: str, gpu: int | None = None) -> None:
    cluster.add_pod(pod)
    assert node in engine.filter(pod, names=[node]).passed
    assert engine.bind("default", pod.name, pod.uid, node) == ""
    entry = engine.ledger.entry(pod.uid)
    assert entry is not None and (gpu is None or [g.index for g in entry.assignment.gpus] == [gpu])


def _bound(cluster: MemoryCluster, uid: str) -> PodView:
    pod = cluster.pod_by_uid(uid)
    assert pod is not None and pod.node_name
    return pod


def test_co_tenants_counts_the_others_on_the_pods_gpus() -> None:
    engine, cluster = _cluster(2)
    _bind(engine, cluster, _pod("a"), "n", 0)
    assert co_tenants(engine.ledger, "a") == 0
    _bind(engine, cluster, _pod("b"), "n", 0)  # binpack: beside a
    assert co_tenants(engine.ledger, "a") == co_tenants(engine.ledger, "b") == 1
    assert co_tenants(engine.ledger, "nobody") == -1


def test_a_lone_pod_whose_replacement_fits_beside_another_lone_pod_moves_there() -> None:
    # two memory-bound pods, each alone on its own node's GPU: re-creating either puts it beside the other
    engine, cluster = _cluster(1, ("n1", "n2"))
    _bind(engine, cluster, _pod("a"), "n1")
    _bind(engine, cluster, _pod("b"), "n2")
    assert co_tenants(engine.ledger, "a") == 0
    landings = replacement_landings(engine, cluster, _bound(cluster, "a"))
    assert [(x.node, x.co_tenants) for x in landings] == [("n2", 1)]
    assert moves_beside_tenants(landings)


def test_a_lone_pod_with_no_room_beside_others_does_not_move() -> None:
    # the other GPU holds two memory-bound pods (the class limit): the replacement could only go to an empty GPU
    engine, cluster = _cluster(1, ("n1", "n2"))
    _bind(engine, cluster, _pod("a"), "n1")
    _bind(engine, cluster, _pod("b"), "n2")
    _bind(engine, cluster, _pod("c"), "n2")
    landings = replacement_landings(engine, cluster, _bound(cluster, "a"))
    assert landings and all(x.co_tenants == 0 for x in landings)
    assert not moves_beside_tenants(landings)


def test_no_node_passing_is_no_move() -> None:
    engine, cluster = _cluster(1, ("n1",))
    _bind(engine, cluster, _pod("a", 272), "n1")
    huge = _bound(cluster, "a")
    assert not moves_beside_tenants([])
    assert [x.co_tenants for x in replacement_landings(engine, cluster, huge)] == [0]  # only its own GPU, empty


def _cb(uid: str) -> PodView:
    return PodView(uid, "default", uid, annotations={"gpuslice.io/compute": "100m", "gpuslice.io/memory": "8Gi",
                                                     "gpuslice.io/class": "compute-bound"})


def test_with_surge_the_old_pod_stays_and_its_own_gpu_is_no_move() -> None:
    # a one-pod Deployment restarted: the new pod is placed while the old one runs. Beside the old pod
    # itself is no move (it leaves); beside two compute-bound pods (complementarity) is.
    engine, cluster = _cluster(1, ("n1", "n2"))
    _bind(engine, cluster, _pod("a"), "n1")
    _bind(engine, cluster, _pod("b"), "n2")
    tie = replacement_landings(engine, cluster, _bound(cluster, "a"), surge=True)
    assert sorted((x.node, x.co_tenants) for x in tie) == [("n1", 0), ("n2", 1)]  # either may be chosen
    assert not moves_beside_tenants(tie)

    engine, cluster = _cluster(1, ("n1", "n2"))
    _bind(engine, cluster, _pod("a"), "n1")
    _bind(engine, cluster, _cb("e1"), "n2")
    _bind(engine, cluster, _cb("e2"), "n2")
    landings = replacement_landings(engine, cluster, _bound(cluster, "a"), surge=True)
    assert [(x.node, x.co_tenants) for x in landings] == [("n2", 2)]
    assert moves_beside_tenants(landings)
    assert co_tenants(engine.ledger, "a") == 0  # the old pod is still there, alone
