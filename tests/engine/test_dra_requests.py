"""A DRA pod's gpuslice ResourceClaims read as the slice request the fit rule checks
(engine/dra_requests.py), and the engine's use of it: filter and prioritize judge a DRA pod by the class
rules, bind never gives it an assignment."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from extender.core.assignment import ASSIGNMENT_ANNOTATION
from extender.core.errors import SliceRequestError
from extender.core.policy import Policy
from extender.engine.cluster import MemoryCluster, PodView
from extender.engine.demo import MI300X_CUS, gpu_node
from extender.engine.dra_requests import (
    DEVICE_CLASS,
    DRIVER,
    ClaimNotSeen,
    ClaimShare,
    ClaimSpecs,
    claim_names,
    claim_shares,
    dra_slice_request,
)
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine

GIB = 2**30


def claim(name: str, cus: str | None = "64", memory: str | None = "60Gi", cls: str | None = "memory-bound",
          device_class: str = DEVICE_CLASS, count: int | None = None, namespace: str = "default") -> dict[str, Any]:
    """A ResourceClaim as the API returns it (made from deploy/dra/claim-templates.yaml's shapes)."""
    capacity = {k: v for k, v in (("computeUnits", cus), ("memory", memory)) if v is not None}
    exactly: dict[str, Any] = {"deviceClassName": device_class, "allocationMode": "ExactCount"}
    if capacity:
        exactly["capacity"] = {"requests": capacity}
    if count is not None:
        exactly["count"] = count
    spec: dict[str, Any] = {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}}
    if cls is not None:
        spec["devices"]["config"] = [{"requests": ["gpu"], "opaque": {"driver": DRIVER, "parameters": {
            "apiVersion": "gpu.gpuslice.io/v1alpha1", "kind": "SliceParameters", "class": cls, "computeLimit": "96"}}}]
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"}, "spec": spec}


def test_claim_names_direct_and_from_templates() -> None:
    spec = [{"name": "gpu", "resourceClaimTemplateName": "gpu-slice-64cu-60gi"},
            {"name": "nic", "resourceClaimName": "rdma"}, {"name": "later", "resourceClaimTemplateName": "t"}]
    statuses = [{"name": "gpu", "resourceClaimName": "pod-gpu-x7k2p"}]
    assert claim_names(spec, statuses) == ("pod-gpu-x7k2p", "rdma")  # `later`: not made yet


def test_claim_shares_read_capacity_count_and_opaque_parameters() -> None:
    assert claim_shares(claim("c")) == (ClaimShare(1, 64, 60 * GIB, "memory-bound", 96, None),)
    assert claim_shares(claim("w", cus=None, memory=None, cls=None, count=2)) == (ClaimShare(2, None, None),)
    assert claim_shares(claim("other", device_class="nvidia")) == ()
    with pytest.raises(SliceRequestError, match="computeUnits"):
        claim_shares(claim("bad", cus="lots"))


def test_the_request_guarantees_the_claims_cus_never_more() -> None:
    policy = Policy()
    model = policy.models["MI300X"]
    req = dra_slice_request(claim_shares(claim("c")), policy)
    assert req is not None
    assert req.guaranteed_cus(policy, model, MI300X_CUS) == 64
    assert req.limit_cus(MI300X_CUS) <= 96 and req.compute_limit_millis >= req.compute_millis
    assert (req.memory_bytes, req.workload_class, req.count) == (60 * GIB, "memory-bound", 1)
    # The policy's rounding applies as to any pod (balanced: a 40-CU claim is checked as 64); with
    # rounding.mode exact, every atom-sized claim is checked as exactly its CUs on an MI300X.
    balanced = dra_slice_request([ClaimShare(1, 40, GIB)], policy)
    assert balanced is not None and balanced.guaranteed_cus(policy, model, MI300X_CUS) == 64
    exact = policy.model_copy(update={"rounding": policy.rounding.model_copy(update={"mode": "exact"})})
    for cus in range(8, 280, 8):
        got = dra_slice_request([ClaimShare(1, cus, GIB)], exact)
        assert got is not None and got.guaranteed_cus(exact, model, MI300X_CUS) == cus
    whole = dra_slice_request(claim_shares(claim("w", cus=None, memory=None, cls=None)), policy)
    assert whole is not None and whole.compute_millis == 1000 and whole.workload_class == policy.classes.default
    assert dra_slice_request([], policy) is None


def test_specs_before_a_watch_ask_nothing_then_name_unseen_claims() -> None:
    specs = ClaimSpecs()
    assert specs.shares("default", ["c"]) == ()  # no claim watch (demo, simulator): nothing to check
    specs.replace([claim("c")])
    assert len(specs.shares("default", ["c"])) == 1
    with pytest.raises(ClaimNotSeen, match="default/d"):
        specs.shares("default", ["d"])
    specs.put(claim("bad", cus="lots"))
    with pytest.raises(SliceRequestError):
        specs.shares("default", ["bad"])
    specs.drop(claim("c"))
    with pytest.raises(ClaimNotSeen):
        specs.shares("default", ["c"])


def _slice(cls: str) -> dict[str, str]:
    return {"gpuslice.io/compute": "250m", "gpuslice.io/memory": "30Gi", "gpuslice.io/class": cls}


