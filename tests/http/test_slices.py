"""The recorded payloads with gpuslice annotations added to the pod, in both forms."""

from __future__ import annotations

import json
import re

import pytest

from extender.core.assignment import ASSIGNMENT_ANNOTATION, parse_assignment
from extender.engine.demo import FIXTURE_NODES, GPU_NODES
from tests.http.conftest import Extender, load, sample, with_annotations

SMALL = {"gpuslice.io/compute": "250m", "gpuslice.io/memory": "16Gi", "gpuslice.io/class": "compute-bound"}
# 8 GPUs with 150 GiB each: only nodes whose eight GPUs are all (nearly) empty can take it.
WHOLE_NODE = {"gpuslice.io/compute": "500m", "gpuslice.io/memory": "150Gi", "gpuslice.io/count": "8"}
ALL_NAMES = [*GPU_NODES, *FIXTURE_NODES]


def names_request(annotations: dict[str, str], names: list[str] | None = None) -> dict:
    req = with_annotations(load("ncc-true-filter-01.request.json"), annotations)
    req["NodeNames"] = names or ALL_NAMES
    return req


def test_small_slice_fits_everywhere_names_form(extender: Extender) -> None:
    resp = extender.post("filter", names_request(SMALL))
    assert resp == {"NodeNames": ALL_NAMES, "FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": ""}


def test_fitting_and_failing_nodes_with_actionable_reasons(extender: Extender) -> None:
    resp = extender.post("filter", names_request(WHOLE_NODE))
    assert resp["Error"] == "" and resp["FailedAndUnresolvableNodes"] == {}
    assert resp["NodeNames"] == ["mi300x-3", *FIXTURE_NODES]  # every node that fits, not one pre-picked
    assert set(resp["FailedNodes"]) == {"mi300x-0", "mi300x-1", "mi300x-2"}
    for reason in resp["FailedNodes"].values():
        # e.g. "gpuslice: 7/8 GPUs can take the slice (pod needs 8): gpu 0: needs 150.0Gi memory, 108.0Gi free"
        assert reason.startswith("gpuslice: ")
        assert re.search(r"\d+/8 GPUs can take the slice \(pod needs 8\): gpu \d+: needs .+ free", reason), reason


def test_nodes_form_echoes_passing_node_objects(extender: Extender) -> None:
    req = with_annotations(load("ncc-false-filter-01.request.json"), WHOLE_NODE)
    # a GPU node the request carries itself: its inventory annotation is read from the request
    node_b = next(n for n in req["Nodes"]["items"] if n["metadata"]["name"] == "node-b")
    resp = extender.post("filter", req)
    assert "NodeNames" not in resp
    assert resp["Nodes"]["items"] == req["Nodes"]["items"]
    assert node_b in resp["Nodes"]["items"]
    assert resp["FailedNodes"] == {}


def test_nodes_form_with_failing_nodes(extender: Extender) -> None:
    from extender.core.inventory import INVENTORY_ANNOTATION
    from extender.engine.demo import gpu_node

    req = with_annotations(load("ncc-false-filter-01.request.json"), WHOLE_NODE)
    full = json.loads(json.dumps(req["Nodes"]["items"][1]))
    full["metadata"]["name"] = "mi300x-0"  # a demo node with tenants, sent with its agent annotation
    full["metadata"]["annotations"] = {INVENTORY_ANNOTATION: gpu_node("mi300x-0").annotations[INVENTORY_ANNOTATION]}
    req["Nodes"]["items"].append(full)
    resp = extender.post("filter", req)
    assert [n["metadata"]["name"] for n in resp["Nodes"]["items"]] == ["bad-node-c", "node-a", "node-b"]
    assert list(resp["FailedNodes"]) == ["mi300x-0"]
    assert "GPUs can take the slice" in resp["FailedNodes"]["mi300x-0"]


@pytest.mark.parametrize("form", ["names", "nodes"])
@pytest.mark.parametrize(("key", "value", "words"), [
    ("gpuslice.io/compute", "lots", "not a Kubernetes quantity"),
    ("gpuslice.io/class", "fast", "unknown class"),
    ("gpuslice.io/computeLimit", "100m", "less than gpuslice.io/compute"),
    ("gpuslice.io/vendor", "nvidia", "unsupported vendor"),
])
def test_malformed_annotations_make_every_node_unresolvable(extender: Extender, form: str, key: str, value: str,
                                                            words: str) -> None:
    annotations = {**SMALL, key: value}
    if form == "names":
        req = names_request(annotations)
        nodes = ALL_NAMES
    else:
        req = with_annotations(load("ncc-false-filter-01.request.json"), annotations)
        nodes = ["bad-node-c", "node-a", "node-b"]
    before = extender.engine.ledger.snapshot()
    resp = extender.post("filter", req)
    assert resp["Error"] == "" and resp["FailedNodes"] == {}
    assert resp.get("NodeNames", []) == [] and resp.get("Nodes", {"items": []})["items"] == []
    assert list(resp["FailedAndUnresolvableNodes"]) == nodes
    for message in resp["FailedAndUnresolvableNodes"].values():
        assert key in message and repr(value) in message and words in message
    assert extender.engine.ledger.snapshot() == before


def test_prioritize_scores_gpuslice_pods(extender: Extender) -> None:
    req = with_annotations(load("ncc-true-prioritize-01.request.json"), WHOLE_NODE)
    req["NodeNames"] = ALL_NAMES
    scores = dict((h["Host"], h["Score"]) for h in extender.post("prioritize", req))
    assert list(scores) == ALL_NAMES
    assert all(scores[n] == 0 for n in ("mi300x-0", "mi300x-1", "mi300x-2"))  # no room: lowest
    assert all(1 <= scores[n] <= 10 for n in ("mi300x-3", *FIXTURE_NODES))


