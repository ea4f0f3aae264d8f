"""The crash-safe bind against a fake API server: every failure and every crash point leaves a
ledger that equals what the cluster says, with no CU or byte leaked or counted twice."""

from __future__ import annotations

import pytest
import urllib3

from extender.core.assignment import ASSIGNMENT_ANNOTATION, parse_assignment
from extender.core.inventory import INVENTORY_ANNOTATION, GpuInfo, format_inventory
from extender.engine.cluster import PodView
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.kube.cluster import KubeCluster
from extender.kube.views import pod_view
from extender.kube.watch import ClusterWatch
from tests.kube.fake_api import FakeApi, _err

GIB = 2**30
SLICE = {"gpuslice.io/compute": "250m", "gpuslice.io/memory": "16Gi"}


class Killed(BaseException):
    """The extender process dies here: no handler runs, nothing is rolled back."""


def inventory(node: str, gpus: int = 2, healthy: bool = True) -> dict[str, str]:
    return {INVENTORY_ANNOTATION: format_inventory([
        GpuInfo(index=i, id=f"{node}-g{i}", model="MI300X", computeUnits=304, xcds=8, shaderEngines=32,
                memoryBytes=192 * GIB, healthy=healthy) for i in range(gpus)])}


def start(api: FakeApi) -> tuple[Engine, KubeCluster]:
    """A fresh extender process: list everything, rebuild the ledgers."""
    cluster = KubeCluster(api)  # type: ignore[arg-type]
    engine = Engine(cluster, PolicyStore())
    watch = ClusterWatch(api, cluster, engine)  # type: ignore[arg-type]
    watch._relist_nodes()
    watch._relist_pods()
    engine.sync()
    return engine, cluster


def truth(api: FakeApi) -> dict:
    engine, _ = start(api)
    return engine.ledger.snapshot()


def bound_totals(api: FakeApi) -> tuple[int, int]:
    cus = mem = 0
    for pod in api.pods.values():
        ann = pod["metadata"].get("annotations", {})
        if pod["spec"].get("nodeName") and ASSIGNMENT_ANNOTATION in ann:
            a = parse_assignment(ann[ASSIGNMENT_ANNOTATION])
            cus += sum(len(g.cus) for g in a.gpus)
            mem += sum(g.memoryBytes for g in a.gpus)
    return cus, mem


def ledger_totals(engine: Engine) -> tuple[int, int]:
    cus = mem = 0
    for state in engine.ledger.nodes():
        for g in state.gpus:
            cus += len(g.guaranteed)
            mem += g.memory_used
    return cus, mem


@pytest.fixture
def api() -> FakeApi:
    api = FakeApi()
    api.add_node("n0", inventory("n0"))
    api.add_node("n1", inventory("n1"))
    return api


def bind(engine: Engine, api: FakeApi, name: str, node: str = "n0") -> str:
    pod = api.pods[("default", name)]
    view = pod_view(pod)
    assert engine.filter(view, names=[node]).passed == [node]
    return engine.bind("default", name, view.uid, node)


def filtered(api: FakeApi, annotations: dict[str, str] = SLICE) -> tuple[Engine, KubeCluster, PodView]:
    """Pod default/p created, the extender started, and filter passing it on n0: where kube-scheduler's
    bind call comes in."""
    api.add_pod("default", "p", annotations)
    engine, cluster = start(api)
    view = pod_view(api.pods[("default", "p")])
    assert engine.filter(view, names=["n0"]).passed == ["n0"]
    return engine, cluster, view


def test_bind_is_one_binding_carrying_the_assignment(api: FakeApi) -> None:
    api.add_pod("default", "p", SLICE)
    engine, _ = start(api)
    assert bind(engine, api, "p") == ""
    pod = api.pods[("default", "p")]
    assert pod["spec"]["nodeName"] == "n0"
    assert parse_assignment(pod["metadata"]["annotations"][ASSIGNMENT_ANNOTATION]).node == "n0"
    assert [c for c in api.calls if c.startswith(("patch", "create"))] == ["create_namespaced_pod_binding"]
    assert engine.ledger.snapshot() == truth(api)
    assert ledger_totals(engine) == bound_totals(api) != (0, 0)


