"""Malformed requests get a 4xx with a JSON message, before the engine is touched; engine failures
become the verb's own error reply with HTTP 200."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from extender.core.inventory import INVENTORY_ANNOTATION
from extender.engine.demo import gpu_node
from extender.http.app import DEFAULT_MAX_BODY_BYTES
from tests.http.conftest import Extender, MakeExtender, load, sample, with_annotations

FILTER = load("ncc-true-filter-01.request.json")
BIND = load("ncc-true-bind-01.request.json")
SLICE = {"gpuslice.io/compute": "250m", "gpuslice.io/memory": "16Gi"}


def _edit(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    *parents, last = path.split(".")
    target = out
    for p in parents:
        target = target[p]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return out


_DELETE = object()

# (verb, raw body or JSON value, content type, expected status, words in the message)
CASES: list[tuple[str, Any, str, int, str]] = [
    ("filter", b"{not json", "application/json", 400, "not valid JSON"),
    ("filter", b"", "application/json", 400, "empty body"),
    ("filter", b"\xff\xfe", "application/json", 400, "not valid JSON"),
    ("filter", json.dumps(FILTER).encode(), "text/plain", 415, "Content-Type must be application/json"),
    ("filter", json.dumps(FILTER).encode(), "", 415, "Content-Type must be application/json"),
    ("bind", json.dumps(BIND).encode(), "application/x-www-form-urlencoded", 415, "application/json"),
    ("filter", [1, 2], "application/json", 400, "must be a JSON object"),
    ("filter", "Pod", "application/json", 400, "must be a JSON object"),
    ("filter", {}, "application/json", 400, "Pod"),
    ("filter", _edit(FILTER, "NodeNames", None), "application/json", 400, "one of Nodes"),
    ("filter", _edit(FILTER, "Nodes", {"items": []}), "application/json", 400, "not both"),
    ("filter", _edit(FILTER, "NodeNames", "node-a"), "application/json", 400, "NodeNames"),
    ("filter", _edit(FILTER, "NodeNames", [1, 2]), "application/json", 400, "NodeNames.0"),
    ("filter", _edit(FILTER, "Pod.metadata", _DELETE), "application/json", 400, "Pod.metadata"),
    ("filter", _edit(FILTER, "Pod.metadata.uid", _DELETE), "application/json", 400, "metadata.uid"),
    ("filter", _edit(FILTER, "Pod.metadata.name", ""), "application/json", 400, "Pod.metadata.name"),
    ("filter", _edit(FILTER, "Pod.metadata.annotations", {"gpuslice.io/compute": 250}), "application/json", 400,
     "Pod.metadata.annotations.gpuslice.io/compute"),
    ("filter", _edit(FILTER, "Pod.metadata.labels", ["a"]), "application/json", 400, "Pod.metadata.labels"),
    ("filter", _edit(FILTER, "Pod.spec.containers", {"c": 1}), "application/json", 400, "Pod.spec.containers"),
    ("filter", _edit(FILTER, "Pod.spec.containers", [{"resources": {"requests": {"cpu": "lots"}}}]),
     "application/json", 400, "cpu"),
    ("filter", _edit(load("ncc-false-filter-01.request.json"), "Nodes.items", [{"metadata": {}}]),
     "application/json", 400, "Nodes.items.0.metadata.name"),
    ("prioritize", _edit(FILTER, "Pod", None), "application/json", 400, "Pod"),
    ("prioritize", _edit(FILTER, "NodeNames", {"a": 1}), "application/json", 400, "NodeNames"),
    ("bind", {}, "application/json", 400, "PodName"),
    ("bind", _edit(BIND, "PodUID", _DELETE), "application/json", 400, "PodUID"),
    ("bind", _edit(BIND, "Node", ""), "application/json", 400, "Node"),
    ("bind", _edit(BIND, "Node", 7), "application/json", 400, "Node"),
    ("preempt", {"Pod": FILTER["Pod"]}, "application/json", 400, "NodeNameToVictims"),
]


@pytest.mark.parametrize(("verb", "body", "content_type", "status", "words"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_a_4xx_with_a_message_and_changes_nothing(extender: Extender, verb: str, body: Any,
                                                               content_type: str, status: int, words: str) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    before = extender.engine.ledger.snapshot()
    resp = extender.client.post(f"/scheduler/{verb}", data=data, headers={"Content-Type": content_type} if
                                content_type else {})
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.is_json
    assert words in resp.get_json()["error"]
    assert extender.engine.ledger.snapshot() == before
    assert sum(extender.engine.stats.binds.values()) == 0


def test_oversize_body_is_413(make_extender: MakeExtender) -> None:
    ext = make_extender(max_body_bytes=4096)
    before = ext.engine.ledger.snapshot()
    body = with_annotations(FILTER, {**SLICE, "padding": "x" * 5000})
    resp = ext.client.post("/scheduler/filter", json=body)
    assert resp.status_code == 413
    assert "error" in resp.get_json()
    assert ext.engine.ledger.snapshot() == before
    assert ext.client.post("/scheduler/filter", json=with_annotations(FILTER, SLICE)).status_code == 200


def test_wrong_method_and_unknown_path_are_json_4xx(extender: Extender) -> None:
    resp = extender.client.get("/scheduler/filter")
    assert resp.status_code == 405 and "error" in resp.get_json()
    resp = extender.client.post("/nope", json={})
    assert resp.status_code == 404 and "error" in resp.get_json()


def realistic_node(name: str) -> dict[str, Any]:
    """A Node as a real kube-scheduler sends it with nodeCacheCapable false: agent inventory, many
    labels, managedFields, images, conditions."""
    node = copy.deepcopy(load("ncc-false-filter-01.request.json")["Nodes"]["items"][1])
    meta = node["metadata"]
    meta["name"] = name
    meta["labels"] = {**{f"node.example.com/label-{i}": f"value-{i}" for i in range(12)},
                      "kubernetes.io/hostname": name, "amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM"}
    meta["annotations"] = {INVENTORY_ANNOTATION: gpu_node(name).annotations[INVENTORY_ANNOTATION],
                           "node.alpha.kubernetes.io/ttl": "0",
                           "volumes.kubernetes.io/controller-managed-attach-detach": "true"}
    meta["managedFields"] = meta["managedFields"] * 4
    status = node["status"]
    status["images"] = [{"names": [f"registry.example.com/team/image-{i}@sha256:{'ab' * 32}",
                                   f"registry.example.com/team/image-{i}:v1.2.{i}"], "sizeBytes": 123456789 + i}
                        for i in range(10)]
    status["conditions"] = status["conditions"] * 5
    status["addresses"] = [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": name}]
    return node


def test_a_5000_node_nodelist_fits_the_default_limit(make_extender: MakeExtender) -> None:
    req = load("ncc-false-filter-01.request.json")  # pass-through pod: this measures the wire, not placement
    req["Nodes"]["items"] = [realistic_node(f"gpu-{i:04d}") for i in range(5000)]
    body = json.dumps(req).encode()
    assert len(body) < DEFAULT_MAX_BODY_BYTES, f"{len(body) / 2**20:.1f} MiB"
    ext = make_extender()
    resp = ext.client.post("/scheduler/filter", data=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 200
    out = resp.get_json()
    assert len(out["Nodes"]["items"]) == 5000 and out["Nodes"]["items"][17] == req["Nodes"]["items"][17]


def _boom(*_args: Any) -> Any:
    raise RuntimeError("placer exploded")


def test_unexpected_engine_failure_is_the_verbs_error_with_http_200(make_extender: MakeExtender) -> None:
    ext = make_extender(engine_kwargs={"placer": _boom, "checker": _boom, "scorer": _boom})
    before = ext.engine.ledger.snapshot()
    req = with_annotations(FILTER, SLICE)
    assert ext.post("filter", req) == {"Error": "gpuslice: internal error in filter: RuntimeError: placer exploded"}
    assert ext.post("prioritize", req) == [{"Host": n, "Score": 0} for n in req["NodeNames"]]
    # the pod was remembered by filter before the placer failed, so bind reaches the placer too
    resp = ext.post("bind", BIND)
    assert "internal error in bind" in resp["Error"] and "placer exploded" in resp["Error"]
    assert ext.engine.ledger.snapshot() == before
    m = ext.metrics()
    assert sample(m, "gpuslice_extender_request_duration_seconds_count", verb="filter") == 1


def test_readyz_waits_for_the_ledger_sync(make_extender: MakeExtender) -> None:
    ext = make_extender(sync=False)
    assert ext.client.get("/readyz").status_code == 503
    assert ext.client.get("/healthz").status_code == 200
    ext.engine.sync()
    assert ext.client.get("/readyz").status_code == 200


def test_version_and_debug_ledger(extender: Extender) -> None:
    v = extender.client.get("/version").get_json()
    assert v["version"] and v["policyVersion"] == extender.policies.current.version
    d = extender.ledger()
    assert {"nodes", "expiredReservations", "skippedNodes", "rebuildProblems", "policyVersion",
            "policyReloadError", "synced"} <= set(d)
    assert d["rebuildProblems"] == [] and d["skippedNodes"] == {} and d["policyReloadError"] is None
    tenants = [t["pod"] for n in d["nodes"] for g in n["gpus"] for t in g["tenants"]]
    assert "serving/llama-8b-decode-0" in tenants


def test_skipped_nodes_show_in_debug_ledger(make_extender: MakeExtender) -> None:
    from extender.engine.cluster import NodeView
    from extender.engine.demo import demo_cluster

    cluster = demo_cluster()
    cluster.add_node(NodeView("broken", annotations={INVENTORY_ANNOTATION: "[{"}))
    ext = make_extender(cluster=cluster)
    assert "broken" in ext.ledger()["skippedNodes"]
    assert sample(ext.metrics(), "gpuslice_skipped_nodes") == 1
    resp = ext.post("filter", {**with_annotations(FILTER, SLICE), "NodeNames": ["broken", "node-a"]})
    assert resp["NodeNames"] == ["node-a"] and "inventory" in resp["FailedNodes"]["broken"]
