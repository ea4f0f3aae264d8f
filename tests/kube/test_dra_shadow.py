"""Shadow claims without a cluster: what a pod's shadow books of the agent's published devices, and
the reconciler's writes against a recording stand-in for resource.k8s.io/v1 (create, complete, replace,
remove in the order that requeues waiting DRA pods), each of them granted by deploy/dra/rbac.yaml."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, ApiException

from extender.agent.dra.slices import device_name, resource_slice
from extender.agent.topology import Topology, read_topology
from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, GpuAssignment
from extender.engine.cluster import PodView
from extender.kube.shadow_claims import (
    FINALIZER,
    SHADOW_OF,
    SLICES_FRESH,
    ShadowClaims,
    ShadowSyncError,
    allocation_key,
    pod_assignment,
    shadow_claim,
    shadow_name,
    slice_devices,
)
from tests.kube.fake_api import Resp

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "sysfs" / "mi300x-spx"
GIB = 2**30
TOPOLOGY = Topology(read_topology(FIXTURE).gpus[:2])
SLICE = resource_slice("n0", TOPOLOGY, 0.125, 1, FIXTURE)
GUARANTEEABLE = int(SLICE["spec"]["devices"][0]["capacity"]["computeUnits"]["value"])


def pod(uid: str, gpus: list[tuple[int, int, int]], node: str = "n0", phase: str = "Running") -> PodView:
    """A bound extender pod holding (gpu index, CUs, GiB) shares."""
    a = Assignment(node, tuple(GpuAssignment(i, f"g{i}", frozenset(range(cus)), frozenset(), gib * GIB, gib * GIB)
                               for i, cus, gib in gpus), "memory-bound", "p")
    return PodView(uid=uid, namespace="ml", name=f"pod-{uid[:4]}", annotations={ASSIGNMENT_ANNOTATION: a.to_json()},
                   node_name=node, phase=phase)


def uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def test_slice_devices_tie_gpu_indexes_to_the_agents_device_names() -> None:
    devices = slice_devices([SLICE])["n0"]
    assert {i: d.name for i, d in devices.items()} == {g.info.index: device_name(g.info) for g in TOPOLOGY.gpus}
    assert devices[0].compute_units == GUARANTEEABLE < 304 and devices[0].memory_bytes == 192 * GIB


def test_a_shadow_books_the_pods_guarantee_and_a_whole_gpu_books_the_whole_device() -> None:
    devices = slice_devices([SLICE])["n0"]
    p = pod(uid(1), [(0, 64, 60), (1, 304, 192)])
    claim, allocation = shadow_claim(p, _a(p), devices)
    assert claim["metadata"]["name"] == shadow_name(uid(1))
    assert claim["metadata"]["labels"] == {SHADOW_OF: uid(1)} and claim["metadata"]["finalizers"] == [FINALIZER]
    assert claim["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Pod", "name": p.name, "uid": uid(1)}]
    got = {r["device"]: (r["consumedCapacity"], r["shareID"], r["pool"]) for r in allocation["devices"]["results"]}
    assert got == {devices[0].name: ({"computeUnits": "64", "memory": str(60 * GIB)}, uid(1), "n0"),
                   devices[1].name: ({"computeUnits": str(GUARANTEEABLE), "memory": str(192 * GIB)}, uid(1), "n0")}
    requests = {r["name"]: r["exactly"]["capacity"]["requests"] for r in claim["spec"]["devices"]["requests"]}
    assert {r["request"] for r in allocation["devices"]["results"]} == set(requests)


def test_no_shadow_where_the_node_publishes_none_of_the_pods_gpus() -> None:
    devices = {i: d for i, d in slice_devices([SLICE])["n0"].items() if i == 1}
    p = pod(uid(1), [(0, 64, 60)])
    assert shadow_claim(p, _a(p), devices) is None


def test_allocation_key_ignores_quantity_spelling() -> None:
    a = {"devices": {"results": [{"pool": "n0", "device": "d", "consumedCapacity": {"computeUnits": "64",
                                                                                  "memory": "60Gi"}}]}}
    b = {"devices": {"results": [{"pool": "n0", "device": "d", "consumedCapacity": {"computeUnits": "64",
                                                                                  "memory": str(60 * GIB)}}]}}
    assert allocation_key(a) == allocation_key(b) and allocation_key(None) is None


def _a(p: PodView) -> Assignment:
    a = pod_assignment(p)
    assert a is not None
    return a


class FakeResource:
    """The resource.k8s.io/v1 calls ShadowClaims makes, on an in-memory store; `calls` records
    (resource, verb) in order, as RBAC names them."""

    def __init__(self, slices: list[dict]) -> None:
        self.slices = slices
        self.claims: dict[tuple[str, str], dict] = {}
        self.calls: list[tuple[str, str, str]] = []  # (resource, verb, claim name)

    def list_resource_slice(self, **kw: Any) -> Resp:
        self.calls.append(("resourceslices", "list", ""))
        return Resp({"metadata": {"resourceVersion": "1"}, "items": self.slices})

    def list_resource_claim_for_all_namespaces(self, **kw: Any) -> Resp:
        self.calls.append(("resourceclaims", "list", ""))
        items = [c for c in self.claims.values() if kw.get("label_selector") in (c["metadata"].get("labels") or {})]
        return Resp({"metadata": {"resourceVersion": "1"}, "items": items})

    def create_namespaced_resource_claim(self, ns: str, body: dict, **kw: Any) -> Resp:
        name = body["metadata"]["name"]
        self.calls.append(("resourceclaims", "create", name))
        if (ns, name) in self.claims:
            raise ApiException(status=409, reason="AlreadyExists")
        self.claims[ns, name] = json.loads(json.dumps(body)) | {"status": {}}
        return Resp(body)

    def patch_namespaced_resource_claim_status(self, name: str, ns: str, body: dict, **kw: Any) -> Resp:
        self.calls.append(("resourceclaims/status", "patch", name))
        claim = self._get(ns, name)
        allocation = body["status"]["allocation"]
        if allocation is not None and claim["status"].get("allocation") not in (None, allocation):
            raise ApiException(status=422, reason="status.allocation: field is immutable")
        claim["status"]["allocation"] = allocation
        return Resp(claim)

    def patch_namespaced_resource_claim(self, name: str, ns: str, body: dict, **kw: Any) -> Resp:
        self.calls.append(("resourceclaims", "patch", name))
        claim = self._get(ns, name)
        claim["metadata"]["finalizers"] = body["metadata"]["finalizers"]
        self._collect(ns, name)
        return Resp(claim)

    def delete_namespaced_resource_claim(self, name: str, ns: str, **kw: Any) -> Resp:
        self.calls.append(("resourceclaims", "delete", name))
        claim = self._get(ns, name)
        claim["metadata"]["deletionTimestamp"] = "2026-12-01T12:00:00Z"
        self._collect(ns, name)
        return Resp(claim)

    def _get(self, ns: str, name: str) -> dict:
        if (ns, name) not in self.claims:
            raise ApiException(status=404, reason="NotFound")
        return self.claims[ns, name]

    def _collect(self, ns: str, name: str) -> None:
        c = self.claims[ns, name]
        if c["metadata"].get("deletionTimestamp") and not c["metadata"].get("finalizers"):
            del self.claims[ns, name]


def reconciler(pods: list[PodView], slices: list[dict] | None = None) -> tuple[ShadowClaims, FakeResource]:
    fake = FakeResource([SLICE] if slices is None else slices)
    shadows = ShadowClaims(ApiClient(), lambda: pods, lambda: True)
    shadows.resource = fake  # type: ignore[assignment]
    return shadows, fake


def test_sync_writes_a_shadow_per_live_pod_on_a_dra_node_and_nothing_else() -> None:
    pods = [pod(uid(1), [(0, 64, 60)]), pod(uid(2), [(1, 128, 40)]), pod(uid(3), [(0, 32, 8)], phase="Succeeded"),
            pod(uid(4), [(0, 32, 8)], node="n-without-dra")]
    shadows, fake = reconciler(pods)
    assert shadows.sync() == (2, 0)
    assert {c["metadata"]["labels"][SHADOW_OF] for c in fake.claims.values()} == {uid(1), uid(2)}
    assert all(c["status"]["allocation"] for c in fake.claims.values())
    fake.calls.clear()
    assert shadows.sync() == (0, 0)  # level-triggered: nothing to do when it is all there
    assert {v for _, v, _ in fake.calls} == {"list"}


def test_sync_completes_a_half_written_shadow_and_replaces_a_wrong_one() -> None:
    p1, p2 = pod(uid(1), [(0, 64, 60)]), pod(uid(2), [(1, 64, 60)])
    shadows, fake = reconciler([p1, p2])
    shadows.sync()
    fake.claims["ml", shadow_name(uid(1))]["status"] = {}  # died between create and the status write
    wrong = fake.claims["ml", shadow_name(uid(2))]["status"]["allocation"]["devices"]["results"][0]
    wrong["consumedCapacity"] = {"computeUnits": "8", "memory": "1Gi"}
    assert shadows.sync() == (2, 0)
    want = {u: allocation_key(shadow_claim(p, _a(p), slice_devices([SLICE])["n0"])[1])  # type: ignore[index]
            for u, p in ((uid(1), p1), (uid(2), p2))}
    assert {c["metadata"]["labels"][SHADOW_OF]: allocation_key(c["status"]["allocation"])
            for c in fake.claims.values()} == want


def test_an_orphaned_shadow_is_deallocated_before_it_is_deleted() -> None:
    pods = [pod(uid(1), [(0, 64, 60)])]
    shadows, fake = reconciler(pods)
    shadows.sync()
    pods.clear()
    fake.calls.clear()
    assert shadows.sync() == (0, 1)
    name = shadow_name(uid(1))
    assert [(r, v) for r, v, n in fake.calls if n == name] == [
        ("resourceclaims/status", "patch"), ("resourceclaims", "patch"), ("resourceclaims", "delete")]
    assert not fake.claims


def test_a_shadow_being_garbage_collected_is_deallocated_and_released() -> None:
    pods = [pod(uid(1), [(0, 64, 60)])]
    shadows, fake = reconciler(pods)
    shadows.sync()
    pods.clear()
    fake.claims["ml", shadow_name(uid(1))]["metadata"]["deletionTimestamp"] = "2026-12-01T12:00:00Z"  # its pod went
    assert shadows.sync() == (0, 1)
    assert not fake.claims
    assert ("resourceclaims", "delete", shadow_name(uid(1))) not in fake.calls


def test_a_just_bound_pod_gets_its_shadow_without_a_listing_of_claims() -> None:
    p = pod(uid(1), [(0, 64, 60)])
    shadows, fake = reconciler([p])
    shadows.refresh_slices()
    fake.calls.clear()
    assert shadows.ensure(p)
    assert [(r, v) for r, v, _ in fake.calls] == [("resourceclaims", "create"), ("resourceclaims/status", "patch")]


@pytest.mark.parametrize("scenario", ["create", "orphan"])
def test_every_call_is_granted_by_the_deployed_rbac(scenario: str) -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "dra" / "rbac.yaml").read_text()))
    docs += list(yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()))
    bound = {d["roleRef"]["name"] for d in docs if d and d["kind"] == "ClusterRoleBinding"
             and any(s["name"] == "gpuslice-scheduler" for s in d["subjects"])}
    granted = {(res, verb) for d in docs if d and d["kind"] == "ClusterRole" and d["metadata"]["name"] in bound
               for r in d["rules"] if "resource.k8s.io" in r["apiGroups"] for res in r["resources"]
               for verb in r["verbs"]}
    pods = [pod(uid(1), [(0, 64, 60)])]
    shadows, fake = reconciler(pods)
    shadows.sync()
    if scenario == "orphan":
        pods.clear()
        shadows.sync()
    assert {(r, v) for r, v, _ in fake.calls} <= granted


def test_an_api_server_without_dra_has_nothing_to_sync() -> None:
    shadows, fake = reconciler([pod(uid(1), [(0, 64, 60)])])

    def missing(**kw: Any) -> Resp:
        raise ApiException(status=404, reason="NotFound")

    fake.list_resource_slice = missing  # type: ignore[method-assign]
    fake.list_resource_claim_for_all_namespaces = missing  # type: ignore[method-assign]
    assert shadows.sync() == (0, 0)


def test_one_refused_write_does_not_stop_the_others() -> None:
    pods = [pod(uid(1), [(0, 64, 60)]), pod(uid(2), [(1, 64, 60)])]
    shadows, fake = reconciler(pods)
    create = fake.create_namespaced_resource_claim

    def refuse_first(ns: str, body: dict, **kw: Any) -> Resp:
        if body["metadata"]["labels"][SHADOW_OF] == uid(1):
            raise ApiException(status=403, reason="namespace is being terminated")
        return create(ns, body, **kw)

    fake.create_namespaced_resource_claim = refuse_first  # type: ignore[method-assign]
    with pytest.raises(ShadowSyncError):
        shadows.sync()
    assert {c["metadata"]["labels"][SHADOW_OF] for c in fake.claims.values()} == {uid(2)}


def _eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_loop_waits_for_the_pod_cache_then_resyncs_and_writes_just_bound_pods() -> None:
    pods: list[PodView] = [pod(uid(1), [(0, 64, 60)])]
    synced = [False]
    fake = FakeResource([SLICE])
    shadows = ShadowClaims(ApiClient(), lambda: pods, lambda: synced[0], resync=60.0)
    shadows.resource = fake  # type: ignore[assignment]
    shadows.start()
    try:
        time.sleep(0.3)
        assert fake.calls == []  # an empty cache would have removed every live pod's shadow
        synced[0] = True
        _eventually(lambda: ("ml", shadow_name(uid(1))) in fake.claims)  # the first resync, at once
        late = pod(uid(2), [(1, 64, 60)])
        pods.append(late)
        shadows.bound(late)  # long before the next resync (60 s)
        _eventually(lambda: ("ml", shadow_name(uid(2))) in fake.claims)
        assert fake.claims["ml", shadow_name(uid(2))]["status"]["allocation"]
    finally:
        shadows.stop()


def test_pods_on_nodes_without_dra_are_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resync runs every 10 s over every pod the extender holds: a pod on a node that publishes no
    slice can hold no shadow, so its assignment is not parsed (at 100,000 pods that was seconds of CPU)."""
    import extender.kube.shadow_claims as shadow_claims  # noqa: PLC0415

    pods = [pod(uid(1), [(0, 64, 60)])] + [pod(uid(10 + i), [(0, 32, 8)], node=f"plain-{i}") for i in range(20)]
    shadows, fake = reconciler(pods)
    parsed: list[str] = []
    real = shadow_claims.parse_assignment
    monkeypatch.setattr(shadow_claims, "parse_assignment", lambda text: parsed.append(text) or real(text))
    assert shadows.sync() == (1, 0)
    assert parsed and all('"node":"n0"' in text for text in parsed)  # the DRA node's pod alone
    parsed.clear()
    assert shadows.ensure(pods[5]) is False and parsed == []


