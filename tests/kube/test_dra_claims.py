"""DRA tenants in the extender's one ledger: a claim's agent-published CU sets become a tenant view,
the engine places extender pods around them, and claim events free and retake capacity."""

from __future__ import annotations

import json
import threading

import pytest

from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, GpuAssignment, parse_assignment
from extender.core.atoms import is_xcc_complete
from extender.core.inventory import INVENTORY_ANNOTATION, GpuInfo, device_name, format_inventory
from extender.core.rangelist import parse_ranges
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.kube import claims as claims_module
from extender.kube.claims import DRIVER, SHADOW_OF, ClaimWatch, claim_view
from extender.kube.cluster import KubeCluster

GIB = 2**30


def node(name: str = "n0", gpus: int = 1) -> NodeView:
    inv = format_inventory([GpuInfo(index=i, id=f"{name}-g{i}", model="MI300X", computeUnits=304, xcds=8,
                                    shaderEngines=32, memoryBytes=192 * GIB, healthy=True) for i in range(gpus)])
    return NodeView(name, annotations={INVENTORY_ANNOTATION: inv})


def claim(uid: str, name: str, shares: list[tuple[int, str, int]], node_name: str = "n0",
          prepared: bool = True) -> dict:
    """A claim allocated (and, if `prepared`, prepared by the agent): shares of (gpu, CU ranges, memory)."""
    results = [{"request": "gpu", "driver": DRIVER, "pool": node_name, "device": f"gpu-{g}", "shareID": f"s{g}",
                "consumedCapacity": {"computeUnits": str(len(parse_ranges(cus))), "memory": str(mem)}}
               for g, cus, mem in shares]
    devices = [{"driver": DRIVER, "pool": node_name, "device": f"gpu-{g}", "shareID": f"s{g}",
                "data": {"gpu": g, "id": f"{node_name}-g{g}", "cus": cus, "burstCus": "", "memoryBytes": mem,
                         "memoryLimitBytes": mem, "class": "memory-bound"}} for g, cus, mem in shares]
    status: dict = {"allocation": {"devices": {"results": results}}}
    if prepared:
        status["devices"] = devices
    return {"metadata": {"uid": uid, "namespace": "ml", "name": name, "resourceVersion": "7",
                         "creationTimestamp": "2026-12-01T12:00:00Z"}, "status": status}


def test_a_prepared_claim_is_a_tenant_view_with_its_exact_cu_sets() -> None:
    view = claim_view(claim("c-1", "llama", [(0, "0-63", 60 * GIB)]))
    assert (view.key, view.node_name, view.terminal) == ("ml/claim:llama", "n0", False)
    a = parse_assignment(view.annotations[ASSIGNMENT_ANNOTATION])
    assert a.gpus[0].cus == frozenset(range(64)) and a.gpus[0].memoryBytes == 60 * GIB
    assert a.workload_class == "memory-bound"


def test_allocated_but_unprepared_or_foreign_claims_hold_nothing() -> None:
    assert ASSIGNMENT_ANNOTATION not in claim_view(claim("c-1", "x", [(0, "0-63", GIB)], prepared=False)).annotations
    other = claim("c-2", "y", [(0, "0-63", GIB)])
    for d in other["status"]["devices"]:
        d["driver"] = "gpu.amd.com"
    assert claim_view(other).node_name is None
    bad = claim("c-3", "z", [(0, "0-63", GIB)])
    bad["status"]["devices"][0]["data"]["cus"] = "zero to sixty-three"
    assert ASSIGNMENT_ANNOTATION not in claim_view(bad).annotations


