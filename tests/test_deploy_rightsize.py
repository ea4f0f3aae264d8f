"""deploy/rightsize (opt-in: `kubectl apply -k deploy/rightsize` after deploy/): the right-sizing
controller's Deployment, ServiceAccount and least-privilege RBAC, validated offline like deploy/.
tests/kube/test_rightsize_install.py applies it to a real API server and runs the controller with its
ServiceAccount's token."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from extender.cli import build_parser
from tests.test_deploy_manifests import DEPLOY, DOCS, K8S_VERSION, build, gpuslice_images, kustomization

RIGHTSIZE = DEPLOY / "rightsize"
OBJECTS = build(RIGHTSIZE)


def one(kind: str) -> dict[str, Any]:
    [doc] = [d for d in OBJECTS if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("doc", OBJECTS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_object_validates_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_it_runs_the_controller_in_dry_run_with_the_installed_policy() -> None:
    deployment = one("Deployment")
    spec = deployment["spec"]["template"]["spec"]
    [c] = spec["containers"]
    args = build_parser().parse_args(c["args"])
    assert args.func.__name__ == "rightsize_cmd" and args.in_cluster and not args.apply  # dry run by default
    assert args.policy == "/etc/gpuslice/policy/policy.yaml" and args.prometheus.startswith("http")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    namespace = deployment["metadata"]["namespace"]
    installed = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in DOCS}
    assert ("Namespace", None, namespace) in installed  # deploy/ makes its namespace and policy ConfigMap
    [policy] = [v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v]
    assert ("ConfigMap", namespace, policy) in installed
    assert spec["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]
    assert c["image"] in gpuslice_images() and kustomization(RIGHTSIZE)["images"] == kustomization(DEPLOY)["images"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and sc["capabilities"]["drop"] == ["ALL"]
    port = c["livenessProbe"]["httpGet"]["port"]
    assert [p["containerPort"] for p in c["ports"] if p["name"] == port] == [args.metrics_port]


def test_rbac_is_what_the_loop_does_and_no_more() -> None:
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in one("ClusterRole")["rules"]}
    assert rules == {(("apps",), ("deployments", "statefulsets")): {"list", "patch"},
                     (("policy",), ("poddisruptionbudgets",)): {"list"},
                     (("",), ("events",)): {"create"},
                     (("",), ("nodes", "pods")): {"list"},  # repack: the GPUs' tenants, as the extender reads them
                     (("resource.k8s.io",), ("resourceclaims",)): {"list"},
                     (("",), ("pods/eviction",)): {"create"}}
    binding = one("ClusterRoleBinding")
    sa = one("ServiceAccount")["metadata"]
    assert binding["roleRef"]["name"] == one("ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}]
