"""DRA with consumable capacity on a real kube-apiserver and kube-scheduler (v1.36, default feature
gates): the agent's ResourceSlice publisher and DRA plugin (driven by a test kubelet over gRPC) against
the real scheduler's allocations. Claims are created directly (no kube-controller-manager for
templates); when a pod goes, the test does what the resource-claim controller would (clear the claim's
allocation, drop its finalizer). Skipped without the control-plane binaries."""

from __future__ import annotations

import json
import shutil
import ssl
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiException, CoreV1Api, ResourceV1Api

from extender.agent.dra.kube import DraKube
from extender.agent.dra.plugin import DraPlugin
from extender.agent.dra.prepare import Preparer
from extender.agent.dra.publisher import SlicePublisher
from extender.agent.dra.slices import DRIVER, device_name
from extender.agent.topology import Topology, read_topology
from extender.core.atoms import is_xcc_complete
from extender.core.policy import Policy
from extender.core.rangelist import parse_ranges
from extender.kube.client import api_client
from extender.kube.controlplane import TOKEN, ControlPlane
from tests.agent.dra_kubelet import ClaimRef, TestKubelet
from tests.kube.conftest import ROOT, start_control_plane

NS = "dra"
NODE = "dra-node-0"
GIB = 2**30
FIXTURE = ROOT / "tests" / "fixtures" / "sysfs" / "mi300x-spx"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def scheduler_config(kubeconfig: Path) -> str:
    return yaml.safe_dump({"apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
                           "clientConnection": {"kubeconfig": str(kubeconfig)},
                           "leaderElection": {"leaderElect": False},
                           "profiles": [{"schedulerName": "default-scheduler"}]})


def node_body(name: str) -> dict:
    res = {"cpu": "64", "memory": "512Gi", "pods": "110"}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"capacity": res, "allocatable": res,
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Test"}]}}


def claim_body(name: str, cus: int | None, memory: str | None) -> dict:
    requests = {k: v for k, v in (("computeUnits", None if cus is None else str(cus)), ("memory", memory)) if v}
    exactly: dict[str, Any] = {"deviceClassName": "gpuslice"}
    if requests:
        exactly["capacity"] = {"requests": requests}
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": name},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}}}


def pod_body(name: str, claim: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "resourceClaims": [{"name": "gpu", "resourceClaimName": claim}],
                     "containers": [{"name": "main", "image": "registry.invalid/pause:1",
                                     "resources": {"claims": [{"name": "gpu"}]}}]}}


