"""One ledger on a real cluster: the running extender (`gpuslice serve --kubeconfig`) counts a DRA
claim's agent-published CU sets, so the real kube-scheduler + extender never place an extender pod on
them, and frees them when the claim goes. The claim's allocation and prepared sets are written the way
kube-scheduler and the agent write them (skipped without the control-plane binaries)."""

from __future__ import annotations

import json
import time

from kubernetes.client import ApiException, ResourceV1Api

from extender.core.assignment import ASSIGNMENT_ANNOTATION, parse_assignment
from extender.core.inventory import GpuInfo, device_name
from extender.core.rangelist import parse_ranges
from extender.kube.claims import DRIVER
from tests.kube.conftest import Env, gpu_node_body, gpu_pod_body
from tests.kube.test_real_scheduler import wait_for

NS = "default"
NODE = "dra-shared-0"
GIB = 2**30


def tenants(env: Env) -> dict[str, frozenset[int]]:
    out = {}
    for node in env.extender.get("/debug/ledger")["nodes"]:
        if node["node"] == NODE:
            for gpu in node["gpus"]:
                out.update({t["pod"]: parse_ranges(t["cus"]) for t in gpu["tenants"]})
    return out


def pinned_pod(name: str, compute: str) -> dict:
    body = gpu_pod_body(name, compute=compute, memory="8Gi")
    body["spec"]["nodeSelector"] = {"kubernetes.io/hostname": NODE}
    return body


def pod(env: Env, name: str) -> dict:
    return json.loads(env.api.read_namespaced_pod(name, NS, _preload_content=False).data)


def test_extender_places_around_a_prepared_dra_claim(kube_env: Env) -> None:
    api = kube_env.api
    resource = ResourceV1Api(api.api_client)
    api.create_node(gpu_node_body(NODE, gpus=1))
    gpu_id = f"{NODE}-g0"
    try:
        wait_for("node in the ledger",
                 lambda: NODE in {n["node"] for n in kube_env.extender.get("/debug/ledger")["nodes"]})
        resource.create_namespaced_resource_claim(NS, {
            "metadata": {"name": "llama"},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpuslice"}}]}}})
        resource.patch_namespaced_resource_claim_status("llama", NS, {"status": {
            "allocation": {"devices": {"results": [{"request": "gpu", "driver": DRIVER, "pool": NODE,
                                                    "device": "gpu-0"}]}},
            "devices": [{"driver": DRIVER, "pool": NODE, "device": "gpu-0",
                         "data": {"gpu": 0, "id": gpu_id, "cus": "0-127", "burstCus": "", "memoryBytes": 100 * GIB,
                                  "memoryLimitBytes": 100 * GIB, "class": "memory-bound"}}]}},
            _content_type="application/merge-patch+json")
        wait_for("the claim in the extender's ledger",
                 lambda: tenants(kube_env).get(f"{NS}/claim:llama") == frozenset(range(128)))

        api.create_namespaced_pod(NS, pinned_pod("dra-whole", "1000m"))
        api.create_namespaced_pod(NS, pinned_pod("dra-small", "250m"))
        wait_for("the small pod bound", lambda: pod(kube_env, "dra-small")["spec"].get("nodeName") == NODE)
        got = parse_assignment(pod(kube_env, "dra-small")["metadata"]["annotations"][ASSIGNMENT_ANNOTATION])
        assert not got.gpus[0].cus & frozenset(range(128))
        time.sleep(1.0)
        assert not pod(kube_env, "dra-whole")["spec"].get("nodeName")  # the claim holds part of the GPU

        resource.delete_namespaced_resource_claim("llama", NS)
        wait_for("the claim gone from the ledger", lambda: f"{NS}/claim:llama" not in tenants(kube_env))
        api.delete_namespaced_pod("dra-small", NS, grace_period_seconds=0)
        wait_for("the whole-GPU pod bound once the GPU is free",
                 lambda: pod(kube_env, "dra-whole")["spec"].get("nodeName") == NODE, timeout=30)
    finally:
        for name in ("dra-whole", "dra-small"):
            try:
                api.delete_namespaced_pod(name, NS, grace_period_seconds=0)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        try:
            resource.delete_namespaced_resource_claim("llama", NS)
        except ApiException as exc:
            if exc.status != 404:
                raise
        api.delete_node(NODE)
        wait_for("pods gone", lambda: not [p for p in api.list_namespaced_pod(NS).items
                                           if p.metadata.name.startswith("dra-")])


def test_an_allocated_unprepared_claim_holds_its_capacity(kube_env: Env) -> None:
    """Between kube-scheduler's allocation and kubelet's Prepare, the running extender already holds the
    claim's consumed CUs and memory (a provisional set), so a whole-GPU extender pod is not bound onto
    them; once the agent publishes its sets they replace the provisional one."""
    api = kube_env.api
    resource = ResourceV1Api(api.api_client)
    api.create_node(gpu_node_body(NODE, gpus=1))
    device = device_name(GpuInfo(index=0, id=f"{NODE}-g0", model="MI300X", computeUnits=304, xcds=8,
                                 shaderEngines=32, memoryBytes=192 * GIB, healthy=True))
    result = {"request": "gpu", "driver": DRIVER, "pool": NODE, "device": device,
              "shareID": "4d3c2b1a-0000-4000-8000-000000000001",
              "consumedCapacity": {"computeUnits": "128", "memory": "100Gi"}}
    try:
        wait_for("node in the ledger",
                 lambda: NODE in {n["node"] for n in kube_env.extender.get("/debug/ledger")["nodes"]})
        resource.create_namespaced_resource_claim(NS, {
            "metadata": {"name": "llama"},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpuslice"}}]}}})
        resource.patch_namespaced_resource_claim_status("llama", NS, {"status": {
            "allocation": {"devices": {"results": [result]}}}}, _content_type="application/merge-patch+json")
        wait_for("the allocated claim in the extender's ledger",
                 lambda: len(tenants(kube_env).get(f"{NS}/claim:llama", ())) == 128)
        api.create_namespaced_pod(NS, pinned_pod("dra-whole", "1000m"))
        time.sleep(1.0)
        assert not pod(kube_env, "dra-whole")["spec"].get("nodeName")  # the allocation holds part of the GPU

        resource.patch_namespaced_resource_claim_status("llama", NS, {"status": {
            "devices": [{"driver": DRIVER, "pool": NODE, "device": device, "shareID": result["shareID"],
                         "data": {"gpu": 0, "id": f"{NODE}-g0", "cus": "128-255", "burstCus": "",
                                  "memoryBytes": 100 * GIB, "memoryLimitBytes": 100 * GIB,
                                  "class": "memory-bound"}}]}},
            _content_type="application/merge-patch+json")
        wait_for("the agent's set replaces the provisional one",
                 lambda: tenants(kube_env).get(f"{NS}/claim:llama") == frozenset(range(128, 256)))

        resource.delete_namespaced_resource_claim("llama", NS)
        wait_for("the whole-GPU pod bound once the claim is gone",
                 lambda: pod(kube_env, "dra-whole")["spec"].get("nodeName") == NODE, timeout=30)
    finally:
        try:
            api.delete_namespaced_pod("dra-whole", NS, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise
        try:
            resource.delete_namespaced_resource_claim("llama", NS)
        except ApiException as exc:
            if exc.status != 404:
                raise
        api.delete_node(NODE)
        wait_for("pods gone", lambda: not [p for p in api.list_namespaced_pod(NS).items
                                           if p.metadata.name.startswith("dra-")])
