"""`gpuslice rightsize` against the real API server and a stub Prometheus on loopback: Deployments
patched as expected (template, record, Event), nothing patched in dry run, PodDisruptionBudgets
respected, and no flapping on a noisy signal. There is no controller-manager here, so the tests
play its part where the controller waits for it (Deployment and PDB status)."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from extender.core.policy import load_policy
from extender.core.rightsizing import explain_lines, sla_ladder
from extender.kube.client import api_client
from extender.rightsize.controller import RightSizer
from extender.rightsize.metrics import RightsizeMetrics
from extender.rightsize.prometheus import Prometheus
from extender.rightsize.workloads import Workloads
from tests.kube.conftest import Env
from tests.rightsize.prom_stub import PromStub, prometheus

POLICY = load_policy(Path(__file__).resolve().parents[2] / "policies" / "mi300x-inference.yaml")
NS = "rightsize-test"
NOW = 1_767_225_600.0
RATE = "vllm:request_success_total"
LADDER = sla_ladder(POLICY, "llama-3.1-8b", POLICY.profiles["llama-3.1-8b"].minMemory)
AT_32, AT_64, AT_96 = (LADDER.target_text(c) for c in (32, 64, 96))  # the target-rps the extender sizes them for
UP = 1 + POLICY.rightsizing.headroom
# 13 req/s: 2 x 32 CUs fall short of the need (13 x UP), 2 x 64 carry it
assert 2 * LADDER.at(32).rps < 13.0 * UP <= 2 * LADDER.at(64).rps


@pytest.fixture
def apis(kube_env: Env) -> Iterator[client.ApiClient]:
    api = api_client(str(kube_env.cp.kubeconfig))
    try:
        kube_env.api.create_namespace({"metadata": {"name": NS}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    yield api
    apps = client.AppsV1Api(api)
    apps.delete_collection_namespaced_deployment(NS)
    client.PolicyV1Api(api).delete_collection_namespaced_pod_disruption_budget(NS)


@pytest.fixture
def prom() -> Iterator[PromStub]:
    with prometheus() as stub:
        yield stub


def deployment(apps: client.AppsV1Api, target: str, replicas: int = 2, namespace: str = NS) -> str:
    name = f"chat-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}, "annotations": {
                         "gpuslice.io/profile": "llama-3.1-8b", "gpuslice.io/target-rps": target}},
                         "spec": {"schedulerName": "nobody", "containers": [{
                             "name": "vllm", "image": "registry.invalid/vllm:1",
                             "resources": {"limits": {"gpuslice.io/gpu-share": "1"}}}]}}}}
    apps.create_namespaced_deployment(namespace, body)
    rolled_out(apps, name, namespace)
    return name


def rolled_out(apps: client.AppsV1Api, name: str, namespace: str = NS) -> None:
    """What the Deployment controller would write once the rollout is done."""
    d = apps.read_namespaced_deployment(name, namespace)
    n = d.spec.replicas
    apps.patch_namespaced_deployment_status(name, namespace, {"status": {
        "observedGeneration": d.metadata.generation, "replicas": n, "updatedReplicas": n, "readyReplicas": n,
        "availableReplicas": n}})


def sizer(api: client.ApiClient, prom: PromStub, apply: bool, clock: list[float]) -> RightSizer:
    return RightSizer(lambda: POLICY, Workloads(api), Prometheus(prom.url), RightsizeMetrics(), apply=apply,
                      namespace=NS, clock=lambda: clock[0])


def events_for(api: client.ApiClient, name: str) -> list[client.CoreV1Event]:
    return [e for e in client.CoreV1Api(api).list_namespaced_event(NS).items if e.involved_object.name == name]


def test_apply_patches_the_deployment_and_dry_run_patches_nothing(apis: client.ApiClient, prom: PromStub) -> None:
    apps = client.AppsV1Api(apis)
    prom.series[RATE] = [lambda t: 13.0]
    name = deployment(apps, AT_32)  # 2 x 32 CUs fall short of need 15.6
    before = apps.read_namespaced_deployment(name, NS)
    [dry] = sizer(apis, prom, False, [NOW]).run_once()
    assert dry.decision is not None and dry.decision.action == "up" and not dry.applied
    after = apps.read_namespaced_deployment(name, NS)
    assert after.metadata.resource_version == before.metadata.resource_version
    assert events_for(apis, name) == []

    [out] = sizer(apis, prom, True, [NOW]).run_once()
    assert out.applied, out.note
    d = apps.read_namespaced_deployment(name, NS)
    assert d.spec.template.metadata.annotations["gpuslice.io/target-rps"] == AT_96  # the extender gives 96 CUs
    assert d.spec.replicas == 2 and d.metadata.generation == before.metadata.generation + 1
    [line] = explain_lines(d.metadata.annotations)
    assert "rightsize up: 2 x 32 CUs" in line and "-> 2 x 96 CUs" in line
    [event] = events_for(apis, name)
    assert event.reason == "RightSized" and event.involved_object.kind == "Deployment"

    [again] = sizer(apis, prom, True, [NOW + 60]).run_once()  # the rollout has not finished
    assert not again.applied and "hold" in again.note


def test_a_disruption_budget_holds_the_change_until_it_allows_one(apis: client.ApiClient, prom: PromStub) -> None:
    apps = client.AppsV1Api(apis)
    pdbs = client.PolicyV1Api(apis)
    prom.series[RATE] = [lambda t: 13.0]
    name = deployment(apps, AT_32)
    pdbs.create_namespaced_pod_disruption_budget(NS, {
        "metadata": {"name": name}, "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": name}}}})
    rs = sizer(apis, prom, True, [NOW])
    [held] = rs.run_once()
    assert not held.applied and f"PodDisruptionBudget {name} allows no disruption now" in held.note
    assert apps.read_namespaced_deployment(name, NS).spec.template.metadata.annotations[
        "gpuslice.io/target-rps"] == AT_32
    pdbs.patch_namespaced_pod_disruption_budget_status(name, NS, {"status": {
        "disruptionsAllowed": 1, "currentHealthy": 3, "desiredHealthy": 2, "expectedPods": 3}})
    [out] = rs.run_once()
    assert out.applied, out.note


def test_no_flapping_on_a_noisy_signal(apis: client.ApiClient, prom: PromStub) -> None:
    apps = client.AppsV1Api(apis)
    # about 9 req/s, 30 s samples with 13% noise: 2 x 64 CUs carry a 4-sigma peak, and 2 x 32 are too tight
    # for even the mean past the hysteresis band
    assert 9.0 * UP * (1 + POLICY.rightsizing.hysteresis) > 2 * LADDER.at(32).rps
    assert (9.0 + 4 * 1.2) * UP < 2 * LADDER.at(64).rps
    prom.series[RATE] = [lambda t: max(0.0, 9.0 + random.Random(int(t)).gauss(0, 1.2))]
    name = deployment(apps, AT_64)
    clock = [NOW]
    rs = sizer(apis, prom, True, clock)
    applied = 0
    for _ in range(72):  # six hours, a pass every five minutes
        [out] = rs.run_once()
        if out.applied:
            applied += 1
            rolled_out(apps, name)
        clock[0] += 300
    d = apps.read_namespaced_deployment(name, NS)
    assert applied == 0, explain_lines(d.metadata.annotations)
    assert d.spec.template.metadata.annotations["gpuslice.io/target-rps"] == AT_64


def owned_pod(api: client.ApiClient, owner_kind: str, owner_name: str, owner_uid: str) -> str:
    """A pod controlled by `owner` (as the ReplicaSet / StatefulSet controller would create it)."""
    name = f"{owner_name}-{uuid.uuid4().hex[:5]}"
    client.CoreV1Api(api).create_namespaced_pod(NS, {
        "metadata": {"name": name, "namespace": NS, "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": owner_kind, "name": owner_name, "uid": owner_uid, "controller": True}],
            "annotations": {"gpuslice.io/profile": "llama-3.1-8b", "gpuslice.io/target-rps": AT_64}},
        "spec": {"schedulerName": "nobody", "containers": [{"name": "vllm", "image": "registry.invalid/vllm:1"}]}})
    return name


def explained(kube_env: Env, capsys: pytest.CaptureFixture[str], pod: str) -> tuple[dict, str]:
    from extender.cli import main

    args = ["explain", f"{NS}/{pod}", "--kubeconfig", str(kube_env.cp.kubeconfig)]
    main([*args, "--json"])
    doc = json.loads(capsys.readouterr().out)
    main(args)
    return doc, capsys.readouterr().out


def test_explain_prints_the_owners_right_sizing_changes(kube_env: Env, apis: client.ApiClient, prom: PromStub,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    apps = client.AppsV1Api(apis)
    prom.series[RATE] = [lambda t: 13.0]
    name = deployment(apps, AT_32)
    [out] = sizer(apis, prom, True, [NOW]).run_once()
    assert out.applied, out.note
    d = apps.read_namespaced_deployment(name, NS)
    rs = apps.create_namespaced_replica_set(NS, {
        "metadata": {"name": f"{name}-5d8f7", "namespace": NS, "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": d.metadata.uid, "controller": True}]},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                 "template": d.to_dict()["spec"]["template"] | {"metadata": {"labels": {"app": name}}}}})
    pod = owned_pod(apis, "ReplicaSet", rs.metadata.name, rs.metadata.uid)
    doc, text = explained(kube_env, capsys, pod)
    [line] = explain_lines(d.metadata.annotations)
    assert doc["rightsizing"] == {"owner": f"Deployment/{name}", "changes": [line]}
    assert f"right-sizing of Deployment/{name}" in text and line in text

    # a pod of a never-changed StatefulSet, and a pod without an owner: no right-sizing lines
    sts = apps.create_namespaced_stateful_set(NS, {
        "metadata": {"name": f"sts-{uuid.uuid4().hex[:5]}", "namespace": NS},
        "spec": {"replicas": 0, "serviceName": "x", "selector": {"matchLabels": {"app": "sts"}},
                 "template": {"metadata": {"labels": {"app": "sts"}}, "spec": {"containers": [
                     {"name": "c", "image": "registry.invalid/c:1"}]}}}})
    doc, text = explained(kube_env, capsys, owned_pod(apis, "StatefulSet", sts.metadata.name, sts.metadata.uid))
    assert doc["rightsizing"] == {"owner": f"StatefulSet/{sts.metadata.name}", "changes": []}
    assert "right-sizing" not in text
    apps.patch_namespaced_stateful_set(sts.metadata.name, NS, {"metadata": {"annotations": {
        "gpuslice.io/rightsize": d.metadata.annotations["gpuslice.io/rightsize"]}}})
    doc, _ = explained(kube_env, capsys, owned_pod(apis, "StatefulSet", sts.metadata.name, sts.metadata.uid))
    assert doc["rightsizing"]["changes"] == [line]
    client.CoreV1Api(apis).delete_collection_namespaced_pod(NS)
    apps.delete_collection_namespaced_stateful_set(NS)
    apps.delete_collection_namespaced_replica_set(NS)