class Cluster:
    def __init__(self, cp: ControlPlane, workdir: Path, topology: Topology) -> None:
        self.cp = cp
        kubeconfig = cp.kubeconfig
        self.api_client = api_client(str(kubeconfig))
        self.core = CoreV1Api(self.api_client)
        self.resource = ResourceV1Api(self.api_client)
        self.dra = DraKube(self.api_client)
        self.topology = topology
        self.workdir = workdir
        self.preparer = Preparer(NODE, lambda: self.topology, self.dra, lambda: Policy(), workdir / "state",
                                 workdir / "cdi", status=self.dra)
        self.preparer.restore()
        self.plugin = DraPlugin(self.preparer, workdir / "registry", workdir / "plugin")
        self.plugin.serve()
        self.kubelet = TestKubelet(workdir / "registry")
        self.kubelet.register()

    def claim(self, name: str) -> dict:
        return json.loads(self.resource.read_namespaced_resource_claim(name, NS, _preload_content=False).data)

    def pod(self, name: str) -> dict:
        return json.loads(self.core.read_namespaced_pod(name, NS, _preload_content=False).data)

    def post(self, resource: str, body: dict) -> None:
        """POST a namespaced resource.k8s.io object as compact JSON, as kubectl and Go clients send it.
        (The Python client's JSON has spaces; a claim whose opaque parameters arrived that way — itself
        or through its template — has every later status write refused, see agent/dra/kube.py.)"""
        req = urllib.request.Request(f"{self.cp.url}/apis/resource.k8s.io/v1/namespaces/{NS}/{resource}",
                                     data=json.dumps(body, separators=(",", ":")).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=_insecure(), timeout=10) as resp:
            assert resp.status == 201

    def create_claim(self, body: dict) -> None:
        self.post("resourceclaims", body)

    def run(self, name: str, cus: int | None, memory: str | None) -> None:
        self.create_claim(claim_body(name, cus, memory))
        self.core.create_namespaced_pod(NS, pod_body(name, name))

    def scheduled(self, name: str) -> bool:
        return bool(self.pod(name)["spec"].get("nodeName")) and bool(self.claim(name)["status"].get("allocation"))

    def unschedulable(self, name: str) -> bool:
        conds = self.pod(name).get("status", {}).get("conditions") or []
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conds)

    def prepare(self, name: str) -> dict:
        """What kubelet does when the pod starts: NodePrepareResources for its claim."""
        c = self.claim(name)
        ref = ClaimRef(NS, c["metadata"]["uid"], name)
        entry = self.kubelet.prepare(ref).claims[ref.uid]
        assert entry.error == "", entry.error
        return c

    def finish(self, name: str) -> None:
        """The pod ends: kubelet unprepares, the pod goes, the claim controller deallocates the claim."""
        c = self.claim(name)
        assert self.kubelet.unprepare(ClaimRef(NS, c["metadata"]["uid"], name)).claims[c["metadata"]["uid"]].error == ""
        self.core.delete_namespaced_pod(name, NS, grace_period_seconds=0)
        wait_for(f"pod {name} gone", lambda: _gone(lambda: self.core.read_namespaced_pod(name, NS)))
        self.resource.patch_namespaced_resource_claim_status(
            name, NS, {"status": {"allocation": None, "reservedFor": None, "devices": None}},
            _content_type="application/merge-patch+json")
        self.resource.patch_namespaced_resource_claim(name, NS, {"metadata": {"finalizers": None}},
                                                      _content_type="application/merge-patch+json")
        self.resource.delete_namespaced_resource_claim(name, NS)

    def close(self) -> None:
        self.plugin.stop()


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _gone(read: Callable[[], object]) -> bool:
    try:
        read()
    except ApiException as exc:
        return exc.status == 404
    return False


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cp = start_control_plane()
    base = Path(tempfile.mkdtemp(prefix="dra", dir="/tmp"))  # unix socket paths must stay short
    try:
        cp.start_scheduler(scheduler_config(cp.kubeconfig))
        full = read_topology(FIXTURE)
        c = Cluster(cp, base, Topology(full.gpus[:2]))  # two MI300X in one hive
        c.core.create_namespace({"metadata": {"name": NS}})
        c.core.create_node(node_body(NODE))
        c.resource.create_device_class(yaml.safe_load((ROOT / "deploy" / "dra" / "deviceclass.yaml").read_text()))
        SlicePublisher(c.dra, NODE, FIXTURE).publish(c.topology, Policy().burst.sharedFraction)
        yield c
        c.close()
    finally:
        cp.stop()
        shutil.rmtree(base, ignore_errors=True)


