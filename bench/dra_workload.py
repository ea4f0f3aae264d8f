"""The DRA objects of scheduler_bench's `gpu-dra` scenario: each node's ResourceSlice exactly as the
agent publishes it (8 MI300X from the recorded sysfs tree), the DeviceClass from deploy/dra, and per
pod one ResourceClaim of 32 CUs / 4Gi (the extender scenarios' 100m / 4Gi, rounded to atoms as both
paths do). Claims are created directly; after a round they are released the way kube-controller-
manager's resource-claim controller would (allocation cleared, finalizer dropped, claim deleted)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from kubernetes.client import ApiClient, ApiException, ResourceV1Api

from extender.agent.dra.slices import resource_slice
from extender.agent.topology import read_topology
from extender.core.policy import Policy

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGY = read_topology(ROOT / "tests" / "fixtures" / "sysfs" / "mi300x-spx")
MERGE = "application/merge-patch+json"


def claim_body(name: str) -> dict:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": name, "labels": {"bench": "true"}},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                "deviceClassName": "gpuslice", "capacity": {"requests": {"computeUnits": "32", "memory": "4Gi"}}}}]}}}


def pod_body(name: str, scheduler: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "true"}},
            "spec": {"schedulerName": scheduler, "terminationGracePeriodSeconds": 0,
                     "resourceClaims": [{"name": "gpu", "resourceClaimName": name}],
                     "containers": [{"name": "c", "image": "registry.invalid/pause:1",
                                     "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                                   "claims": [{"name": "gpu"}]}}]}}


class DraObjects:
    def __init__(self, api: ApiClient, pool: ThreadPoolExecutor) -> None:
        self.resource = ResourceV1Api(api)
        self.pool = pool
        self.sliced: set[str] = set()

    def install_class(self) -> None:
        self.resource.create_device_class(yaml.safe_load((ROOT / "deploy" / "dra" / "deviceclass.yaml").read_text()))

    def ensure_slices(self, nodes: list[str]) -> None:
        fraction = Policy().burst.sharedFraction
        todo = [n for n in nodes if n not in self.sliced]
        list(self.pool.map(lambda n: self.resource.create_resource_slice(
            resource_slice(n, TOPOLOGY, fraction, 1), _preload_content=False), todo))
        self.sliced.update(todo)

    def create_claims(self, ns: str, names: list[str]) -> None:
        list(self.pool.map(lambda n: self.resource.create_namespaced_resource_claim(
            ns, claim_body(n), _preload_content=False), names))

    def release_claims(self, ns: str) -> None:
        items = json.loads(self.resource.list_namespaced_resource_claim(
            ns, label_selector="bench=true", _preload_content=False).data)["items"]

        def release(name: str) -> None:
            try:
                self.resource.patch_namespaced_resource_claim_status(
                    name, ns, {"status": {"allocation": None, "reservedFor": None}}, _content_type=MERGE,
                    _preload_content=False)
                self.resource.patch_namespaced_resource_claim(name, ns, {"metadata": {"finalizers": None}},
                                                              _content_type=MERGE, _preload_content=False)
                self.resource.delete_namespaced_resource_claim(name, ns, _preload_content=False)
            except ApiException as exc:
                if exc.status != 404:
                    raise

        list(self.pool.map(release, [i["metadata"]["name"] for i in items]))
