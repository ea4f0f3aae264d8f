"""The leader gate (bind only while our own kube-scheduler holds the Lease) and the freed-capacity nudge."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from extender.kube.cluster import KubeCluster
from extender.kube.lease import LeaseGate
from extender.kube.nudge import FREED_ANNOTATION, Nudger
from extender.kube.views import pod_view
from tests.kube.fake_api import FakeApi, Resp


class FakeLeases:
    def __init__(self) -> None:
        self.spec: dict = {}
        self.reads = 0

    def read_namespaced_lease(self, name: str, namespace: str, **kw: object) -> Resp:
        self.reads += 1
        return Resp({"metadata": {"name": name, "namespace": namespace}, "spec": self.spec})


def gate(leases: FakeLeases) -> LeaseGate:
    g = LeaseGate(None, "kube-system", "gpuslice-scheduler", identity_prefix="sched-pod-1", refresh=0.0)  # type: ignore[arg-type]
    g.api = leases  # type: ignore[assignment]
    return g


def renewed(seconds_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_leads_only_with_own_identity_and_a_current_lease() -> None:
    leases = FakeLeases()
    g = gate(leases)
    assert not g()  # no holder
    leases.spec = {"holderIdentity": "sched-pod-1_8c2f", "renewTime": renewed(1), "leaseDurationSeconds": 15}
    assert g()
    leases.spec["holderIdentity"] = "sched-pod-2_77aa"  # the other replica took over
    assert not g()
    leases.spec = {"holderIdentity": "sched-pod-1_8c2f", "renewTime": renewed(60), "leaseDurationSeconds": 15}
    assert not g()  # our scheduler stopped renewing


def test_gate_caches_between_refreshes() -> None:
    leases = FakeLeases()
    leases.spec = {"holderIdentity": "sched-pod-1_x", "renewTime": renewed(0), "leaseDurationSeconds": 15}
    g = gate(leases)
    g.refresh = 60.0
    assert g() and g() and g()
    assert leases.reads == 1


def test_bind_refused_while_not_leading() -> None:
    from extender.engine.policy_store import PolicyStore
    from extender.engine.scheduler import Engine
    from extender.kube.cluster import KubeCluster
    from extender.kube.views import pod_view
    from extender.kube.watch import ClusterWatch
    from tests.kube.test_bind_faults import SLICE, inventory

    api = FakeApi()
    api.add_node("n0", inventory("n0"))
    pod = api.add_pod("default", "p", SLICE)
    cluster = KubeCluster(api, leading=lambda: False)  # type: ignore[arg-type]
    engine = Engine(cluster, PolicyStore())
    watch = ClusterWatch(api, cluster, engine)  # type: ignore[arg-type]
    watch._relist_nodes()
    watch._relist_pods()
    engine.sync()
    engine.filter(pod_view(pod), names=["n0"])
    err = engine.bind("default", "p", pod["metadata"]["uid"], "n0")
    assert "leader lease" in err
    assert engine.ledger.entry(pod["metadata"]["uid"]) is None
    assert "patch_namespaced_pod" not in api.calls and "create_namespaced_pod_binding" not in api.calls


def test_nudges_are_coalesced_into_one_patch() -> None:
    api = FakeApi()
    api.add_node("n0")
    api.add_node("n1")
    nudger = Nudger(api, interval=0.2)  # type: ignore[arg-type]

    def wait_sent(n: int) -> None:
        deadline = time.monotonic() + 5
        while nudger.sent < n and time.monotonic() < deadline:
            time.sleep(0.02)

    for _ in range(5):
        nudger.poke("n0")
    nudger.poke("n1")
    nudger.start()
    wait_sent(1)
    time.sleep(0.3)
    # One Node event requeues every rejected pod: six pokes on two nodes became one patch, on the last.
    assert api.calls.count("patch_node") == 1
    assert FREED_ANNOTATION in api.nodes["n1"]["metadata"].get("annotations", {})
    assert FREED_ANNOTATION not in api.nodes["n0"]["metadata"].get("annotations", {})
    first = api.nodes["n1"]["metadata"]["annotations"][FREED_ANNOTATION]
    nudger.poke("n1")
    wait_sent(2)
    nudger.stop()
    assert api.nodes["n1"]["metadata"]["annotations"][FREED_ANNOTATION] != first  # every touch is a change


def test_nudges_only_while_a_slice_pod_is_unbound() -> None:
    from tests.kube.test_bind_faults import SLICE

    api = FakeApi()
    api.add_node("n0")
    cluster = KubeCluster(api)  # type: ignore[arg-type]
    nudger = Nudger(api, interval=0.05, wanted=cluster.has_waiting_pods)  # type: ignore[arg-type]
    nudger.start()

    def settle() -> None:
        deadline = time.monotonic() + 5
        while (nudger._pending or nudger._wake.is_set()) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)

    try:
        plain = pod_view(api.add_pod("default", "plain", {}))
        cluster.put_pod(plain)  # unbound, but asks for no slice
        nudger.poke("n0")
        settle()
        assert api.calls.count("patch_node") == 0 and nudger.skipped == 1
        gpu = api.add_pod("default", "gpu", SLICE)
        cluster.put_pod(pod_view(gpu))
        assert cluster.has_waiting_pods()
        nudger.poke("n0")
        settle()
        assert api.calls.count("patch_node") == 1
        api.bind_elsewhere("default", "gpu", "n0")
        cluster.put_pod(pod_view(gpu))  # bound now: nobody waits
        assert not cluster.has_waiting_pods()
        nudger.poke("n0")
        settle()
        assert api.calls.count("patch_node") == 1 and nudger.skipped == 2
        cluster.put_pod(pod_view(api.add_pod("default", "gpu2", SLICE)))
        cluster.replace_pods([plain])  # a relist that no longer has it
        assert not cluster.has_waiting_pods()
    finally:
        nudger.stop()


def test_expired_reservation_and_policy_change_announce_freed_capacity() -> None:
    import urllib3

    from extender.engine.policy_store import PolicyStore
    from extender.engine.scheduler import Engine
    from extender.kube.watch import ClusterWatch
    from tests.kube.test_bind_faults import SLICE, inventory

    api = FakeApi()
    api.add_node("n0", inventory("n0"))
    pod = api.add_pod("default", "p", SLICE)
    now = [1000.0]
    cluster = KubeCluster(api)  # type: ignore[arg-type]
    policies = PolicyStore()
    engine = Engine(cluster, policies, clock=lambda: now[0])
    watch = ClusterWatch(api, cluster, engine)  # type: ignore[arg-type]
    watch._relist_nodes()
    watch._relist_pods()
    engine.sync()
    freed: list[str] = []
    engine.on_freed = freed.append
    view = pod_view(pod)
    api.fail["create_namespaced_pod_binding"] = urllib3.exceptions.ProtocolError("connection reset")
    api.fail["read_namespaced_pod"] = urllib3.exceptions.MaxRetryError(None, "/", "refused")
    engine.filter(view, names=["n0"])
    assert "cannot be read back" in engine.bind("default", "p", view.uid, "n0")  # reservation kept
    assert engine.expire_reservations() == 0 and freed == []
    now[0] += 3600
    assert engine.expire_reservations() == 1
    assert freed == ["n0"] and engine.ledger.entry(view.uid) is None
    assert policies.update_text("overcommit:\n  memory: 1.5\n")
    assert freed == ["n0", "n0"]
