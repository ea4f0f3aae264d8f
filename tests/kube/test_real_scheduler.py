"""The real kube-scheduler, configured with deploy/scheduler-config.yaml, placing pods through a
real `gpuslice serve --kubeconfig` on a real API server (skipped without $KUBEBUILDER_ASSETS)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest
from kubernetes.client import ApiException

from extender.core.assignment import ASSIGNMENT_ANNOTATION, parse_assignment
from extender.core.rangelist import parse_ranges
from extender.kube.nudge import FREED_ANNOTATION
from tests.kube.conftest import Env, gpu_node_body, gpu_pod_body

NS = "default"


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pods(env: Env) -> list[dict]:
    resp = env.api.list_namespaced_pod(NS, label_selector="gpuslice-test=true", _preload_content=False)
    return json.loads(resp.data)["items"]


def bound(env: Env) -> dict[str, dict]:
    return {p["metadata"]["name"]: p for p in pods(env) if p["spec"].get("nodeName")}


def delete_pods(env: Env, names: list[str]) -> None:
    for name in names:
        try:
            env.api.delete_namespaced_pod(name, NS, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise
    wait_for("pods gone", lambda: not ({p["metadata"]["name"] for p in pods(env)} & set(names)))


def create_pods(env: Env, bodies: list[dict]) -> None:
    for body in bodies:
        env.api.create_namespaced_pod(NS, body)


def _assignments(pods_by_name: dict[str, dict]) -> dict[str, dict[tuple[str, int], frozenset[int]]]:
    """pod key -> (node, gpu) -> guaranteed CUs, from bound pods' annotations; checks they never overlap."""
    out: dict[str, dict[tuple[str, int], frozenset[int]]] = {}
    taken: dict[tuple[str, int], frozenset[int]] = {}
    for name, pod in pods_by_name.items():
        ann = pod["metadata"].get("annotations", {})
        assert ASSIGNMENT_ANNOTATION in ann, f"{name} was bound without the extender"
        a = parse_assignment(ann[ASSIGNMENT_ANNOTATION])
        assert a.node == pod["spec"]["nodeName"]
        for g in a.gpus:
            key = (a.node, g.index)
            assert not (taken.get(key, frozenset()) & g.cus), f"{name}: guaranteed CUs overlap on {key}"
            taken[key] = taken.get(key, frozenset()) | g.cus
            out.setdefault(f"{NS}/{name}", {})[key] = g.cus
    return out


def assert_consistent(env: Env, settled: bool = True) -> None:
    """Assignments on bound pods match their nodes and the extender's ledger; guarantees never overlap.
    `settled` False: binds may be in flight (reserved in the ledger, or bound between our two reads)."""
    before = _assignments(bound(env))
    ledger = env.extender.get("/debug/ledger")
    after = _assignments(bound(env))
    in_ledger: dict[str, dict[tuple[str, int], frozenset[int]]] = {}
    reserved: set[str] = set()
    for node in ledger["nodes"]:
        if settled:
            assert node["reservations"] == [], node  # nothing left half-bound
        reserved |= set(node["reservations"])
        for gpu in node["gpus"]:
            for t in gpu["tenants"]:
                in_ledger.setdefault(t["pod"], {})[(node["node"], gpu["index"])] = parse_ranges(t["cus"])
    if settled:
        assert before == after == in_ledger
        return
    for pod, cus in before.items():  # bound before the ledger was read: in it, exactly
        assert in_ledger.get(pod) == cus, pod
    for pod, cus in in_ledger.items():  # committed in the ledger: bound in the cluster, exactly
        if pod not in reserved:
            assert after.get(pod) == cus, pod


@pytest.fixture
def nodes(kube_env: Env) -> list[str]:
    names = [f"gpu-{i}" for i in range(3)]
    for name in names:
        try:
            kube_env.api.create_node(gpu_node_body(name))
        except ApiException as exc:
            if exc.status != 409:
                raise
    wait_for("nodes in the ledger", lambda: {n["node"] for n in kube_env.extender.get("/debug/ledger")["nodes"]}
             >= set(names))
    yield names
    delete_pods(kube_env, [p["metadata"]["name"] for p in pods(kube_env)])


def test_real_scheduler_places_every_pod_through_the_extender(kube_env: Env, nodes: list[str]) -> None:
    bodies = [gpu_pod_body(f"p{i}", cls="memory-bound" if i % 2 else "compute-bound") for i in range(12)]
    create_pods(kube_env, bodies)
    wait_for("12 pods bound", lambda: len(bound(kube_env)) == 12, timeout=60)
    assert_consistent(kube_env)
    used = {p["spec"]["nodeName"] for p in bound(kube_env).values()}
    assert used <= set(nodes)


