"""How watch events change the ledgers: ended pods free their slices, vanished nodes drop their
ledgers, inventory changes stop new tenants on a GPU, and freed capacity is signalled."""

from __future__ import annotations

import copy

from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.kube.cluster import KubeCluster
from extender.kube.views import node_view, pod_view
from extender.kube.watch import ClusterWatch
from tests.kube.fake_api import FakeApi
from tests.kube.test_bind_faults import SLICE, inventory


def setup() -> tuple[FakeApi, Engine, ClusterWatch, list[str]]:
    api = FakeApi()
    api.add_node("n0", inventory("n0", gpus=1))
    cluster = KubeCluster(api)  # type: ignore[arg-type]
    engine = Engine(cluster, PolicyStore())
    freed: list[str] = []
    watch = ClusterWatch(api, cluster, engine, on_freed=freed.append)  # type: ignore[arg-type]
    watch._relist_nodes()
    watch._relist_pods()
    assert not engine.synced
    engine.sync()
    assert engine.synced
    return api, engine, watch, freed


def bound_pod(api: FakeApi, engine: Engine, watch: ClusterWatch, name: str) -> dict:
    pod = api.add_pod("default", name, SLICE)
    watch._pod_event("ADDED", pod_view(pod))
    assert engine.filter(pod_view(pod), names=["n0"]).passed == ["n0"]
    assert engine.bind("default", name, pod["metadata"]["uid"], "n0") == ""
    watch._pod_event("MODIFIED", pod_view(pod))
    return pod


def test_deleted_and_finished_pods_free_their_slices() -> None:
    api, engine, watch, freed = setup()
    a = bound_pod(api, engine, watch, "a")
    b = bound_pod(api, engine, watch, "b")
    gpu = engine.ledger.node("n0").gpus[0]
    assert len(gpu.slices) == 2
    watch._pod_event("DELETED", pod_view(a))
    assert engine.ledger.entry(a["metadata"]["uid"]) is None and freed == ["n0"]
    done = copy.deepcopy(b)
    done["status"]["phase"] = "Succeeded"
    watch._pod_event("MODIFIED", pod_view(done))
    assert engine.ledger.entry(b["metadata"]["uid"]) is None and freed == ["n0", "n0"]
    assert engine.ledger.node("n0").gpus[0].guaranteed == frozenset()


def test_failed_pod_frees_and_deleting_pod_still_holds() -> None:
    api, engine, watch, _ = setup()
    a = bound_pod(api, engine, watch, "a")
    deleting = copy.deepcopy(a)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    watch._pod_event("MODIFIED", pod_view(deleting))  # still running its grace period
    assert engine.ledger.entry(a["metadata"]["uid"]) is not None
    deleting["status"]["phase"] = "Failed"
    watch._pod_event("MODIFIED", pod_view(deleting))
    assert engine.ledger.entry(a["metadata"]["uid"]) is None


def test_node_gone_drops_ledger_and_new_node_signals() -> None:
    api, engine, watch, freed = setup()
    bound_pod(api, engine, watch, "a")
    watch._node_event("DELETED", node_view(api.nodes["n0"]))
    assert engine.ledger.node("n0") is None
    node = api.add_node("n9", inventory("n9"))
    watch._node_event("ADDED", node_view(node))
    assert engine.ledger.node("n9") is not None and freed == ["n9"]
    watch._node_event("MODIFIED", node_view(node))  # nothing changed: no signal
    assert freed == ["n9"]


def test_unhealthy_gpu_takes_no_new_tenants_and_recovery_signals() -> None:
    api, engine, watch, freed = setup()
    a = bound_pod(api, engine, watch, "a")
    sick = copy.deepcopy(api.nodes["n0"])
    sick["metadata"]["annotations"].update(inventory("n0", gpus=1, healthy=False))
    sick["metadata"]["resourceVersion"] = "999"
    watch._node_event("MODIFIED", node_view(sick))
    new = api.add_pod("default", "new", SLICE)
    result = engine.filter(pod_view(new), names=["n0"])
    assert result.passed == [] and "unhealthy" in result.failed["n0"]
    assert engine.ledger.entry(a["metadata"]["uid"]) is not None  # the tenant keeps running
    watch._node_event("MODIFIED", node_view(api.nodes["n0"]))  # healthy again
    assert freed[-1] == "n0"
    assert engine.filter(pod_view(new), names=["n0"]).passed == ["n0"]


def test_watch_resumes_relists_on_410_and_backs_off_on_errors(monkeypatch) -> None:
    import threading

    import urllib3

    from extender.kube import watch as watch_mod

    monkeypatch.setattr(watch_mod, "BACKOFF_MIN", 0.01)
    api, engine, watch, _ = setup()
    a = api.add_pod("default", "a", SLICE)
    b = api.add_pod("default", "b", SLICE)
    list_rv = str(api.rv)
    bound_a = copy.deepcopy(a)
    bound_a["spec"]["nodeName"] = "n0"
    bound_a["metadata"]["annotations"]["gpuslice.io/assignment"] = (
        '{"node":"n0","gpus":[{"index":0,"id":"n0-g0","cus":"0-31","burstCus":"","memoryBytes":1,'
        '"memoryLimitBytes":1}],"class":"memory-bound","policy":"x","assignedAt":"2026-01-01T00:00:00Z"}')
    bound_a["metadata"]["resourceVersion"] = "500"
    api.pods[("default", "a")] = bound_a  # what a relist will see
    api.watches["pods"] = [
        [{"type": "MODIFIED", "object": bound_a},
         {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "600"}}}],
        urllib3.exceptions.ProtocolError("connection reset"),  # back off, resume from 600
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}],
        [{"type": "DELETED", "object": b}],
    ]
    done = threading.Event()
    api.on_watches_done = lambda kind: done.set()
    t = threading.Thread(target=watch._watch_loop, args=("pods", list_rv), daemon=True)
    t.start()
    assert done.wait(5)
    watch.stop()
    t.join(5)
    rvs = api.watch_rvs["pods"]
    assert rvs[:3] == [list_rv, "600", "600"]  # resumed from the bookmark after the error
    assert rvs[3] == str(api.rv)  # after 410: listed again and watched from the new list
    assert watch.relists == 1 and watch.errors == 1
    assert engine.ledger.entry(a["metadata"]["uid"]) is not None  # the relist's rebuild kept the bound pod
    assert engine.synced


def test_pod_watch_can_be_limited_to_one_scheduler() -> None:
    import threading

    api = FakeApi()
    cluster = KubeCluster(api)  # type: ignore[arg-type]
    engine = Engine(cluster, PolicyStore())
    watch = ClusterWatch(api, cluster, engine, scheduler_name="gpuslice")  # type: ignore[arg-type]
    watch._relist_pods()
    done = threading.Event()
    api.on_watches_done = lambda kind: done.set()
    t = threading.Thread(target=watch._watch_loop, args=("pods", "1"), daemon=True)
    t.start()
    assert done.wait(5)
    watch.stop()
    t.join(5)
    assert set(api.selectors) == {"spec.schedulerName=gpuslice"}