def consumed_by_device(c: Cluster, names: list[str]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for name in names:
        (r,) = c.claim(name)["status"]["allocation"]["devices"]["results"]
        assert (r["driver"], r["pool"]) == (DRIVER, NODE)
        cap = r["consumedCapacity"]
        cus, mem = out.get(r["device"], (0, 0))
        out[r["device"]] = (cus + int(cap["computeUnits"]), mem + _bytes(cap["memory"]))
    return out


def _bytes(q: str) -> int:
    from extender.core.quantity import parse_bytes

    return parse_bytes(q)


def prepared_sets(c: Cluster) -> dict[str, list[frozenset[int]]]:
    """Device -> the guaranteed CU sets the agent published on the claims' status.devices."""
    out: dict[str, list[frozenset[int]]] = {}
    for item in json.loads(c.resource.list_namespaced_resource_claim(NS, _preload_content=False).data)["items"]:
        for d in item.get("status", {}).get("devices") or []:
            if d["driver"] == DRIVER:
                out.setdefault(d["device"], []).append(parse_ranges(d["data"]["cus"]))
    return out


def test_slice_is_accepted_as_published(cluster: Cluster) -> None:
    got = json.loads(cluster.resource.read_resource_slice(f"{NODE}-{DRIVER}", _preload_content=False).data)
    dev = got["spec"]["devices"][0]
    assert dev["allowMultipleAllocations"] is True
    assert dev["capacity"]["computeUnits"]["requestPolicy"]["validRange"] == {"min": "8", "step": "8"}
    assert [d["name"] for d in got["spec"]["devices"]] == [device_name(g.info) for g in cluster.topology.gpus]


def test_real_scheduler_allocates_within_capacity_and_agent_prepares_disjoint_atoms(cluster: Cluster) -> None:
    # 2 GPUs x 272 guaranteeable CUs / 192Gi. Sizes: 30 CUs is rounded up to 32 by the request policy.
    sizes = {"s64a": (64, "48Gi"), "s64b": (64, "48Gi"), "s64c": (64, "48Gi"), "s128": (128, "40Gi"),
             "s30": (30, "16Gi"), "s8": (8, "4Gi"), "s96": (96, "20Gi")}
    for name, (cus, mem) in sizes.items():
        cluster.run(name, cus, mem)
    wait_for("all pods scheduled", lambda: all(cluster.scheduled(n) for n in sizes))
    per_device = consumed_by_device(cluster, list(sizes))
    for cus, mem in per_device.values():
        assert cus <= 272 and mem <= 192 * GIB
    s30 = cluster.claim("s30")["status"]["allocation"]["devices"]["results"][0]["consumedCapacity"]
    assert s30["computeUnits"] == "32"
    for name in sizes:
        cluster.prepare(name)
    sets = prepared_sets(cluster)
    assert sum(len(v) for v in sets.values()) == len(sizes)
    for device, cu_sets in sets.items():
        assert all(is_xcc_complete(s, 8) for s in cu_sets), device
        union = frozenset().union(*cu_sets)
        assert len(union) == sum(len(s) for s in cu_sets), f"{device}: prepared CU sets overlap"
    for name in sizes:
        cluster.finish(name)


def test_deleting_a_pod_frees_its_share_for_a_waiting_one(cluster: Cluster) -> None:
    # Fill both GPUs' memory with 64Gi shares (3 per GPU), then a seventh waits.
    names = [f"m{i}" for i in range(6)]
    for name in names:
        cluster.run(name, 64, "64Gi")
    wait_for("six shares scheduled", lambda: all(cluster.scheduled(n) for n in names))
    for name in names:
        cluster.prepare(name)
    cluster.run("waiting", 64, "64Gi")
    wait_for("the seventh unschedulable", lambda: cluster.unschedulable("waiting"))
    assert not cluster.claim("waiting").get("status", {}).get("allocation")
    victim_device = cluster.claim("m1")["status"]["allocation"]["devices"]["results"][0]["device"]
    cluster.finish("m1")
    wait_for("the waiting pod scheduled", lambda: cluster.scheduled("waiting"), timeout=90)
    result = cluster.claim("waiting")["status"]["allocation"]["devices"]["results"][0]
    assert result["device"] == victim_device
    cluster.prepare("waiting")
    now = prepared_sets(cluster)[victim_device]
    assert len(now) == 3 and all(is_xcc_complete(s, 8) for s in now)
    assert len(frozenset().union(*now)) == 3 * 64
    for name in [n for n in names if n != "m1"] + ["waiting"]:
        cluster.finish(name)


def test_deploy_templates_are_valid_and_allocate_as_documented(cluster: Cluster) -> None:
    templates = [t for t in yaml.safe_load_all((ROOT / "deploy" / "dra" / "claim-templates.yaml").read_text()) if t]
    for t in templates:  # the API server validates them (templates need kube-controller-manager to be used)
        cluster.resource.create_namespaced_resource_claim_template(NS, t)
    specs = {t["metadata"]["name"]: t["spec"]["spec"] for t in templates}
    for name, spec in specs.items():  # the claim each template would stamp out, created directly
        cluster.create_claim({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": name},
                              "spec": spec})
        cluster.core.create_namespaced_pod(NS, pod_body(name, name))
        wait_for(f"{name} scheduled", lambda n=name: cluster.scheduled(n))
        results = cluster.claim(name)["status"]["allocation"]["devices"]["results"]
        cluster.prepare(name)
        data = {d["device"]: d["data"] for d in cluster.claim(name)["status"]["devices"]}
        if name == "gpu-slice-64cu-60gi":
            assert results[0]["consumedCapacity"] == {"computeUnits": "64", "memory": "60Gi"}
            (d,) = data.values()
            assert len(parse_ranges(d["cus"])) == 64 and len(parse_ranges(d["burstCus"])) == 32
            assert d["class"] == "memory-bound"
        elif name == "gpu-whole":
            assert results[0]["consumedCapacity"]["computeUnits"] == "272"
            (d,) = data.values()
            assert parse_ranges(d["cus"]) == frozenset(range(304)) and d["memoryBytes"] == 192 * GIB
        else:
            assert len({r["device"] for r in results}) == 2 and len(data) == 2
        cluster.finish(name)
