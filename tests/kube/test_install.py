"""deploy/ on a real API server (RBAC authorization): one apply installs everything, the components
do their whole job with their own ServiceAccounts' tokens and no more, and the admission webhook is
called by the API server itself.

One control plane for the module: the kustomization is applied (server-side dry-run first, then for
real), ServiceAccount tokens come from the TokenRequest API, and the extender, kube-scheduler, the
webhook and the agent's API calls each run with their own.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client as k8s

from extender.kube.client import api_client, core_api
from extender.kube.controlplane import ControlPlane, free_port
from tests.kube.conftest import ROOT, gpu_node_body, scheduler_config, start_control_plane

DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.36.0"
ACCOUNTS = {"scheduler": ("kube-system", "gpuslice-scheduler"), "agent": ("gpuslice-system", "gpuslice-agent"),
            "webhook": ("gpuslice-system", "gpuslice-webhook")}


def kubectl(cp: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(cp.assets / "kubectl"), "--kubeconfig", str(cp.kubeconfig), *args],
                         capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, f"kubectl {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


class Installed:
    def __init__(self, cp: ControlPlane, dry_run: str) -> None:
        self.cp = cp
        self.dry_run = dry_run
        self.admin = core_api(api_client(str(cp.kubeconfig)))
        self.kubeconfigs: dict[str, Path] = {}
        self.procs: list[subprocess.Popen] = []

    def kubeconfig_for(self, who: str) -> Path:
        """A kubeconfig holding a fresh token of the ServiceAccount `who` runs as."""
        if who not in self.kubeconfigs:
            namespace, name = ACCOUNTS[who]
            token = self.admin.create_namespaced_service_account_token(
                name, namespace, k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(
                    audiences=["https://kubernetes.default.svc"], expiration_seconds=3600))).status.token
            doc = yaml.safe_load(self.cp.kubeconfig.read_text())
            doc["users"] = [{"name": "admin", "user": {"token": token}}]
            path = self.cp.workdir / f"kubeconfig-{who}"
            path.write_text(yaml.safe_dump(doc))
            self.kubeconfigs[who] = path
        return self.kubeconfigs[who]

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.cp.workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it open
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.cp.workdir / f"{name}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    cp = start_control_plane()
    if not (cp.assets / "kubectl").is_file():
        cp.stop()
        pytest.skip("kubectl not found beside the control plane binaries")
    try:
        # Objects in gpuslice-system can only be dry-run once the namespace exists.
        kubectl(cp, "apply", "--server-side", "-f", str(DEPLOY / "namespace.yaml"))
        dry = kubectl(cp, "apply", "--server-side", "--dry-run=server", "-k", str(DEPLOY)).stdout
        kubectl(cp, "apply", "--server-side", "-k", str(DEPLOY))
        env = Installed(cp, dry)
        yield env
    finally:
        for proc in locals().get("env", Installed(cp, "")).procs:
            proc.kill()
            proc.wait()
        cp.stop()


def rendered(cp: ControlPlane) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(kubectl(cp, "kustomize", str(DEPLOY)).stdout) if d]


def test_every_rendered_object_is_valid_and_accepted_by_server_side_dry_run(installed: Installed) -> None:
    docs = rendered(installed.cp)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for doc in docs:
        kind, name = doc["kind"].lower(), doc["metadata"]["name"]
        assert f"{kind}.{doc['apiVersion'].split('/')[0]}/{name}" in installed.dry_run or \
            f"{kind}/{name}" in installed.dry_run, (kind, name, installed.dry_run)
    assert "serverside-applied (server dry run)" in installed.dry_run


def test_one_apply_created_everything(installed: Installed) -> None:
    kinds = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in rendered(installed.cp)}
    assert ("Namespace", None, "gpuslice-system") in kinds
    for kind, namespace, name in sorted(kinds, key=str):
        args = ["get", kind.lower(), name, "-o", "name"] + (["-n", namespace] if namespace else [])
        assert kubectl(installed.cp, *args).stdout.strip(), (kind, namespace, name)


def can_i(installed: Installed, who: str, verb: str, resource: str, namespace: str = "", name: str = "") -> bool:
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource + (f"/{name}" if name else "")] + ([f"--subresource={sub}"] if sub else [])
    args += ["-n", namespace] if namespace else ["--all-namespaces"] if resource.split("/")[0] in (
        "pods", "events", "secrets", "configmaps") else []
    out = subprocess.run([str(installed.cp.assets / "kubectl"), "--kubeconfig", str(installed.kubeconfig_for(who)),
                          *args], capture_output=True, text=True, timeout=60)
    return out.stdout.strip() == "yes"


@pytest.mark.parametrize(("who", "verb", "resource", "namespace", "name", "allowed"), [
    ("scheduler", "watch", "nodes", "", "", True),
    ("scheduler", "patch", "nodes", "", "", True),
    ("scheduler", "create", "pods/binding", "default", "", True),
    ("scheduler", "get", "leases.coordination.k8s.io", "kube-system", "gpuslice-scheduler", True),
    ("scheduler", "create", "pods", "default", "", False),
    ("scheduler", "delete", "nodes", "", "", False),
    ("scheduler", "patch", "pods", "default", "", False),
    ("scheduler", "get", "secrets", "kube-system", "", False),
    ("scheduler", "update", "leases.coordination.k8s.io", "kube-system", "someone-else", False),
    ("agent", "patch", "nodes", "", "", True),
    ("agent", "create", "events", "default", "", True),
    ("agent", "create", "pods/eviction", "default", "", True),
    ("agent", "delete", "nodes", "", "", False),
    ("agent", "get", "secrets", "gpuslice-system", "", False),
    ("agent", "create", "pods/binding", "default", "", False),
    ("webhook", "get", "secrets", "gpuslice-system", "gpuslice-webhook-tls", True),
    ("webhook", "get", "secrets", "gpuslice-system", "other", False),
    ("webhook", "get", "secrets", "kube-system", "gpuslice-webhook-tls", False),
    ("webhook", "patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io", "", "gpuslice", True),
    ("webhook", "patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io", "", "other", False),
    ("webhook", "list", "pods", "default", "", False),
])
def test_service_account_rights(installed: Installed, who: str, verb: str, resource: str, namespace: str,
                                name: str, allowed: bool) -> None:
    assert can_i(installed, who, verb, resource, namespace, name) is allowed


def gpuslice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "extender", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def webhook(installed: Installed) -> str:
    """`gpuslice webhook` as its ServiceAccount: makes its Secret and writes caBundle. The API server
    calls it at https://localhost:PORT (no Service routing here), so the registration's Service is
    swapped for that URL, as an operator running the webhook outside the cluster would."""
    admission = k8s.AdmissionregistrationV1Api(api_client(str(installed.cp.kubeconfig)))
    port = free_port()
    admission.patch_mutating_webhook_configuration("gpuslice", [
        {"op": "replace", "path": "/webhooks/0/clientConfig", "value": {"url": f"https://localhost:{port}/mutate"}}])
    installed.spawn("webhook", [sys.executable, "-m", "extender", "webhook", "--kubeconfig",
                                str(installed.kubeconfig_for("webhook")), "--host", "127.0.0.1", "--port", str(port),
                                "--cert-secret", "gpuslice-system/gpuslice-webhook-tls",
                                "--service", "gpuslice-system/gpuslice-webhook", "--cert-dns-name", "localhost",
                                "--webhook-configuration", "gpuslice", "--cert-dir",
                                str(installed.cp.workdir / "webhook-tls")])
    wait_for("caBundle", lambda: admission.read_mutating_webhook_configuration("gpuslice").webhooks[0]
             .client_config.ca_bundle)
    wait_for("webhook listening", lambda: "listening on" in installed.log("webhook"))
    return f"https://localhost:{port}"


def test_webhook_made_its_certificate_with_its_own_rights(installed: Installed, webhook: str) -> None:
    secret = installed.admin.read_namespaced_secret("gpuslice-webhook-tls", "gpuslice-system")
    assert secret.type == "kubernetes.io/tls" and {"ca.crt", "tls.crt", "tls.key"} <= set(secret.data)
    bundle = k8s.AdmissionregistrationV1Api(api_client(str(installed.cp.kubeconfig))) \
        .read_mutating_webhook_configuration("gpuslice").webhooks[0].client_config.ca_bundle
    assert base64.b64decode(bundle) == base64.b64decode(secret.data["ca.crt"])


def annotated_pod(name: str, **annotations: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {f"gpuslice.io/{k}": v for k, v in annotations.items()}},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "main", "image": "registry.invalid/pause:1"}]}}


def test_the_api_server_calls_the_webhook(installed: Installed, webhook: str) -> None:
    api = installed.admin
    made = api.create_namespaced_pod("default", annotated_pod("opt-in", compute="250m", memory="16Gi"))
    assert made.spec.scheduler_name == "gpuslice"
    assert made.spec.containers[0].resources.limits == {"gpuslice.io/gpu-share": "1"}

    with pytest.raises(k8s.ApiException) as err:
        api.create_namespaced_pod("default", annotated_pod("bad", compute="2", memory="16Gi"))
    assert err.value.status == 400
    assert "gpuslice: gpuslice.io/compute='2'" in json.loads(err.value.body)["message"]

    with pytest.raises(k8s.ApiException) as err:
        api.create_namespaced_pod("default", annotated_pod("typo", compute="250m", memroy="16Gi"))
    assert "did you mean gpuslice.io/memory?" in json.loads(err.value.body)["message"]

    plain = api.create_namespaced_pod("default", annotated_pod("plain"))
    assert plain.spec.scheduler_name == "default-scheduler" and not plain.spec.containers[0].resources.limits
    routed = annotated_pod("dra-routed")  # a DRA pod asking for the routing marker: the scheduler alone
    routed["spec"]["containers"][0]["resources"] = {"limits": {"gpuslice.io/dra-routed": "1"}}
    made = api.create_namespaced_pod("default", routed)
    assert made.spec.scheduler_name == "gpuslice"
    assert made.spec.containers[0].resources.limits == {"gpuslice.io/dra-routed": "1"}
    system = api.create_namespaced_pod("kube-system", annotated_pod("system", compute="250m", memory="16Gi"))
    assert system.spec.scheduler_name == "default-scheduler"  # never gates the system namespaces
    for ns, name in (("default", "opt-in"), ("default", "plain"), ("default", "dra-routed"),
                     ("kube-system", "system")):
        api.delete_namespaced_pod(name, ns, grace_period_seconds=0)


def test_extender_and_scheduler_do_their_job_as_their_service_account(installed: Installed, webhook: str) -> None:
    """Watch, lease read, bind and the freed-capacity nudge, all under gpuslice-scheduler's token; the
    pods opt in with annotations alone (the webhook, called by the API server, does the rest)."""
    cp, api = installed.cp, installed.admin
    kubeconfig = installed.kubeconfig_for("scheduler")
    port = free_port()
    installed.spawn("extender", [sys.executable, "-m", "extender", "serve", "--kubeconfig", str(kubeconfig),
                                 "--port", str(port), "--lease", "kube-system/gpuslice-scheduler",
                                 "--scheduler-name", "gpuslice"])
    ready = f"http://127.0.0.1:{port}/readyz"

    def is_ready() -> bool:
        try:
            with urllib.request.urlopen(ready, timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_for("extender ready", is_ready)
    cfg = yaml.safe_load(scheduler_config(kubeconfig, port))
    cp.start_scheduler(yaml.safe_dump(cfg), name="sa-kube-scheduler")

    api.create_node(gpu_node_body("sa-node", gpus=1))
    # 1 GPU: 272 CUs outside the burst region; two 250m (96-CU) slices fit, a third waits
    for i in range(3):
        api.create_namespaced_pod("default", annotated_pod(f"sa-{i}", compute="250m", memory="16Gi",
                                                           **{"class": "compute-bound"}))

    def bound() -> list[str]:
        pods = [p for p in api.list_namespaced_pod("default").items if p.metadata.name.startswith("sa-")
                and not p.metadata.deletion_timestamp]
        return [p.metadata.name for p in pods if p.spec.node_name and
                "gpuslice.io/assignment" in (p.metadata.annotations or {})]

    wait_for("two pods bound", lambda: len(bound()) == 2, timeout=90)
    time.sleep(2)
    assert len(bound()) == 2  # the third does not fit
    waiting = next(f"sa-{i}" for i in range(3) if f"sa-{i}" not in bound())
    # why is it pending? `gpuslice explain` and `gpuslice top` on the live cluster
    explained = gpuslice("explain", f"default/{waiting}", "--kubeconfig", str(cp.kubeconfig), "--json")
    doc = json.loads(explained.stdout)
    assert explained.returncode == 1 and doc["fittingNodes"] == 0, explained.stderr
    assert doc["best"][0]["node"] == "sa-node" and doc["best"][0]["constraint"] == "compute"
    assert any("gpuslice.io/compute <=" in h for h in doc["hints"])
    top = gpuslice("top", "--kubeconfig", str(cp.kubeconfig), "--once")
    assert top.returncode == 0 and "sa-node" in top.stdout and "default/sa-" in top.stdout, top.stderr
    api.delete_namespaced_pod(bound()[0], "default", grace_period_seconds=0)
    wait_for("the waiting pod bound after capacity freed", lambda: waiting in bound(), timeout=60)
    node = api.read_node("sa-node")
    assert "gpuslice.io/capacity-freed" in (node.metadata.annotations or {})  # the nudge, patched as the SA
    assert "forbidden" not in installed.log("extender").lower(), installed.log("extender")[-3000:]
    assert "is forbidden" not in cp.log("sa-kube-scheduler"), cp.log("sa-kube-scheduler")[-3000:]


def test_agent_api_calls_as_its_service_account(installed: Installed) -> None:
    from extender.agent.kube import KubeAdapter

    api = installed.admin
    api.create_node(gpu_node_body("agent-node", gpus=1))
    pod = annotated_pod("agent-pod", compute="250m", memory="16Gi")
    pod["spec"]["nodeName"] = "agent-node"
    api.create_namespaced_pod("default", pod)
    agent = KubeAdapter(core_api(api_client(str(installed.kubeconfig_for("agent")))), "agent-node")
    (info,) = [p for p in agent.pods_on_node("agent-node") if p.name == "agent-pod"]
    agent.publish_inventory("agent-node", "[]")
    assert api.read_node("agent-node").metadata.annotations["gpuslice.io/inventory"] == "[]"
    agent.event(info, "GpuMemoryLimitExceeded", "test event")
    events = api.list_namespaced_event("default", field_selector="involvedObject.name=agent-pod").items
    assert [e.reason for e in events] == ["GpuMemoryLimitExceeded"]
    agent.evict(info, "test eviction")
    wait_for("evicted", lambda: not [p for p in api.list_namespaced_pod("default").items
                                     if p.metadata.name == "agent-pod" and not p.metadata.deletion_timestamp])
    outside = core_api(api_client(str(installed.kubeconfig_for("agent"))))
    with pytest.raises(k8s.ApiException) as err:
        outside.delete_node("agent-node")
    assert err.value.status == 403
