"""deploy/: the scheduler configuration says what the extender needs, and the kustomization builds."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from extender.engine.dra_requests import MARKER_RESOURCE
from extender.kube.controlplane import assets_dir

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_scheduler_config_has_the_gpuslice_profile_and_extender() -> None:
    cfg = yaml.safe_load((DEPLOY / "scheduler-config.yaml").read_text())
    assert cfg["kind"] == "KubeSchedulerConfiguration"
    profile = cfg["profiles"][0]
    assert profile["schedulerName"] == "gpuslice" and profile["percentageOfNodesToScore"] == 100
    (ext,) = cfg["extenders"]
    assert ext["urlPrefix"].startswith("http://127.0.0.1:")
    assert {ext[k] for k in ("filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb")} == {
        "filter", "prioritize", "bind", "preempt"}
    assert ext["nodeCacheCapable"] is True and ext["httpTimeout"]
    assert ext["managedResources"] == [{"name": "gpuslice.io/gpu-share", "ignoredByScheduler": True},
                                       {"name": MARKER_RESOURCE, "ignoredByScheduler": True}]
    assert cfg["leaderElection"]["resourceName"] == "gpuslice-scheduler"


def test_extender_shares_the_scheduler_lease_and_listens_on_loopback() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "scheduler-deployment.yaml").read_text()))
    containers = {c["name"]: c for c in docs[0]["spec"]["template"]["spec"]["containers"]}
    args = containers["extender"]["args"]
    assert "--lease=kube-system/gpuslice-scheduler" in args and "--host=127.0.0.1" in args
    assert "--in-cluster" in args


def test_rbac_is_least_privilege() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "gpuslice-extender")
    rules = {tuple(r["resources"]): set(r["verbs"]) for r in role["rules"]}
    assert rules == {("nodes",): {"get", "list", "watch", "patch"}, ("pods",): {"get", "list", "watch"},
                     ("pods/binding",): {"create"}, ("resourceclaims",): {"list", "watch"}}
    for d in docs:
        for r in d.get("rules", []):
            assert "*" not in r["verbs"] and "delete" not in r["verbs"] and "secrets" not in r["resources"]


def test_kustomization_builds() -> None:
    kubectl = (assets_dir() or Path("/nonexistent")) / "kubectl"
    if not kubectl.is_file():
        pytest.skip("kubectl not found in $KUBEBUILDER_ASSETS")
    out = subprocess.run([str(kubectl), "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout)]
    assert {"Deployment", "ClusterRole", "ConfigMap", "ServiceAccount"} <= set(kinds)