def two_nodes() -> tuple[Engine, MemoryCluster]:
    """node-a's one GPU holds two memory-bound extender pods (the policy's maximum); node-b's is empty."""
    cluster = MemoryCluster()
    for name in ("node-a", "node-b"):
        cluster.add_node(gpu_node(name, gpus=1))
    engine = Engine(cluster, PolicyStore())
    engine.sync()
    for i in range(2):
        pod = PodView(uid=f"mb-{i}", namespace="default", name=f"mb-{i}", annotations=_slice("memory-bound"))
        cluster.add_pod(pod)
        assert engine.bind("default", pod.name, pod.uid, "node-a") == ""
    engine.claims.replace([claim("mb-claim"), claim("cb-claim", cls="compute-bound")])
    return engine, cluster


def dra_pod(name: str, claim_name: str, annotations: dict[str, str] | None = None) -> PodView:
    return PodView(uid=f"uid-{name}", namespace="default", name=name, annotations=annotations or {},
                   claims=(claim_name,), scheduler_name="gpuslice")


def test_filter_applies_the_class_rule_to_a_dra_pod() -> None:
    engine, _ = two_nodes()
    result = engine.filter(dra_pod("dra-mb", "mb-claim"), names=["node-a", "node-b"])
    assert result.passed == ["node-b"]
    assert "memory-bound" in result.failed["node-a"] or "class" in result.failed["node-a"]
    assert engine.stats.filter_rejections["class-rule"] == 1
    assert engine.filter(dra_pod("dra-cb", "cb-claim"), names=["node-a", "node-b"]).passed == ["node-a", "node-b"]


def test_prioritize_scores_a_dra_pod_like_the_same_extender_pod() -> None:
    engine, _ = two_nodes()
    names = ["node-a", "node-b"]
    dra = engine.prioritize(dra_pod("dra-cb", "cb-claim"), names=names)
    req = dra_slice_request(engine.claims.shares("default", ["cb-claim"]), engine.policies.current)
    assert req is not None
    same = PodView(uid="x", namespace="default", name="x", annotations={
        "gpuslice.io/compute": f"{req.compute_millis}m", "gpuslice.io/computeLimit": f"{req.compute_limit_millis}m",
        "gpuslice.io/memory": str(req.memory_bytes), "gpuslice.io/class": "compute-bound"})
    assert dra == engine.prioritize(same, names=names)
    assert dict(dra)["node-a"] != dict(dra)["node-b"]  # scored by the node's tenants, not neutral


def test_an_unseen_claim_fails_nodes_for_now_and_both_ways_is_refused() -> None:
    engine, _ = two_nodes()
    result = engine.filter(dra_pod("p", "unseen"), names=["node-a", "node-b"])
    assert result.passed == [] and "not seen yet" in result.failed["node-b"] and not result.unresolvable
    both = engine.filter(dra_pod("q", "mb-claim", _slice("compute-bound")), names=["node-a", "node-b"])
    assert set(both.unresolvable) == {"node-a", "node-b"} and "use one" in both.unresolvable["node-b"]


def test_bind_never_writes_an_assignment_for_a_dra_pod() -> None:
    engine, cluster = two_nodes()
    pod = dra_pod("dra-mb", "mb-claim")
    cluster.add_pod(pod)
    before = engine.ledger.node("node-b")
    assert engine.bind("default", pod.name, pod.uid, "node-b") == ""
    bound = cluster.get_pod("default", pod.name)
    assert bound is not None and bound.node_name == "node-b"
    assert ASSIGNMENT_ANNOTATION not in bound.annotations
    assert engine.ledger.entry(pod.uid) is None and engine.ledger.node("node-b") is before
    both = dra_pod("both", "mb-claim", _slice("compute-bound"))
    cluster.add_pod(both)
    assert "use one" in engine.bind("default", both.name, both.uid, "node-b")
    assert engine.ledger.entry(both.uid) is None


def test_a_node_where_the_allocator_could_pick_a_gpu_at_its_class_limit_fails() -> None:
    """kube-scheduler's DRA allocator picks the GPU and knows capacity only: a node with one GPU at its
    memory-bound limit and one with room fails a memory-bound DRA pod (an annotated pod, whose GPU the
    extender picks, passes), and passes a compute-bound one."""
    cluster = MemoryCluster()
    cluster.add_node(gpu_node("two", gpus=2))
    engine = Engine(cluster, PolicyStore())
    engine.sync()
    for i in range(3):
        pod = PodView(uid=f"mb-{i}", namespace="default", name=f"mb-{i}", annotations=_slice("memory-bound"))
        cluster.add_pod(pod)
        assert engine.bind("default", pod.name, pod.uid, "two") == ""
    per_gpu = Counter(g.index for i in range(3) for g in engine.ledger.entry(f"mb-{i}").assignment.gpus)  # type: ignore[union-attr]
    assert sorted(per_gpu.values()) == [1, 2]  # one GPU at the limit (2), one with room
    engine.claims.replace([claim("mb-claim"), claim("cb-claim", cls="compute-bound")])
    result = engine.filter(dra_pod("dra-mb", "mb-claim"), names=["two"])
    assert result.passed == [] and "DRA allocator" in result.failed["two"]
    assert "memory-bound tenants already" in result.failed["two"]
    assert engine.filter(dra_pod("dra-cb", "cb-claim"), names=["two"]).passed == ["two"]
    annotated = PodView(uid="a", namespace="default", name="a", annotations=_slice("memory-bound"))
    assert engine.filter(annotated, names=["two"]).passed == ["two"]


@pytest.mark.parametrize("count", ["two", 0, -1, 1.5, True, 10**9])
def test_a_malformed_count_is_a_typed_error_naming_the_field(count: Any) -> None:
    """ClaimSpecs keeps only SliceRequestError as the pod's reason; anything else escaped into the watch."""
    with pytest.raises(SliceRequestError, match=r"requests\[0\]\.exactly\.count"):
        claim_shares(claim("bad", count=count))