@pytest.mark.parametrize("where", ["engine:reserved", "kube:binding", "kube:bound", "engine:recorded"])
def test_crash_at_each_step_then_restart_is_consistent(api: FakeApi, where: str) -> None:
    api.add_pod("default", "keep", SLICE)
    api.add_pod("default", "p", SLICE)
    engine, cluster = start(api)
    assert bind(engine, api, "keep") == ""
    side, step = where.split(":")

    def crash(name: str) -> None:
        if name == step:
            raise Killed(step)

    (engine if side == "engine" else cluster).fault = crash
    with pytest.raises(Killed):
        bind(engine, api, "p")
    pod = api.pods[("default", "p")]
    has_binding = bool(pod["spec"].get("nodeName"))
    assert has_binding == (step in ("bound", "recorded"))
    # One write: the assignment is on the pod exactly when the pod is bound, never in between.
    assert (ASSIGNMENT_ANNOTATION in pod["metadata"].get("annotations", {})) == has_binding

    restarted, _ = start(api)
    assert restarted.ledger.snapshot() == truth(api)
    assert ledger_totals(restarted) == bound_totals(api)
    assert (restarted.ledger.entry(pod["metadata"]["uid"]) is not None) == has_binding
    if not has_binding:  # kube-scheduler retries the pod
        assert bind(restarted, api, "p", "n1") == ""
        assert parse_assignment(pod["metadata"]["annotations"][ASSIGNMENT_ANNOTATION]).node == "n1"
    else:  # a retried bind of a pod that is bound already is a no-op success
        assert restarted.bind("default", "p", pod["metadata"]["uid"], pod["spec"]["nodeName"]) == ""
    assert ledger_totals(restarted) == bound_totals(api)
    assert restarted.ledger.snapshot() == truth(api)


def test_repeated_bind_is_idempotent(api: FakeApi) -> None:
    api.add_pod("default", "p", SLICE)
    engine, _ = start(api)
    assert bind(engine, api, "p") == ""
    uid = api.pods[("default", "p")]["metadata"]["uid"]
    before = engine.ledger.snapshot()
    calls = len(api.calls)
    assert engine.bind("default", "p", uid, "n0") == ""
    assert engine.ledger.snapshot() == before
    assert len(api.calls) == calls  # nothing written twice
    assert "already bound to n0" in engine.bind("default", "p", uid, "n1")


def test_stale_resource_version_is_reread_and_retried(api: FakeApi) -> None:
    engine, _, view = filtered(api)
    api.touch_pod("default", "p")  # e.g. kube-scheduler updated its status meanwhile
    assert engine.bind("default", "p", view.uid, "n0") == ""
    assert api.calls.count("create_namespaced_pod_binding") == 2 and "read_namespaced_pod" in api.calls
    assert "patch_namespaced_pod" not in api.calls
    assert ledger_totals(engine) == bound_totals(api) != (0, 0)


def test_binding_409_pod_being_deleted_rolls_back(api: FakeApi) -> None:
    engine, _, view = filtered(api)
    api.fail["create_namespaced_pod_binding"] = _err(409, "pod p is being deleted, cannot be assigned to a host")
    err = engine.bind("default", "p", view.uid, "n0")
    assert "refused" in err and "409" in err
    assert engine.ledger.entry(view.uid) is None
    assert ASSIGNMENT_ANNOTATION not in api.pods[("default", "p")]["metadata"]["annotations"]
    assert api.calls.count("create_namespaced_pod_binding") == 1  # not retried blindly
    assert ledger_totals(engine) == (0, 0)


def test_binding_409_already_bound_elsewhere(api: FakeApi) -> None:
    engine, cluster, view = filtered(api)
    cluster.fault = lambda step: api.bind_elsewhere("default", "p", "n1") if step == "binding" else None
    err = engine.bind("default", "p", view.uid, "n0")
    assert "bound to n1" in err
    assert engine.ledger.entry(view.uid) is None
    assert ASSIGNMENT_ANNOTATION not in api.pods[("default", "p")]["metadata"]["annotations"]
    restarted, _ = start(api)  # bound by someone else, without an assignment: holds nothing of ours
    assert restarted.ledger.entry(view.uid) is None
    assert restarted.ledger.snapshot() == truth(api)


