"""The real kube-scheduler, configured with deploy/scheduler-config.yaml, placing pods through a
real `gpuslice serve --kubeconfig` on a real API server (skipped without $KUBEBUILDER_ASSETS)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from kubernetes.client import ApiException

from extender.core.assignment import ASSIGNMENT_ANNOTATION, parse_assignment
from extender.core.rangelist import parse_ranges
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


def assert_consistent(env: Env) -> None:
    """Assignments on bound pods match their nodes and the extender's ledger; guarantees never overlap."""
    ledger = env.extender.get("/debug/ledger")
    in_ledger: dict[str, dict[tuple[str, int], frozenset[int]]] = {}
    for node in ledger["nodes"]:
        assert node["reservations"] == [], node  # nothing left half-bound
        for gpu in node["gpus"]:
            for t in gpu["tenants"]:
                in_ledger.setdefault(t["pod"], {})[(node["node"], gpu["index"])] = parse_ranges(t["cus"])
    on_pods: dict[str, dict[tuple[str, int], frozenset[int]]] = {}
    taken: dict[tuple[str, int], frozenset[int]] = {}
    for name, pod in bound(env).items():
        ann = pod["metadata"].get("annotations", {})
        assert ASSIGNMENT_ANNOTATION in ann, f"{name} was bound without the extender"
        a = parse_assignment(ann[ASSIGNMENT_ANNOTATION])
        assert a.node == pod["spec"]["nodeName"]
        for g in a.gpus:
            key = (a.node, g.index)
            assert not (taken.get(key, frozenset()) & g.cus), f"{name}: guaranteed CUs overlap on {key}"
            taken[key] = taken.get(key, frozenset()) | g.cus
            on_pods.setdefault(f"{NS}/{name}", {})[key] = g.cus
    assert in_ledger == on_pods


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


def test_freed_capacity_lets_waiting_pod_schedule_within_seconds(kube_env: Env, nodes: list[str]) -> None:
    # Fill all six GPUs: 700m rounds to 224 of the 264 guaranteeable CUs, so one tenant per GPU.
    create_pods(kube_env, [gpu_pod_body(f"big{i}", compute="700m", cls="compute-bound") for i in range(6)])
    wait_for("6 big pods bound", lambda: len(bound(kube_env)) == 6, timeout=60)
    create_pods(kube_env, [gpu_pod_body("waiting", compute="700m", cls="compute-bound")])

    def rejected() -> bool:
        pod = kube_env.api.read_namespaced_pod("waiting", NS)
        conds = {c.type: c for c in pod.status.conditions or []}
        return "PodScheduled" in conds and conds["PodScheduled"].reason == "Unschedulable"

    wait_for("waiting pod rejected for lack of GPU", rejected)
    time.sleep(3)  # let it settle in kube-scheduler's unschedulable pool
    assert "waiting" not in bound(kube_env)
    kube_env.api.delete_namespaced_pod("big0", NS, grace_period_seconds=0)
    took = wait_for("waiting pod bound after a delete", lambda: "waiting" in bound(kube_env), timeout=20)
    assert took < 15, f"waiting pod took {took:.1f}s"
    assert_consistent(kube_env)


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
    create_pods(kube_env, [gpu_pod_body(f"k{i}", compute="100m", cls="memory-bound" if i % 3 else "compute-bound")
                           for i in range(16)])
    wait_for("some pods bound", lambda: len(bound(kube_env)) >= 3, timeout=60)
    kube_env.extender.kill()  # mid-stream: kube-scheduler's calls now fail and its pods back off
    time.sleep(1)
    kube_env.extender.start()
    wait_for("all 16 pods bound", lambda: len(bound(kube_env)) == 16, timeout=90)
    assert_consistent(kube_env)
