"""DRA pods routed to the extender by the marker resource: the recorded kube-scheduler payloads
(tests/fixtures/kube-scheduler, ncc-true session) with the recorded pod turned into a DRA pod — a
ResourceClaim from a template (spec.resourceClaims + the name the resource-claim controller wrote into
status.resourceClaimStatuses), the marker `gpuslice.io/dra-routed` in its limits, schedulerName
gpuslice — as kube-scheduler v1.36 sends it to filter, prioritize and bind."""

from __future__ import annotations

import copy
from typing import Any

from extender.core.assignment import ASSIGNMENT_ANNOTATION
from extender.engine.cluster import MemoryCluster, PodView
from extender.engine.demo import gpu_node
from extender.engine.dra_requests import MARKER_RESOURCE
from tests.engine.test_dra_requests import claim
from tests.http.conftest import Extender, MakeExtender, load

NODES = ["node-a", "node-b"]


def dra_args(recorded: dict[str, Any], claim_name: str) -> dict[str, Any]:
    """The recorded ExtenderArgs with its pod asking for a gpuslice share by ResourceClaim."""
    out = copy.deepcopy(recorded)
    pod = out["Pod"]
    pod["spec"]["schedulerName"] = "gpuslice"
    resources = pod["spec"]["containers"][0]["resources"]
    for kind in ("limits", "requests"):
        resources[kind].pop("amd.com/gpu", None)
        resources[kind][MARKER_RESOURCE] = "1"
    resources["claims"] = [{"name": "gpu"}]
    pod["spec"]["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": "gpu-slice-64cu-60gi"}]
    pod["status"]["resourceClaimStatuses"] = [{"name": "gpu", "resourceClaimName": claim_name}]
    out["NodeNames"] = list(NODES)
    return out


def full_node_a(make_extender: MakeExtender) -> Extender:
    """node-a's GPU holds two memory-bound extender pods (the policy's maximum); node-b's is empty; the
    claim watch has seen a memory-bound and a compute-bound 64-CU/60Gi claim."""
    cluster = MemoryCluster()
    for name in NODES:
        cluster.add_node(gpu_node(name, gpus=1))
    ext = make_extender(cluster)
    for i in range(2):
        pod = PodView(uid=f"mb-{i}", namespace="default", name=f"mb-{i}", annotations={
            "gpuslice.io/compute": "250m", "gpuslice.io/memory": "30Gi", "gpuslice.io/class": "memory-bound"})
        cluster.add_pod(pod)
        assert ext.engine.bind("default", pod.name, pod.uid, "node-a") == ""
    ext.engine.claims.replace([claim("gpu-pod-1-gpu-mb"), claim("gpu-pod-1-gpu-cb", cls="compute-bound")])
    return ext


def test_filter_keeps_a_memory_bound_dra_pod_off_a_gpu_at_its_class_limit(make_extender: MakeExtender) -> None:
    ext = full_node_a(make_extender)
    got = ext.post("filter", dra_args(load("ncc-true-filter-01.request.json"), "gpu-pod-1-gpu-mb"))
    assert got["NodeNames"] == ["node-b"] and got["Error"] == ""
    assert set(got["FailedNodes"]) == {"node-a"} and got["FailedNodes"]["node-a"].startswith("gpuslice: ")
    cb = ext.post("filter", dra_args(load("ncc-true-filter-01.request.json"), "gpu-pod-1-gpu-cb"))
    assert cb["NodeNames"] == NODES and cb["FailedNodes"] == {}


def test_prioritize_scores_a_dra_pod(make_extender: MakeExtender) -> None:
    ext = full_node_a(make_extender)
    args = dra_args(load("ncc-true-prioritize-01.request.json"), "gpu-pod-1-gpu-cb")
    scores = {h["Host"]: h["Score"] for h in ext.post("prioritize", args)}
    assert set(scores) == set(NODES) and scores["node-a"] != scores["node-b"]


def test_a_claim_not_yet_seen_fails_the_nodes_for_a_retry(make_extender: MakeExtender) -> None:
    ext = full_node_a(make_extender)
    got = ext.post("filter", dra_args(load("ncc-true-filter-01.request.json"), "gpu-pod-1-gpu-new"))
    assert got["NodeNames"] == [] and got["FailedAndUnresolvableNodes"] == {}
    assert all("not seen yet" in why for why in got["FailedNodes"].values())


def test_bind_posts_a_plain_binding_for_a_dra_pod(make_extender: MakeExtender) -> None:
    ext = full_node_a(make_extender)
    ext.post("filter", dra_args(load("ncc-true-filter-01.request.json"), "gpu-pod-1-gpu-mb"))
    ledger = ext.ledger()
    assert ext.post("bind", load("ncc-true-bind-01.request.json")) == {"Error": ""}  # Node: node-b
    pod = ext.cluster.get_pod("default", "gpu-pod-1")
    assert pod is not None and pod.node_name == "node-b" and ASSIGNMENT_ANNOTATION not in pod.annotations
    assert ext.ledger() == ledger  # the DRA allocator's share is the claim's; the agent prepares it
