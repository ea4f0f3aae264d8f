"""deploy/rightsize on a real API server with RBAC: accepted by a server-side dry run, then applied; the
controller does its whole job (list, patch, PDB check, Event) with its ServiceAccount's token and
cannot do more."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from extender.kube.client import api_client, core_api
from extender.kube.snapshot import list_views
from extender.rightsize.controller import RightSizer
from extender.rightsize.metrics import RightsizeMetrics
from extender.rightsize.prometheus import Prometheus
from extender.rightsize.workloads import Workloads
from tests.kube.conftest import ROOT, Env
from tests.kube.test_rightsize_real import AT_32, AT_96, NOW, POLICY, RATE, REPACK_RATE, deployment, lone_fleet
from tests.rightsize.prom_stub import prometheus

DEPLOY = ROOT / "deploy"
NS = "rightsize-install"


def kubectl(env: Env, *args: str, user: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(env.cp.assets / "kubectl"), "--kubeconfig", str(user or env.cp.kubeconfig), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def installed(kube_env: Env) -> Iterator[tuple[str, Path]]:
    """(the server dry run's output, a kubeconfig holding the controller's ServiceAccount token)."""
    assert kubectl(kube_env, "apply", "--server-side", "-f", str(DEPLOY / "namespace.yaml")).returncode == 0
    dry = kubectl(kube_env, "apply", "--server-side", "--dry-run=server", "-k", str(DEPLOY / "rightsize"))
    assert dry.returncode == 0, dry.stderr
    applied = kubectl(kube_env, "apply", "--server-side", "-k", str(DEPLOY / "rightsize"))
    assert applied.returncode == 0, applied.stderr
    admin = client.CoreV1Api(api_client(str(kube_env.cp.kubeconfig)))
    token = admin.create_namespaced_service_account_token("gpuslice-rightsize", "gpuslice-system",
                                                          client.AuthenticationV1TokenRequest(
                                                              spec=client.V1TokenRequestSpec(
                                                                  audiences=["https://kubernetes.default.svc"],
                                                                  expiration_seconds=3600))).status.token
    doc = yaml.safe_load(kube_env.cp.kubeconfig.read_text())
    doc["users"] = [{"name": "admin", "user": {"token": token}}]
    path = kube_env.cp.workdir / "kubeconfig-rightsize"
    path.write_text(yaml.safe_dump(doc))
    try:
        admin.create_namespace({"metadata": {"name": NS}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    yield dry.stdout, path
    kubectl(kube_env, "delete", "-k", str(DEPLOY / "rightsize"), "--wait=false")


def test_the_dry_run_accepts_every_object(installed: tuple[str, Path]) -> None:
    dry, _ = installed
    for name in ("serviceaccount/gpuslice-rightsize", "clusterrole.rbac.authorization.k8s.io/gpuslice-rightsize",
                 "clusterrolebinding.rbac.authorization.k8s.io/gpuslice-rightsize",
                 "deployment.apps/gpuslice-rightsize"):
        assert f"{name} serverside-applied (server dry run)" in dry, dry


@pytest.mark.parametrize(("verb", "resource", "allowed"), [
    ("list", "deployments.apps", True), ("patch", "statefulsets.apps", True),
    ("list", "poddisruptionbudgets.policy", True), ("create", "events", True),
    ("list", "pods", True), ("list", "nodes", True), ("list", "resourceclaims.resource.k8s.io", True),
    ("create", "pods --subresource=eviction", True),  # repack
    ("delete", "deployments.apps", False), ("create", "deployments.apps", False), ("get", "secrets", False),
    ("patch", "pods", False), ("delete", "pods", False), ("patch", "nodes", False),
])
def test_its_rights(kube_env: Env, installed: tuple[str, Path], verb: str, resource: str, allowed: bool) -> None:
    out = kubectl(kube_env, "auth", "can-i", verb, *resource.split(), "-n", NS, user=installed[1])
    assert out.stdout.strip() == ("yes" if allowed else "no"), out.stderr


def test_the_controller_resizes_a_deployment_with_its_own_token(kube_env: Env, installed: tuple[str, Path]) -> None:
    admin = api_client(str(kube_env.cp.kubeconfig))
    apps = client.AppsV1Api(admin)
    name = deployment(apps, AT_32, namespace=NS)  # 2 x 32 CUs fall short of 13 req/s with the headroom
    with prometheus() as prom:
        prom.series[RATE] = [lambda t: 13.0]
        sizer = RightSizer(lambda: POLICY, Workloads(api_client(str(installed[1]))), Prometheus(prom.url),
                           RightsizeMetrics(), apply=True, namespace=NS, clock=lambda: NOW)
        [out] = sizer.run_once()
    assert out.applied, out.note
    d = apps.read_namespaced_deployment(name, NS)
    assert d.spec.template.metadata.annotations["gpuslice.io/target-rps"] == AT_96  # 128 CUs wanted, 64 a step
    events = [e for e in client.CoreV1Api(admin).list_namespaced_event(NS).items if e.involved_object.name == name]
    assert [e.reason for e in events] == ["RightSized"]


def test_the_controller_repacks_a_lone_pod_with_its_own_token(kube_env: Env, installed: tuple[str, Path]) -> None:
    admin = api_client(str(kube_env.cp.kubeconfig))
    name, pods, cleanup = lone_fleet(admin, NS)
    try:
        own = api_client(str(installed[1]))
        with prometheus() as prom:
            prom.series[RATE] = [lambda t: REPACK_RATE]
            sizer = RightSizer(lambda: POLICY, Workloads(own), Prometheus(prom.url), RightsizeMetrics(), apply=True,
                               namespace=NS, clock=lambda: NOW, cluster=lambda: list_views(core_api(own), own))
            [out] = [o for o in sizer.run_once() if o.workload == f"{NS}/{name}"]
        assert out.applied and out.note.startswith("repack: pod "), out.note
        left = [p for p in client.CoreV1Api(admin).list_namespaced_pod(NS, label_selector=f"app={name}").items
                if p.metadata.deletion_timestamp is None]
        assert len(left) == 1 and left[0].metadata.name in pods
    finally:
        cleanup()