def test_pod_without_slice_passes_through(kube_env: Env, nodes: list[str]) -> None:
    body = gpu_pod_body("plain")
    body["metadata"]["annotations"] = {}
    body["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "100m"}}
    create_pods(kube_env, [body])
    wait_for("plain pod bound", lambda: "plain" in bound(kube_env))
    assert ASSIGNMENT_ANNOTATION not in (bound(kube_env)["plain"]["metadata"].get("annotations") or {})


@pytest.mark.parametrize("how", ["pod-deleted", "pod-succeeded", "node-added", "gpu-healthy-again"])
def test_freed_capacity_lets_waiting_pod_schedule_within_seconds(kube_env: Env, nodes: list[str], how: str) -> None:
    api = kube_env.api
    if how == "gpu-healthy-again":
        sick = gpu_node_body(nodes[0], healthy=(False, False))
        api.patch_node(nodes[0], {"metadata": {"annotations": sick["metadata"]["annotations"]}})
    # Fill every healthy GPU: 700m rounds to 224 of the 272 guaranteeable CUs, one tenant per GPU.
    fill = 4 if how == "gpu-healthy-again" else 6
    create_pods(kube_env, [gpu_pod_body(f"big{i}", compute="700m", cls="compute-bound") for i in range(fill)])
    wait_for(f"{fill} big pods bound", lambda: len(bound(kube_env)) == fill, timeout=60)
    create_pods(kube_env, [gpu_pod_body("waiting", compute="700m", cls="compute-bound")])

    def rejected() -> bool:
        conds = {c.type: c for c in api.read_namespaced_pod("waiting", NS).status.conditions or []}
        return "PodScheduled" in conds and conds["PodScheduled"].reason == "Unschedulable"

    wait_for("waiting pod rejected for lack of GPU", rejected)
    time.sleep(3)  # settled in kube-scheduler's unschedulable pool (its own flush would take 5 minutes)
    assert "waiting" not in bound(kube_env)
    try:
        if how == "pod-deleted":
            freed_node = bound(kube_env)["big0"]["spec"]["nodeName"]
            api.delete_namespaced_pod("big0", NS, grace_period_seconds=0)
            wait_for("the extender signals freed capacity on the node", lambda: FREED_ANNOTATION in (
                api.read_node(freed_node).metadata.annotations or {}), timeout=5)
        elif how == "pod-succeeded":
            api.patch_namespaced_pod_status("big0", NS, {"status": {"phase": "Succeeded"}})
        elif how == "node-added":
            api.create_node(gpu_node_body("gpu-extra", gpus=1))
        else:
            healthy = gpu_node_body(nodes[0])
            api.patch_node(nodes[0], {"metadata": {"annotations": healthy["metadata"]["annotations"]}})
        took = wait_for("waiting pod bound after capacity freed", lambda: "waiting" in bound(kube_env), timeout=20)
        assert took < 10, f"waiting pod took {took:.1f}s"
        if how != "pod-succeeded":
            assert_consistent(kube_env)
    finally:
        if how == "node-added":
            delete_pods(kube_env, ["waiting"])
            api.delete_node("gpu-extra")
        if how == "gpu-healthy-again":
            healthy = gpu_node_body(nodes[0])
            api.patch_node(nodes[0], {"metadata": {"annotations": healthy["metadata"]["annotations"]}})


def test_unhealthy_gpu_takes_no_new_tenants(kube_env: Env, nodes: list[str]) -> None:
    sick = gpu_node_body(nodes[0], healthy=(False, True))
    kube_env.api.patch_node(nodes[0], {"metadata": {"annotations": sick["metadata"]["annotations"]}})
    wait_for("gpu 0 unhealthy in the ledger", lambda: not next(
        n for n in kube_env.extender.get("/debug/ledger")["nodes"] if n["node"] == nodes[0])["gpus"][0]["healthy"])
    try:
        create_pods(kube_env, [gpu_pod_body(f"h{i}", compute="100m") for i in range(9)])
        wait_for("9 pods bound", lambda: len(bound(kube_env)) == 9, timeout=60)
        for pod in bound(kube_env).values():
            a = parse_assignment(pod["metadata"]["annotations"][ASSIGNMENT_ANNOTATION])
            assert (a.node, a.gpus[0].index) != (nodes[0], 0)
        assert_consistent(kube_env)
    finally:
        healthy = gpu_node_body(nodes[0])
        kube_env.api.patch_node(nodes[0], {"metadata": {"annotations": healthy["metadata"]["annotations"]}})


def test_extender_killed_mid_stream_stays_consistent(kube_env: Env, nodes: list[str]) -> None:
    def batch(prefix: str) -> list[dict]:
        return [gpu_pod_body(f"{prefix}{i}", compute="100m", cls="memory-bound" if i % 3 else "compute-bound")
                for i in range(8)]

    creator = threading.Thread(target=create_pods, args=(kube_env, batch("a")))
    creator.start()
    wait_for("first binds", lambda: len(bound(kube_env)) >= 1, timeout=60)
    kube_env.extender.kill()  # mid-stream: binds in flight die with it, kube-scheduler's calls now fail
    creator.join()
    at_kill = len(bound(kube_env))
    create_pods(kube_env, batch("b"))  # arrive while the extender is down
    time.sleep(1)
    kube_env.extender.start()
    assert_consistent(kube_env, settled=False)  # the rebuilt ledger is what the pods say (binds resume at once)
    wait_for("all 16 pods bound", lambda: len(bound(kube_env)) == 16, timeout=90)
    assert at_kill < 16
    assert_consistent(kube_env)