def test_extender_places_around_a_dra_claim() -> None:
    cluster = MemoryCluster()
    cluster.add_node(node())
    cluster.add_pod(claim_view(claim("c-1", "llama", [(0, "0-127", 150 * GIB)])))
    engine = Engine(cluster, PolicyStore())
    engine.sync()
    whole = PodView("p-1", "ml", "whole", annotations={"gpuslice.io/compute": "1000m", "gpuslice.io/memory": "8Gi"})
    cluster.add_pod(whole)
    assert engine.filter(whole, names=["n0"]).passed == []
    big = PodView("p-2", "ml", "big", annotations={"gpuslice.io/compute": "250m", "gpuslice.io/memory": "60Gi"})
    cluster.add_pod(big)
    assert engine.filter(big, names=["n0"]).passed == []  # 42Gi of memory left
    small = PodView("p-3", "ml", "small", annotations={"gpuslice.io/compute": "250m", "gpuslice.io/memory": "30Gi"})
    cluster.add_pod(small)
    assert engine.filter(small, names=["n0"]).passed == ["n0"]
    assert engine.bind("ml", "small", "p-3", "n0") == ""
    got = parse_assignment(cluster.get_pod("ml", "small").annotations[ASSIGNMENT_ANNOTATION])
    assert not got.gpus[0].cus & frozenset(range(128))


def test_claim_events_free_and_take_capacity() -> None:
    cluster = KubeCluster(api=None)  # type: ignore[arg-type] # reads only: no API calls are made here
    cluster.replace_nodes([node()])
    engine = Engine(cluster, PolicyStore())
    engine.sync()
    freed: list[str] = []
    watch = ClaimWatch(api=None, cluster=cluster, engine=engine, feed=threading.RLock(),  # type: ignore[arg-type]
                       on_freed=freed.append)
    obj = claim("c-1", "llama", [(0, "0-255", 60 * GIB)])
    watch.apply("ADDED", claim_view(obj))
    assert len(engine.ledger.node("n0").gpu(0).guaranteed) == 256
    assert [p.key for p in cluster.list_pods()] == ["ml/claim:llama"]
    engine.sync()  # a rebuild (start-up, lost watch) keeps the claim: it is in the cluster's views
    assert len(engine.ledger.node("n0").gpu(0).guaranteed) == 256
    obj["status"] = {}  # the claim controller deallocated it
    watch.apply("MODIFIED", claim_view(obj))
    assert engine.ledger.node("n0").gpu(0).guaranteed == frozenset() and freed == ["n0"]
    assert cluster.list_pods() == []
    watch.apply("ADDED", claim_view(claim("c-2", "again", [(0, "0-63", GIB)])))
    watch.apply("DELETED", claim_view(claim("c-2", "again", [(0, "0-63", GIB)])))
    assert engine.ledger.entry("c-2") is None and freed == ["n0", "n0"]


def test_views_round_trip_through_json() -> None:
    text = claim_view(claim("c-1", "pair", [(0, "0-63", GIB), (1, "64-127", GIB)])).annotations[ASSIGNMENT_ANNOTATION]
    assert [g["index"] for g in json.loads(text)["gpus"]] == [0, 1]


