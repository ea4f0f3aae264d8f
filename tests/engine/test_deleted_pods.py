"""What the engine remembers of deleted pods (issue 14 point 3: RSS flat under churn).

A deleted pod's UID matters only while a bind of that pod is in flight: that bind's commit must not
bring the slice back. A bind that starts after the delete cannot commit, as the Binding carries the
pod's UID as a precondition (kube/cluster.py) and the API server refuses it. Before, every deleted
UID was kept, up to 100,000 of them (~15 MiB), however long ago its pod went."""

from __future__ import annotations

from collections.abc import Mapping

from extender.core.policy import parse_policy
from extender.engine.cluster import BindError, MemoryCluster, NodeView, PodView
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine

SMALL = {"gpuslice.io/compute": "125m", "gpuslice.io/memory": "8Gi"}


def engine_on(cluster: MemoryCluster) -> Engine:
    cluster.add_node(NodeView("n0", allocatable={"amd.com/gpu": "8"}))
    engine = Engine(cluster, PolicyStore(parse_policy({})))
    assert engine.sync() == []
    return engine


def new_pod(cluster: MemoryCluster, i: int) -> PodView:
    pod = PodView(f"uid-{i}", "default", f"p{i}", annotations=SMALL)
    cluster.add_pod(pod)
    return pod


def test_churn_leaves_nothing_remembered_once_no_bind_is_in_flight() -> None:
    cluster = MemoryCluster()
    engine = engine_on(cluster)
    for i in range(300):  # a pod bound, seen bound by the watch, then deleted
        pod = new_pod(cluster, i)
        assert engine.bind("default", pod.name, pod.uid, "n0") == ""
        seen = cluster.pod_by_uid(pod.uid)
        assert seen is not None
        engine.observe_pod(seen)
        cluster.remove_pod(pod.uid)
        engine.forget_pod(pod.uid)
    assert engine.ledger.usage("default").tenants == 0
    assert len(engine._gone) == 0  # was 300: one UID per deleted pod


def test_a_delete_during_a_bind_is_remembered_until_that_bind_ends() -> None:
    cluster = MemoryCluster()
    engine = engine_on(cluster)
    pod = new_pod(cluster, 0)
    during: list[int] = []

    def fault(step: str) -> None:
        if step == "recorded":  # the Binding is written; the watch's delete lands before the commit
            cluster.remove_pod(pod.uid)
            engine.forget_pod(pod.uid)
            during.append(len(engine._gone))

    engine.fault = fault
    engine.bind("default", pod.name, pod.uid, "n0")
    assert during == [1]
    assert engine.ledger.entry(pod.uid) is None  # the commit did not revive it
    assert len(engine._gone) == 0


class LostAnswerCluster(MemoryCluster):
    """The watch's delete arrives while bind looks the pod up; the Binding's answer is then lost."""

    def __init__(self) -> None:
        super().__init__()
        self.engine: Engine | None = None

    def pod_by_uid(self, uid: str) -> PodView | None:
        pod = super().pod_by_uid(uid)
        if pod is not None and self.engine is not None:
            self.remove_pod(uid)
            self.engine.forget_pod(uid)
        return pod

    def bind_pod(self, pod: PodView, node: str, annotations: Mapping[str, str]) -> None:
        raise BindError("no answer", temporary=True, outcome_unknown=True)


def test_a_pod_deleted_while_its_bind_ran_holds_nothing_after_it() -> None:
    """A reservation made after the delete was held to its TTL when the Binding's outcome was unknown."""
    cluster = LostAnswerCluster()
    engine = engine_on(cluster)
    pod = new_pod(cluster, 0)
    cluster.engine = engine
    assert engine.bind("default", pod.name, pod.uid, "n0") != ""
    assert engine.ledger.entry(pod.uid) is None
    assert engine.ledger.usage("default").tenants == 0
    assert len(engine._gone) == 0
