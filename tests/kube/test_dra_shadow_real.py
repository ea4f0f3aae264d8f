"""Extender pods and DRA claims on one GPU node, on the real kube-apiserver and kube-scheduler v1.36:
the extender's shadow claims (kube/shadow_claims.py) make its pods' shares count in kube-scheduler's
DRA allocation, so a claim never lands on a GPU an extender pod fills, and the share comes back to
waiting claims when the pod goes. The node's ResourceSlice is the agent's own publisher's (recorded
MI300X sysfs). Skipped without the control-plane binaries."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import yaml
from kubernetes.client import ApiException, ResourceV1Api

from extender.agent.dra.kube import DraKube
from extender.agent.dra.publisher import SlicePublisher
from extender.agent.dra.slices import DRIVER, device_name, slice_name
from extender.agent.topology import Topology, read_topology
from extender.core.assignment import ASSIGNMENT_ANNOTATION, parse_assignment
from extender.core.policy import Policy
from extender.core.quantity import parse_bytes
from extender.kube.shadow_claims import FINALIZER, SHADOW_OF, shadow_name
from tests.kube.conftest import ROOT, Env, gpu_node_body, gpu_pod_body
from tests.kube.test_real_scheduler import wait_for

NS = "default"
NODE = "dra-shadow-0"
FIXTURE = ROOT / "tests" / "fixtures" / "sysfs" / "mi300x-spx"
GIB = 2**30


def claim_body(name: str, cus: int, memory: str) -> dict:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": name},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                "deviceClassName": "gpuslice",
                "capacity": {"requests": {"computeUnits": str(cus), "memory": memory}}}}]}}}


def dra_pod_body(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"gpuslice-test": "true"}},
            "spec": {"schedulerName": "gpuslice", "terminationGracePeriodSeconds": 0,
                     "nodeSelector": {"kubernetes.io/hostname": NODE},
                     "resourceClaims": [{"name": "gpu", "resourceClaimName": name}],
                     "containers": [{"name": "main", "image": "registry.invalid/pause:1",
                                     "resources": {"claims": [{"name": "gpu"}]}}]}}


class Node:
    """The test node: its inventory annotation (for the extender) and its ResourceSlice (for DRA)
    describe the same two GPUs by index."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.api = env.api
        self.resource = ResourceV1Api(env.api.api_client)
        self.topology = Topology(read_topology(FIXTURE).gpus[:2])
        self.devices = [device_name(g.info) for g in self.topology.gpus]

    def json(self, read: object) -> dict:
        return json.loads(read.data)  # type: ignore[attr-defined]

    def pod(self, name: str) -> dict:
        return self.json(self.api.read_namespaced_pod(name, NS, _preload_content=False))

    def claim(self, name: str) -> dict | None:
        try:
            return self.json(self.resource.read_namespaced_resource_claim(name, NS, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def allocated_device(self, name: str) -> str | None:
        alloc = ((self.claim(name) or {}).get("status") or {}).get("allocation")
        return alloc["devices"]["results"][0]["device"] if alloc else None

    def shadow(self, pod: str) -> dict | None:
        return self.claim(shadow_name(self.pod(pod)["metadata"]["uid"]))

    def shadow_allocated(self, pod: str) -> bool:
        return bool(((self.shadow(pod) or {}).get("status") or {}).get("allocation"))

    def run_extender_pod(self, name: str, compute: str, memory: str) -> int:
        """An extender pod pinned here; returns the GPU index it got once bound."""
        body = gpu_pod_body(name, compute=compute, memory=memory)
        body["spec"]["nodeSelector"] = {"kubernetes.io/hostname": NODE}
        self.api.create_namespaced_pod(NS, body)
        wait_for(f"{name} bound", lambda: self.pod(name)["spec"].get("nodeName") == NODE)
        (gpu,) = parse_assignment(self.pod(name)["metadata"]["annotations"][ASSIGNMENT_ANNOTATION]).gpus
        return gpu.index

    def run_claim(self, name: str, cus: int, memory: str) -> None:
        self.resource.create_namespaced_resource_claim(NS, claim_body(name, cus, memory))
        self.api.create_namespaced_pod(NS, dra_pod_body(name))

    def unschedulable(self, name: str) -> bool:
        conds = self.pod(name).get("status", {}).get("conditions") or []
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conds)

    def delete_pod(self, name: str) -> None:
        try:
            self.api.delete_namespaced_pod(name, NS, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def finish_claim(self, name: str) -> None:
        """What kubelet and the resource-claim controller would do when a DRA pod ends."""
        self.delete_pod(name)
        if self.claim(name) is None:
            return
        self.resource.patch_namespaced_resource_claim_status(
            name, NS, {"status": {"allocation": None, "reservedFor": None}},
            _content_type="application/merge-patch+json")
        self.resource.patch_namespaced_resource_claim(name, NS, {"metadata": {"finalizers": None}},
                                                      _content_type="application/merge-patch+json")
        self.resource.delete_namespaced_resource_claim(name, NS)


@pytest.fixture
def node(kube_env: Env) -> Iterator[Node]:
    n = Node(kube_env)
    kube_env.api.create_node(gpu_node_body(NODE, gpus=2))
    try:
        n.resource.create_device_class(yaml.safe_load((ROOT / "deploy" / "dra" / "deviceclass.yaml").read_text()))
    except ApiException as exc:
        if exc.status != 409:
            raise
    SlicePublisher(DraKube(kube_env.api.api_client), NODE, FIXTURE).publish(n.topology, Policy().burst.sharedFraction)
    try:
        wait_for("node in the ledger",
                 lambda: NODE in {x["node"] for x in kube_env.extender.get("/debug/ledger")["nodes"]})
        yield n
    finally:
        pods = [p.metadata.name for p in kube_env.api.list_namespaced_pod(NS).items
                if p.metadata.name.startswith("shadow-")]
        for name in pods:
            n.delete_pod(name)
        for c in n.json(n.resource.list_namespaced_resource_claim(NS, _preload_content=False))["items"]:
            if c["metadata"]["name"].startswith("shadow-"):
                n.finish_claim(c["metadata"]["name"])
        wait_for("shadow claims gone", lambda: not n.json(n.resource.list_namespaced_resource_claim(
            NS, label_selector=SHADOW_OF, _preload_content=False))["items"], timeout=30)
        n.resource.delete_resource_slice(slice_name(NODE))
        kube_env.api.delete_node(NODE)


def test_a_claim_never_lands_on_the_gpu_an_extender_pod_fills(node: Node) -> None:
    full = node.run_extender_pod("shadow-big", compute="800m", memory="160Gi")
    wait_for("the pod's shadow claim allocated", lambda: node.shadow_allocated("shadow-big"))
    shadow = node.shadow("shadow-big")
    assert shadow is not None
    (result,) = shadow["status"]["allocation"]["devices"]["results"]
    assert (result["driver"], result["pool"], result["device"]) == (DRIVER, NODE, node.devices[full])
    (gpu,) = parse_assignment(node.pod("shadow-big")["metadata"]["annotations"][ASSIGNMENT_ANNOTATION]).gpus
    assert int(result["consumedCapacity"]["computeUnits"]) == len(gpu.cus)
    assert parse_bytes(result["consumedCapacity"]["memory"]) == 160 * GIB
    assert FINALIZER in shadow["metadata"]["finalizers"]
    assert shadow["metadata"]["ownerReferences"][0]["uid"] == node.pod("shadow-big")["metadata"]["uid"]

    # The other GPU holds four 64-CU / 30Gi claims (256 of its 272 guaranteeable CUs); the full GPU has
    # fewer than 64 CUs left once the pod's are counted, so the fifth claim must wait rather than go there.
    names = [f"shadow-c{i}" for i in range(5)]
    for name in names:
        node.run_claim(name, 64, "30Gi")
    wait_for("four claims allocated", lambda: sum(bool(node.allocated_device(n)) for n in names) >= 4)
    wait_for("the fifth unschedulable", lambda: any(node.unschedulable(n) for n in names))
    time.sleep(1.0)
    placed = {n: node.allocated_device(n) for n in names}
    assert sorted(d for d in placed.values() if d) == [node.devices[1 - full]] * 4, placed
    (waiting,) = [n for n, d in placed.items() if d is None]

    # The extender pod goes: its shadow is deallocated and deleted, which requeues the waiting claim's pod.
    # (A claim merely deleted would requeue it only at kube-scheduler's 5-minute unschedulable flush.)
    node.delete_pod("shadow-big")
    wait_for("the waiting claim allocated on the freed GPU", lambda: node.allocated_device(waiting), timeout=30)
    assert node.allocated_device(waiting) == node.devices[full]


def test_a_missing_or_orphaned_shadow_is_repaired_after_an_extender_crash(node: Node, kube_env: Env) -> None:
    node.run_extender_pod("shadow-a", compute="250m", memory="16Gi")
    node.run_extender_pod("shadow-b", compute="250m", memory="16Gi")
    wait_for("both shadows allocated", lambda: all(node.shadow_allocated(p) for p in ("shadow-a", "shadow-b")))
    kube_env.extender.kill()  # as if it died after a's Binding, before its shadow was written
    try:
        a_shadow = shadow_name(node.pod("shadow-a")["metadata"]["uid"])
        node.finish_claim(a_shadow)
        b_shadow = shadow_name(node.pod("shadow-b")["metadata"]["uid"])
        node.delete_pod("shadow-b")  # and b ended while it was down (no garbage collector runs here)
        wait_for("b gone", lambda: "shadow-b" not in {p.metadata.name
                                                      for p in kube_env.api.list_namespaced_pod(NS).items})
        assert node.claim(a_shadow) is None and node.claim(b_shadow) is not None
    finally:
        kube_env.extender.start()
    wait_for("a's shadow written again", lambda: ((node.claim(a_shadow) or {}).get("status") or {}).get("allocation"),
             timeout=30)
    wait_for("b's orphaned shadow removed", lambda: node.claim(b_shadow) is None, timeout=30)


def test_kube_controller_manager_keeps_a_shadow_until_the_extender_deallocates_it(node: Node, kube_env: Env) -> None:
    """The resource-claim controller leaves an allocated, unreserved shadow alone; when its pod goes
    while the extender is down, garbage collection starts the delete and the finalizer keeps the claim
    allocated (still counted by DRA) until the extender is back and deallocates it."""
    kube_env.cp.start_controller_manager("resourceclaim-controller,garbage-collector-controller")
    try:
        node.run_extender_pod("shadow-gc", compute="250m", memory="16Gi")
        wait_for("the shadow allocated", lambda: node.shadow_allocated("shadow-gc"))
        name = shadow_name(node.pod("shadow-gc")["metadata"]["uid"])
        time.sleep(5.0)  # the controllers have synced and seen it
        claim = node.claim(name)
        assert claim is not None and claim["status"].get("allocation") and not claim["status"].get("reservedFor")
        assert not claim["metadata"].get("deletionTimestamp")
        kube_env.extender.kill()
        try:
            node.delete_pod("shadow-gc")
            wait_for("garbage collection deleting the shadow",
                     lambda: (node.claim(name) or {}).get("metadata", {}).get("deletionTimestamp"), timeout=60)
            time.sleep(1.0)
            held = node.claim(name)
            assert held is not None and held["status"].get("allocation")  # held, still counted by DRA
        finally:
            kube_env.extender.start()
        wait_for("the shadow deallocated and gone", lambda: node.claim(name) is None, timeout=30)
    finally:
        kube_env.cp.stop_process("kube-controller-manager")
