"""DRA pods routed through the extender on the real kube-apiserver and kube-scheduler v1.36: a pod whose
gpuslice ResourceClaim is memory-bound, asking for the marker `gpuslice.io/dra-routed` (deploy/
scheduler-config.yaml's managedResources), never lands on a GPU that already holds the policy's maximum
of memory-bound extender pods — the extender's filter applies the class rule, kube-scheduler's DRA
allocator the capacity. Both nodes' ResourceSlices are the agent's own publisher's (recorded MI300X
sysfs, one GPU each). Skipped without the control-plane binaries."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import yaml
from kubernetes.client import ApiException, ResourceV1Api

from extender.agent.dra.kube import DraKube
from extender.agent.dra.publisher import SlicePublisher
from extender.agent.dra.slices import DRIVER, slice_name
from extender.agent.topology import Topology, read_topology
from extender.core.assignment import ASSIGNMENT_ANNOTATION
from extender.core.policy import Policy
from extender.engine.dra_requests import MARKER_RESOURCE
from tests.kube.conftest import ROOT, Env, gpu_node_body, gpu_pod_body
from tests.kube.test_real_scheduler import wait_for

NS = "default"
NODE_A, NODE_B = "dra-routed-a", "dra-routed-b"
GROUP = "gpuslice-dra-routed"  # a node label, so the test's pods see only its two nodes
FIXTURE = ROOT / "tests" / "fixtures" / "sysfs" / "mi300x-spx"
PREFIX = "routed-"


def claim_body(name: str, cls: str) -> dict:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": name},
            "spec": {"devices": {
                "requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpuslice",
                                                         "capacity": {"requests": {"computeUnits": "64",
                                                                                   "memory": "30Gi"}}}}],
                "config": [{"requests": ["gpu"], "opaque": {"driver": DRIVER, "parameters": {
                    "apiVersion": "gpu.gpuslice.io/v1alpha1", "kind": "SliceParameters", "class": cls}}}]}}}


def routed_pod_body(name: str, node: str | None = None) -> dict:
    selector = {GROUP: "true"} | ({"kubernetes.io/hostname": node} if node else {})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"gpuslice-test": "true"}},
            "spec": {"schedulerName": "gpuslice", "terminationGracePeriodSeconds": 0, "nodeSelector": selector,
                     "resourceClaims": [{"name": "gpu", "resourceClaimName": name}],
                     "containers": [{"name": "main", "image": "registry.invalid/pause:1",
                                     "resources": {"claims": [{"name": "gpu"}], "requests": {"cpu": "100m"},
                                                   "limits": {MARKER_RESOURCE: "1"}}}]}}


class Routed:
    def __init__(self, env: Env) -> None:
        self.env = env
        self.api = env.api
        self.resource = ResourceV1Api(env.api.api_client)

    def pod(self, name: str) -> dict:
        return json.loads(self.api.read_namespaced_pod(name, NS, _preload_content=False).data)

    def claim(self, name: str) -> dict | None:
        try:
            return json.loads(self.resource.read_namespaced_resource_claim(name, NS, _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def allocated_pool(self, name: str) -> str | None:
        alloc = ((self.claim(name) or {}).get("status") or {}).get("allocation")
        return alloc["devices"]["results"][0]["pool"] if alloc else None

    def node_of(self, name: str) -> str | None:
        return self.pod(name)["spec"].get("nodeName")

    def unschedulable(self, name: str) -> str:
        for c in self.pod(name).get("status", {}).get("conditions") or []:
            if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable":
                return str(c.get("message", ""))
        return ""

    def run_claim_pod(self, name: str, cls: str, node: str | None = None) -> None:
        self.resource.create_namespaced_resource_claim(NS, claim_body(name, cls))
        self.api.create_namespaced_pod(NS, routed_pod_body(name, node))

    def delete_pod(self, name: str) -> None:
        try:
            self.api.delete_namespaced_pod(name, NS, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def finish_claim(self, name: str) -> None:
        """What the resource-claim controller does when a claim's pod is gone (none runs here)."""
        if self.claim(name) is None:
            return
        self.resource.patch_namespaced_resource_claim_status(
            name, NS, {"status": {"allocation": None, "reservedFor": None}},
            _content_type="application/merge-patch+json")
        claim = self.claim(name)
        if claim is not None and claim["metadata"].get("finalizers"):
            # A replace, not a patch: on v1.36.2 a merge patch of a claim whose opaque parameters were
            # written with spaced JSON is refused ("spec: field is immutable"; the patched object's raw
            # parameters come back compacted), while the client re-sends them as it created them.
            claim["metadata"]["finalizers"] = []
            self.resource.replace_namespaced_resource_claim(name, NS, claim)
        self.resource.delete_namespaced_resource_claim(name, NS)