def test_prioritize_binpack_prefers_shared_gpus(extender: Extender) -> None:
    req = with_annotations(load("ncc-true-prioritize-01.request.json"),
                           {"gpuslice.io/compute": "125m", "gpuslice.io/memory": "8Gi"})
    req["NodeNames"] = ["mi300x-0", "mi300x-3"]
    scores = dict((h["Host"], h["Score"]) for h in extender.post("prioritize", req))
    assert scores["mi300x-0"] > scores["mi300x-3"]  # binpack: a partly used GPU beats an empty node


@pytest.mark.parametrize("fixture", ["ncc-true", "ncc-false"])
def test_filter_prioritize_bind_writes_the_assignment(extender: Extender, fixture: str) -> None:
    filt = with_annotations(load(f"{fixture}-filter-01.request.json"), SMALL)
    prio = with_annotations(load(f"{fixture}-prioritize-01.request.json"), SMALL)
    bind = load(f"{fixture}-bind-01.request.json")
    assert "node-b" in json.dumps(extender.post("filter", filt))
    assert {h["Host"] for h in extender.post("prioritize", prio)} == {"node-a", "node-b"}
    assert extender.post("bind", bind) == {"Error": ""}

    pod = next(p for p in extender.cluster.list_pods() if p.uid == bind["PodUID"])
    assert pod.node_name == "node-b"
    a = parse_assignment(pod.annotations[ASSIGNMENT_ANNOTATION])
    assert a.node == "node-b" and a.workload_class == "compute-bound" and len(a.gpus) == 1
    assert len(a.gpus[0].cus) == 96 and a.gpus[0].memoryBytes == 16 * 2**30  # 250m of 304 CUs -> 96 balanced

    ledger = extender.ledger()
    node_b = next(n for n in ledger["nodes"] if n["node"] == "node-b")
    tenants = [t for g in node_b["gpus"] for t in g["tenants"]]
    assert [(t["pod"], t["uid"], t["class"]) for t in tenants] == [
        (f"default/{bind['PodName']}", bind["PodUID"], "compute-bound")]
    gpu = a.gpus[0].index

    m = extender.metrics()
    on_gpu = {"node": "node-b", "gpu": str(gpu)}
    assert sample(m, "gpuslice_gpu_compute_units", **on_gpu, state="guaranteed") == 96
    assert sample(m, "gpuslice_gpu_compute_units", **on_gpu, state="burst") == 32
    assert sample(m, "gpuslice_gpu_compute_units", **on_gpu, state="free") == 304 - 32 - 96
    assert sample(m, "gpuslice_gpu_memory_bytes", **on_gpu, state="guaranteed") == 16 * 2**30
    assert sample(m, "gpuslice_gpu_memory_bytes", **on_gpu, state="limit") == 16 * 2**30
    assert sample(m, "gpuslice_gpu_tenants", **on_gpu, **{"class": "compute-bound"}) == 1
    assert sample(m, "gpuslice_gpu_tenants", **on_gpu, **{"class": "memory-bound"}) == 0
    assert sample(m, "gpuslice_bind_total", result="ok") == 1
    assert sample(m, "gpuslice_extender_request_duration_seconds_count", verb="bind") == 1
    assert 0 <= sample(m, "gpuslice_fragmentation_ratio") <= 1


def test_bind_to_a_node_without_room_fails_and_changes_nothing(extender: Extender) -> None:
    req = names_request(WHOLE_NODE)
    extender.post("filter", req)
    before = extender.engine.ledger.snapshot()
    meta = req["Pod"]["metadata"]
    resp = extender.post("bind", {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"],
                                  "Node": "mi300x-0"})
    assert resp["Error"].startswith("gpuslice: node mi300x-0: ")
    assert extender.engine.ledger.snapshot() == before
    assert sample(extender.metrics(), "gpuslice_bind_total", result="error") == 1


def test_filter_rejections_are_counted_by_reason(extender: Extender) -> None:
    extender.post("filter", names_request(WHOLE_NODE))
    extender.post("filter", names_request({**SMALL, "gpuslice.io/compute": "lots"}))
    m = extender.metrics()
    assert sample(m, "gpuslice_filter_rejections_total", reason="compute") == 3
    assert sample(m, "gpuslice_filter_rejections_total", reason="invalid-request") == len(ALL_NAMES)


def test_preempt_keeps_only_nodes_where_evicting_the_victims_frees_room(extender: Extender) -> None:
    from extender.engine.demo import TENANTS

    tp2 = next(t for t in TENANTS if t.name == "llama-70b-tp2")
    decode = next(t for t in TENANTS if t.name == "llama-8b-decode-0")
    req = with_annotations(load("ncc-true-preempt-01.request.json"),
                           {"gpuslice.io/compute": "750m", "gpuslice.io/memory": "150Gi", "gpuslice.io/count": "7"})
    req["NodeNameToMetaVictims"] = {
        "mi300x-1": {"Pods": [{"UID": tp2.uid}], "NumPDBViolations": 1},  # frees two GPUs: 7 fit again
        "mi300x-0": {"Pods": [{"UID": decode.uid}], "NumPDBViolations": 0},  # gpu 0 stays full-ish: no
    }
    resp = extender.post("preempt", req)
    assert resp == {"NodeNameToMetaVictims": {"mi300x-1": {"Pods": [{"UID": tp2.uid}], "NumPDBViolations": 1}}}
