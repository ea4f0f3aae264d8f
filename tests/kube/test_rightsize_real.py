"""`gpuslice rightsize` against the real API server and a stub Prometheus on loopback: Deployments
patched as expected (template, record, Event), nothing patched in dry run, PodDisruptionBudgets
respected, and no flapping on a noisy signal. There is no controller-manager here, so the tests
play its part where the controller waits for it (Deployment and PDB status)."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
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


# --- repack: a pod alone on its GPU is evicted when its replacement would go beside other tenants ----------
AT_128 = LADDER.target_text(128)
# 8.5 req/s: need 10.2, which one 128-CU pod carries (so deleting one of two is safe) but not past the
# hysteresis band (so the rule keeps two pods and does not shrink)
REPACK_RATE = 8.5
assert REPACK_RATE * UP <= LADDER.at(128).rps < REPACK_RATE * UP * UP * (1 + POLICY.rightsizing.hysteresis) / UP


LLM = {"gpuslice.io/profile": "llama-3.1-8b", "gpuslice.io/target-rps": AT_128}
EMBEDDING = {"gpuslice.io/compute": "100m", "gpuslice.io/memory": "8Gi", "gpuslice.io/class": "compute-bound"}


def _assignments(node: dict, pods: list[tuple[str, dict[str, str]]], namespace: str) -> list[str]:
    """The assignments the extender gives these pods, bound in order on this node (its own engine)."""
    from extender.core.assignment import ASSIGNMENT_ANNOTATION
    from extender.engine.cluster import MemoryCluster, NodeView, PodView
    from extender.engine.policy_store import PolicyStore
    from extender.engine.scheduler import Engine

    cluster = MemoryCluster()
    meta = node["metadata"]
    cluster.add_node(NodeView(meta["name"], meta["labels"], meta["annotations"], node["status"]["allocatable"]))
    engine = Engine(cluster, PolicyStore(POLICY))
    engine.sync()
    out = []
    for name, asks in pods:
        cluster.add_pod(PodView(name, namespace, name, annotations=asks))
        assert engine.bind(namespace, name, name, meta["name"]) == ""
        bound = cluster.pod_by_uid(name)
        assert bound is not None
        out.append(bound.annotations[ASSIGNMENT_ANNOTATION])
    return out


def _bound_pod(core: client.CoreV1Api, namespace: str, node: dict, name: str, labels: dict[str, str],
               annotations: dict[str, str], assignment: str) -> None:
    """A pod bound to `node` as the extender would have bound it, running and ready (the kubelet's part:
    the Eviction API spares Pending pods a PodDisruptionBudget)."""
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {**annotations, "gpuslice.io/assignment": assignment}},
        "spec": {"nodeName": node["metadata"]["name"], "schedulerName": "nobody", "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "main", "image": "registry.invalid/vllm:1",
                                 "resources": {"limits": {"gpuslice.io/gpu-share": "1"}}}]}})
    core.patch_namespaced_pod_status(name, namespace, {"status": {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})


def lone_fleet(api: client.ApiClient, namespace: str = NS) -> tuple[str, list[str], Callable[[], None]]:
    """A Deployment of two 128-CU pods, each alone on the one GPU of its own node (as scale-downs leave
    them): the Deployment, two GPU nodes and the two pods bound there as the extender would have bound
    them. Returns its name, the pods' names and what removes the nodes and pods."""
    from tests.kube.conftest import gpu_node_body

    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    name = deployment(apps, AT_128, namespace=namespace)
    nodes = [gpu_node_body(f"{name}-n{i}", gpus=1) for i in (1, 2)]
    pods = []
    for i, node in enumerate(nodes):
        core.create_node(node)
        pod = f"{name}-{i}"
        [assignment] = _assignments(node, [(pod, LLM)], namespace)
        _bound_pod(core, namespace, node, pod, {"app": name}, LLM, assignment)
        pods.append(pod)

    def cleanup() -> None:
        for node in nodes:
            core.delete_node(node["metadata"]["name"])
        core.delete_collection_namespaced_pod(namespace, label_selector=f"app={name}", grace_period_seconds=0)

    return name, pods, cleanup


@pytest.fixture
def lone_pods(kube_env: Env, apis: client.ApiClient) -> Iterator[tuple[str, list[str]]]:
    name, pods, cleanup = lone_fleet(apis)
    yield name, pods
    cleanup()


def repacker(api: client.ApiClient, prom: PromStub, apply: bool) -> RightSizer:
    from extender.kube.client import core_api
    from extender.kube.snapshot import list_views

    return RightSizer(lambda: POLICY, Workloads(api), Prometheus(prom.url), RightsizeMetrics(), apply=apply,
                      namespace=NS, clock=lambda: NOW, cluster=lambda: list_views(core_api(api), api))


def _present(api: client.ApiClient, pods: list[str]) -> list[str]:
    """The pods still there and not being deleted."""
    core = client.CoreV1Api(api)
    items = core.list_namespaced_pod(NS).items
    return sorted(p.metadata.name for p in items if p.metadata.name in pods and p.metadata.deletion_timestamp is None)