@pytest.fixture
def routed(kube_env: Env) -> Iterator[Routed]:
    r = Routed(kube_env)
    topology = Topology(read_topology(FIXTURE).gpus[:1])
    try:
        r.resource.create_device_class(yaml.safe_load((ROOT / "deploy" / "dra" / "deviceclass.yaml").read_text()))
    except ApiException as exc:
        if exc.status != 409:
            raise
    for node in (NODE_A, NODE_B):
        body = gpu_node_body(node, gpus=1)
        body["metadata"]["labels"][GROUP] = "true"
        kube_env.api.create_node(body)
        SlicePublisher(DraKube(kube_env.api.api_client), node, FIXTURE).publish(topology, Policy().burst.sharedFraction)
    try:
        wait_for("both nodes in the ledger", lambda: {NODE_A, NODE_B} <= {
            x["node"] for x in kube_env.extender.get("/debug/ledger")["nodes"]})
        yield r
    finally:
        names = [p.metadata.name for p in kube_env.api.list_namespaced_pod(NS).items
                 if p.metadata.name.startswith(PREFIX)]
        for name in names:
            r.delete_pod(name)
        wait_for("pods gone", lambda: not [p for p in kube_env.api.list_namespaced_pod(NS).items
                                           if p.metadata.name.startswith(PREFIX)])
        for c in json.loads(r.resource.list_namespaced_resource_claim(NS, _preload_content=False).data)["items"]:
            if c["metadata"]["name"].startswith(PREFIX):
                r.finish_claim(c["metadata"]["name"])
        for node in (NODE_A, NODE_B):
            r.resource.delete_resource_slice(slice_name(node))
            kube_env.api.delete_node(node)


def test_a_routed_memory_bound_claim_lands_where_the_class_rule_allows(routed: Routed) -> None:
    # node A's GPU takes the policy's maximum of memory-bound tenants (2) as extender pods.
    for i in range(2):
        body = gpu_pod_body(f"{PREFIX}mb-{i}", compute="250m", memory="16Gi", cls="memory-bound")
        body["spec"]["nodeSelector"] = {"kubernetes.io/hostname": NODE_A}
        routed.api.create_namespaced_pod(NS, body)
    for i in range(2):
        wait_for(f"mb-{i} bound", lambda i=i: routed.node_of(f"{PREFIX}mb-{i}") == NODE_A)

    # A memory-bound claim pinned to A has the capacity there (shadows count 2 x 64 CUs of 272) but
    # not the class room: the extender's filter keeps it Pending with the fit rule's reason.
    routed.run_claim_pod(f"{PREFIX}pinned-mb", "memory-bound", node=NODE_A)
    wait_for("the pinned memory-bound claim unschedulable", lambda: routed.unschedulable(f"{PREFIX}pinned-mb"))
    why = routed.unschedulable(f"{PREFIX}pinned-mb")
    assert "gpuslice" in why, why
    # A compute-bound one pinned to A passes the extender: the DRA allocator places it there.
    routed.run_claim_pod(f"{PREFIX}pinned-cb", "compute-bound", node=NODE_A)
    wait_for("the compute-bound claim bound on A", lambda: routed.node_of(f"{PREFIX}pinned-cb") == NODE_A)
    assert routed.allocated_pool(f"{PREFIX}pinned-cb") == NODE_A
    # A memory-bound one free to go to either node goes to B.
    routed.run_claim_pod(f"{PREFIX}free-mb", "memory-bound")
    wait_for("the free memory-bound claim bound", lambda: routed.node_of(f"{PREFIX}free-mb"))
    assert routed.node_of(f"{PREFIX}free-mb") == NODE_B
    assert routed.allocated_pool(f"{PREFIX}free-mb") == NODE_B
    for name in ("pinned-cb", "free-mb"):  # bind posted a plain Binding: the share is the claim's
        assert ASSIGNMENT_ANNOTATION not in (routed.pod(f"{PREFIX}{name}")["metadata"].get("annotations") or {})
    time.sleep(1.0)
    assert routed.node_of(f"{PREFIX}pinned-mb") is None