def test_a_relist_gives_filter_every_claims_gpuslice_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim watch's listing also fills the engine's claim specs (engine/dra_requests.py); an API
    server without resource.k8s.io/v1 leaves them unwatched (a pod's claims then ask for nothing)."""
    cluster = KubeCluster(api=None)  # type: ignore[arg-type]
    engine = Engine(cluster, PolicyStore())
    watch = ClaimWatch(api=None, cluster=cluster, engine=engine, feed=threading.RLock())  # type: ignore[arg-type]
    spec = {"devices": {"requests": [{"name": "gpu", "exactly": {
        "deviceClassName": "gpuslice", "capacity": {"requests": {"computeUnits": "64", "memory": "60Gi"}}}}]}}
    listed = [claim("c-1", "llama", [(0, "0-63", GIB)]) | {"spec": spec}]
    monkeypatch.setattr(claims_module, "list_claims", lambda api: ([], ""))
    watch.relist()
    assert not engine.claims.watching and engine.claims.shares("ml", ["llama"]) == ()
    monkeypatch.setattr(claims_module, "list_claims", lambda api: (listed, "9"))
    assert watch.relist() == "9"
    (share,) = engine.claims.shares("ml", ["llama"])
    assert (share.cus, share.memory, share.count) == (64, 60 * GIB, 1)


def allocated(uid: str, name: str, info: GpuInfo, cus: int, memory: str, node_name: str = "n0",
              shadow_of: str | None = None) -> dict:
    """A claim kube-scheduler allocated on `info` (by its device name) that no agent has prepared yet."""
    result = {"request": "gpu", "driver": DRIVER, "pool": node_name, "device": device_name(info), "shareID": "a1",
              "consumedCapacity": {"computeUnits": str(cus), "memory": memory}}
    meta = {"uid": uid, "namespace": "ml", "name": name, "resourceVersion": "7",
            "creationTimestamp": "2026-12-01T12:00:00Z"}
    if shadow_of:
        meta["labels"] = {SHADOW_OF: shadow_of}
    return {"metadata": meta, "status": {"allocation": {"devices": {"results": [result]}}}}


def kube_engine(name: str = "n0") -> tuple[KubeCluster, Engine, ClaimWatch, GpuInfo]:
    cluster = KubeCluster(api=None)  # type: ignore[arg-type] # reads only: no API calls are made here
    n = node(name)
    cluster.replace_nodes([n])
    engine = Engine(cluster, PolicyStore())
    engine.sync()
    watch = ClaimWatch(api=None, cluster=cluster, engine=engine, feed=threading.RLock())  # type: ignore[arg-type]
    return cluster, engine, watch, engine.ledger.node(name).gpu(0).info


def test_an_allocated_unprepared_claim_holds_its_consumed_capacity() -> None:
    """kube-scheduler allocated 64 CUs / 60Gi of GPU 0; until the agent prepares the claim the extender
    must not hand those out (else the agent refuses the claim at Prepare and the DRA pod waits)."""
    cluster, engine, watch, info = kube_engine()
    mine = Assignment("n0", (GpuAssignment(0, info.id, frozenset(range(64)), frozenset(), 132 * GIB, 132 * GIB),),
                      "memory-bound", "binpack")
    first = PodView("p-1", "ml", "first", annotations={ASSIGNMENT_ANNOTATION: mine.to_json()}, node_name="n0",
                    phase="Running")
    cluster.put_pod(first)
    engine.observe_pod(first)
    first_cus = engine.ledger.node("n0").gpu(0).guaranteed
    assert len(first_cus) == 64
    watch.event("ADDED", allocated("c-1", "llama", info, 64, "60Gi"))
    gpu = engine.ledger.node("n0").gpu(0)
    held = gpu.guaranteed - first_cus
    assert len(held) == 64 and is_xcc_complete(held, info.xcds) and not held & first_cus
    assert engine.ledger.entry("c-1") is not None and cluster.list_pods()[-1].key == "ml/claim:llama"
    fits = PodView("p-2", "ml", "thirty", annotations={"gpuslice.io/compute": "250m", "gpuslice.io/memory": "30Gi"})
    assert engine.filter(fits, names=["n0"]).passed == []  # 192 - 132 - 60 = 0Gi left
    engine.sync()  # a rebuild keeps the provisional share: it is in the cluster's claim views
    assert engine.ledger.node("n0").gpu(0).guaranteed == gpu.guaranteed


def test_a_shadow_claim_is_not_counted_twice() -> None:
    """Shadow claims mirror extender pods the ledger already holds: counting them would double-book."""
    cluster, engine, watch, info = kube_engine()
    watch.event("ADDED", allocated("c-9", "shadow", info, 64, "60Gi", shadow_of="p-1"))
    assert engine.ledger.entry("c-9") is None and cluster.list_pods() == []
    assert engine.ledger.node("n0").gpu(0).guaranteed == frozenset()


def test_preparing_replaces_the_provisional_set_with_the_agents() -> None:
    cluster, engine, watch, info = kube_engine()
    obj = allocated("c-1", "llama", info, 64, "60Gi")
    watch.event("ADDED", obj)
    watch.event("MODIFIED", obj)  # an unrelated update keeps the set first chosen
    provisional = engine.ledger.node("n0").gpu(0).guaranteed
    assert len(provisional) == 64
    obj["status"]["devices"] = [{"driver": DRIVER, "pool": "n0", "device": device_name(info), "shareID": "a1",
                                 "data": {"gpu": 0, "id": info.id, "cus": "64-127", "burstCus": "",
                                          "memoryBytes": 60 * GIB, "memoryLimitBytes": 60 * GIB,
                                          "class": "memory-bound"}}]
    watch.event("MODIFIED", obj)
    assert engine.ledger.node("n0").gpu(0).guaranteed == frozenset(range(64, 128))
    assert engine.ledger.node("n0").gpu(0).memory_used == 60 * GIB


def test_a_claim_on_an_unknown_device_waits_for_the_next_relist(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, engine, watch, info = kube_engine()
    stranger = GpuInfo(index=0, id="0xFEED", model="MI300X", computeUnits=304, xcds=8, shaderEngines=32,
                       memoryBytes=192 * GIB, healthy=True)
    watch.event("ADDED", allocated("c-1", "early", stranger, 64, "60Gi", node_name="n1"))
    assert engine.ledger.entry("c-1") is None and cluster.list_pods() == []
    cluster.replace_nodes([node("n0"), node("n1")])
    engine.sync()
    stranger = engine.ledger.node("n1").gpu(0).info
    listed = [allocated("c-1", "early", stranger, 64, "60Gi", node_name="n1")]
    monkeypatch.setattr(claims_module, "list_claims", lambda api: (listed, "9"))
    watch.relist()
    assert len(engine.ledger.node("n1").gpu(0).guaranteed) == 64


def test_one_shot_readers_see_allocated_claims_around_bound_pods_and_prepared_claims() -> None:
    """`top` and `plan --kubeconfig` (kube/snapshot.py) count an allocated, unprepared claim too; not a
    shadow claim, nor a prepared one twice."""
    n = node()
    info = GpuInfo(index=0, id="n0-g0", model="MI300X", computeUnits=304, xcds=8, shaderEngines=32,
                   memoryBytes=192 * GIB, healthy=True)
    prepared = claim("c-1", "ready", [(0, "0-63", 60 * GIB)])
    items = [prepared, allocated("c-2", "waiting", info, 64, "60Gi"),
             allocated("c-3", "shadow", info, 64, "60Gi", shadow_of="p-1")]
    (view,) = claims_module.provisional_views(items, [n], [claim_view(prepared)])
    got = parse_assignment(view.annotations[ASSIGNMENT_ANNOTATION])
    assert (view.key, view.node_name, got.gpus[0].memoryBytes) == ("ml/claim:waiting", "n0", 60 * GIB)
    assert len(got.gpus[0].cus) == 64 and not got.gpus[0].cus & frozenset(range(64))
    assert claims_module.provisional_views(items[:1], [n], [claim_view(prepared)]) == []


def test_a_provisional_set_lost_to_a_concurrent_bind_is_chosen_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bind (outside the feed lock) can take the chosen CUs before the claim is counted: the claim
    then chooses again rather than keeping, and re-offering at every relist, a set the ledger refuses."""
    cluster, engine, watch, info = kube_engine()
    mine = Assignment("n0", (GpuAssignment(0, info.id, frozenset(range(64)), frozenset(), GIB, GIB),),
                      "memory-bound", "binpack")
    first = PodView("p-1", "ml", "first", annotations={ASSIGNMENT_ANNOTATION: mine.to_json()}, node_name="n0",
                    phase="Running")
    cluster.put_pod(first)
    engine.observe_pod(first)
    stale = iter([frozenset(range(64))])  # what the chooser saw before the bind took it
    real = claims_module.choose_cus
    monkeypatch.setattr(claims_module, "choose_cus", lambda free, n, xcds: next(stale, None) or real(free, n, xcds))
    watch.event("ADDED", allocated("c-1", "llama", info, 64, "60Gi"))
    held = engine.ledger.node("n0").gpu(0).guaranteed - frozenset(range(64))
    assert len(held) == 64 and engine.ledger.entry("c-1") is not None
    (view,) = [v for v in cluster.list_pods() if v.uid == "c-1"]
    assert parse_assignment(view.annotations[ASSIGNMENT_ANNOTATION]).gpus[0].cus == held