def test_a_bind_to_a_node_without_a_slice_in_a_fresh_listing_wakes_nothing() -> None:
    """On a cluster without DRA nodes every bind is such a bind: the thread would find nothing to write."""
    dra, plain = pod(uid(1), [(0, 64, 60)]), pod(uid(2), [(0, 32, 8)], node="plain-0")
    shadows, _ = reconciler([dra, plain])
    shadows.refresh_slices()
    shadows.bound(plain)
    assert not shadows._wake.is_set() and not shadows._bound
    shadows.bound(dra)
    assert shadows._wake.is_set() and set(shadows._bound) == {uid(1)}
    shadows._listed_at -= SLICES_FRESH + 1  # the listing grew old: the thread lists again for this node
    shadows.bound(plain)
    assert set(shadows._bound) == {uid(1), uid(2)}


def test_a_pod_freed_on_a_node_without_a_slice_in_a_fresh_listing_wakes_nothing() -> None:
    """Deleting 1,000 pods on a cluster without DRA nodes ran a full resync (two cluster-wide lists) after
    nearly every one of them: 1.4 s of the extender's CPU, and as many lists on the API server, for no
    shadow at all. A shadow is only ever written for a pod on a node with a slice."""
    shadows, _ = reconciler([])
    shadows.refresh_slices()
    shadows._full = False  # the first resync has run
    shadows.freed("plain-0")
    assert not shadows._wake.is_set() and not shadows._full
    shadows.freed("n0")  # the DRA node: its shadow is deallocated promptly, as before
    assert shadows._wake.is_set() and shadows._full
    shadows._wake.clear()
    shadows._full = False
    shadows._listed_at -= SLICES_FRESH + 1  # the listing grew old: resync, which lists again
    shadows.freed("plain-0")
    assert shadows._wake.is_set() and shadows._full