def test_binding_server_error_rolls_back_the_reservation(api: FakeApi) -> None:
    engine, _, view = filtered(api)
    api.fail["create_namespaced_pod_binding"] = _err(500, "etcd unavailable")
    err = engine.bind("default", "p", view.uid, "n0")
    assert "500" in err
    assert engine.ledger.entry(view.uid) is None
    assert ASSIGNMENT_ANNOTATION not in api.pods[("default", "p")]["metadata"]["annotations"]
    assert bind(engine, api, "p") == ""  # kube-scheduler's retry succeeds


def test_lost_binding_answer_is_a_success(api: FakeApi) -> None:
    api.add_pod("default", "p", SLICE)
    engine, _ = start(api)
    api.fail_after["create_namespaced_pod_binding"] = urllib3.exceptions.ReadTimeoutError(None, "/", "timed out")
    assert bind(engine, api, "p") == ""
    assert api.pods[("default", "p")]["spec"]["nodeName"] == "n0"
    assert engine.ledger.snapshot() == truth(api)


def test_unreachable_api_keeps_reservation_until_watch_decides(api: FakeApi) -> None:
    engine, _, view = filtered(api)
    api.fail_after["create_namespaced_pod_binding"] = urllib3.exceptions.ProtocolError("connection reset")
    api.fail["read_namespaced_pod"] = urllib3.exceptions.MaxRetryError(None, "/", "refused")
    err = engine.bind("default", "p", view.uid, "n0")
    assert "cannot be read back" in err
    entry = engine.ledger.entry(view.uid)
    assert entry is not None and entry.reserved  # the Binding may exist: keep the CUs until we know
    engine.observe_pod(pod_view(api.pods[("default", "p")]))  # the watch shows it bound
    assert not engine.ledger.entry(view.uid).reserved
    assert engine.ledger.snapshot() == truth(api)


def test_pod_recreated_with_same_name_is_refused(api: FakeApi) -> None:
    engine, _, view = filtered(api)
    del api.pods[("default", "p")]
    api.add_pod("default", "p", SLICE)
    err = engine.bind("default", "p", view.uid, "n0")
    assert "no longer exists" in err
    assert engine.ledger.entry(view.uid) is None
    assert ASSIGNMENT_ANNOTATION not in api.pods[("default", "p")]["metadata"]["annotations"]


def test_failed_bind_signals_the_node_it_released() -> None:
    api = FakeApi()
    api.add_node("n0", inventory("n0"))
    api.add_pod("default", "p", SLICE)
    failed: list[str] = []
    engine, cluster = start(api)
    cluster.on_failed = failed.append
    api.fail["create_namespaced_pod_binding"] = _err(500, "etcd unavailable")
    assert bind(engine, api, "p") != ""
    assert failed == ["n0"]


def test_binding_keeps_other_annotations_and_retries_a_changed_pod(api: FakeApi) -> None:
    engine, cluster, view = filtered(api, {**SLICE, "team": "search"})
    touched: list[str] = []

    def change_once(step: str) -> None:  # another writer updates the pod between our read and our write
        if step == "binding" and not touched:
            touched.append(step)
            api.touch_pod("default", "p")

    cluster.fault = change_once
    assert engine.bind("default", "p", view.uid, "n0") == ""
    ann = api.pods[("default", "p")]["metadata"]["annotations"]
    assert ann["team"] == "search" and parse_assignment(ann[ASSIGNMENT_ANNOTATION]).node == "n0"
    assert api.calls.count("create_namespaced_pod_binding") == 2
    assert engine.ledger.snapshot() == truth(api)


def test_pod_that_keeps_changing_is_left_for_a_retry(api: FakeApi) -> None:
    engine, cluster, view = filtered(api)
    cluster.fault = lambda step: api.touch_pod("default", "p") if step == "binding" else None
    err = engine.bind("default", "p", view.uid, "n0")
    assert "kept changing" in err
    assert engine.ledger.entry(view.uid) is None
    assert not api.pods[("default", "p")]["spec"].get("nodeName")
    assert ASSIGNMENT_ANNOTATION not in api.pods[("default", "p")]["metadata"]["annotations"]