def test_repack_evicts_a_lone_pod_whose_replacement_would_join_the_other(
        apis: client.ApiClient, prom: PromStub, lone_pods: tuple[str, list[str]]) -> None:
    apps = client.AppsV1Api(apis)
    name, pods = lone_pods
    prom.series[RATE] = [lambda t: REPACK_RATE]
    [dry] = repacker(apis, prom, False).run_once()
    assert not dry.applied and dry.note.startswith("would repack (dry run): pod "), dry.note
    assert _present(apis, pods) == pods and events_for(apis, name) == []

    [out] = repacker(apis, prom, True).run_once()
    assert out.applied and out.note.startswith("repack: pod "), out.note
    assert out.decision is not None and out.decision.next == out.decision.current  # no resize
    [left] = _present(apis, pods)
    gone = next(p for p in pods if p != left)
    assert f"pod {gone} is alone on its GPU" in out.note and f"{name}-n" in out.note
    d = apps.read_namespaced_deployment(name, NS)
    assert d.spec.replicas == 2 and d.spec.template.metadata.annotations["gpuslice.io/target-rps"] == AT_128
    [line] = explain_lines(d.metadata.annotations)
    assert "rightsize repack: pod " + gone in line
    [event] = events_for(apis, name)
    assert event.reason == "Repacked"


def test_repack_waits_for_the_disruption_budget(apis: client.ApiClient, prom: PromStub,
                                                lone_pods: tuple[str, list[str]]) -> None:
    pdbs = client.PolicyV1Api(apis)
    name, pods = lone_pods
    prom.series[RATE] = [lambda t: REPACK_RATE]
    pdb = pdbs.create_namespaced_pod_disruption_budget(NS, {
        "metadata": {"name": name}, "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": name}}}})
    pdbs.patch_namespaced_pod_disruption_budget_status(name, NS, {"status": {  # the disruption controller's part
        "observedGeneration": pdb.metadata.generation, "disruptionsAllowed": 0, "currentHealthy": 2,
        "desiredHealthy": 2, "expectedPods": 2}})
    [held] = repacker(apis, prom, True).run_once()
    assert not held.applied and "hold: a PodDisruptionBudget allows no disruption now" in held.note, held.note
    assert _present(apis, pods) == pods


def test_no_repack_when_the_other_pod_alone_falls_short(apis: client.ApiClient, prom: PromStub,
                                                        lone_pods: tuple[str, list[str]]) -> None:
    name, pods = lone_pods
    prom.series[RATE] = [lambda t: LADDER.at(128).rps / UP + 0.5]  # two pods needed: deleting one is not safe
    [out] = repacker(apis, prom, True).run_once()
    assert not out.applied and out.note.startswith("hold:"), out.note
    assert _present(apis, pods) == pods


def test_repack_restarts_a_one_pod_deployment_beside_compute_bound_tenants(
        kube_env: Env, apis: client.ApiClient, prom: PromStub) -> None:
    # one 128-CU replica alone on n1's GPU; n2's GPU holds two compute-bound pods, with room for one
    # memory-bound pod beside them. Deleting the only replica would stop the service: its Deployment
    # (default strategy: the new pod first) is restarted instead, by a pod-template annotation.
    from tests.kube.conftest import gpu_node_body

    apps, core = client.AppsV1Api(apis), client.CoreV1Api(apis)
    prom.series[RATE] = [lambda t: REPACK_RATE]
    name = deployment(apps, AT_128, replicas=1)
    n1, n2 = (gpu_node_body(f"{name}-n{i}", gpus=1) for i in (1, 2))
    pod, embeddings = f"{name}-0", [f"{name}-emb-{i}" for i in (1, 2)]
    try:
        for node in (n1, n2):
            core.create_node(node)
        [assignment] = _assignments(n1, [(pod, LLM)], NS)
        _bound_pod(core, NS, n1, pod, {"app": name}, LLM, assignment)
        for emb, a in zip(embeddings, _assignments(n2, [(e, EMBEDDING) for e in embeddings], NS), strict=True):
            _bound_pod(core, NS, n2, emb, {"app": f"{name}-emb"}, EMBEDDING, a)
        before = apps.read_namespaced_deployment(name, NS)

        [dry] = repacker(apis, prom, False).run_once()
        assert not dry.applied and dry.note.startswith("would repack (dry run): pod "), dry.note
        assert apps.read_namespaced_deployment(name, NS).metadata.generation == before.metadata.generation

        [out] = repacker(apis, prom, True).run_once()
        assert out.applied and "it is restarted" in out.note and f"{name}-n2 GPU 0 (2 tenants)" in out.note, out.note
        d = apps.read_namespaced_deployment(name, NS)
        assert d.metadata.generation == before.metadata.generation + 1 and d.spec.replicas == 1
        assert d.spec.template.metadata.annotations["gpuslice.io/repacked-at"] == "2026-01-01T00:00:00Z"
        assert _present(apis, [pod]) == [pod]  # nothing deleted: the rollout replaces it, new pod first
        [line] = explain_lines(d.metadata.annotations)
        assert f"rightsize repack: pod {pod} is alone" in line
        assert [e.reason for e in events_for(apis, name)] == ["Repacked"]
    finally:
        for node in (n1, n2):
            core.delete_node(node["metadata"]["name"])
        for p in [pod, *embeddings]:
            core.delete_namespaced_pod(p, NS, grace_period_seconds=0)
