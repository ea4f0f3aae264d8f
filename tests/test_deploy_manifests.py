"""deploy/ installs everything with one `kubectl apply -k deploy/`, and every object is valid.

Offline: each manifest (and each ConfigMap the kustomization generates) is validated against the
Kubernetes v1.36 OpenAPI schemas (kubernetes-validate, strict: unknown fields fail), and the pieces
are checked to fit together: namespaces exist, mounted ConfigMaps and ServiceAccounts exist where
they are used, one image runs everywhere, and the Dockerfile and Makefile build that image.
tests/kube/test_deploy.py renders the kustomization with the real kubectl and applies it to a real
API server with server-side dry-run.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from extender.cli import build_parser
from extender.core.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.36.0"  # the kube-scheduler this project ships with (deploy/scheduler-deployment.yaml)
BUILT_IN_NAMESPACES = {"kube-system", "default"}
NOT_MANIFESTS = {"kind-config.yaml", "scheduler-config.yaml", "policy.yaml"}  # inputs, not objects


def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def generated(directory: Path) -> list[dict[str, Any]]:
    """The ConfigMaps a kustomization's configMapGenerator makes (names without the hash suffix)."""
    out = []
    for gen in kustomization(directory).get("configMapGenerator", []):
        data = {Path(f).name: (directory / f).read_text() for f in gen.get("files", [])}
        meta: dict[str, Any] = {"name": gen["name"], "namespace": gen.get("namespace", "default")}
        if gen.get("options", {}).get("labels"):
            meta["labels"] = gen["options"]["labels"]
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    return out


def build(directory: Path = DEPLOY) -> list[dict[str, Any]]:
    """What `kubectl kustomize` would emit, less name suffixes and image rewrites (none apply here)."""
    docs: list[dict[str, Any]] = []
    for res in kustomization(directory).get("resources", []):
        path = directory / res
        if path.is_dir():
            docs += build(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs + generated(directory)


def referenced_files(directory: Path = DEPLOY) -> set[Path]:
    k = kustomization(directory)
    files = {directory / "kustomization.yaml"}
    for res in k.get("resources", []):
        path = directory / res
        files |= referenced_files(path) if path.is_dir() else {path}
    for gen in k.get("configMapGenerator", []):
        files |= {directory / f for f in gen.get("files", [])}
    return files


DOCS = build()


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(d, d["spec"]["template"]["spec"]) for d in docs if d["kind"] in ("Deployment", "DaemonSet")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: f"{d['kind']}/{d['metadata'].get('namespace', '')}/"
                         f"{d['metadata']['name']}")
def test_every_object_validates_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_catches_a_bad_manifest() -> None:
    bad = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"},
           "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i", "volumeMount": []}]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_one_apply_installs_every_manifest_in_deploy() -> None:
    """Every Kubernetes manifest under deploy/ is reached from deploy/kustomization.yaml, except the
    monitoring rules, which need the Prometheus operator's CRD (`kubectl apply -k deploy/monitoring`),
    the opt-in DRA driver's objects (deploy/dra, applied on their own) and the opt-in right-sizing
    controller (`kubectl apply -k deploy/rightsize`, tests/test_deploy_rightsize.py)."""
    everything = {p for p in DEPLOY.rglob("*.yaml") if p.name not in NOT_MANIFESTS}
    separate = {p for p in everything if {"monitoring", "dra", "rightsize"} & set(p.relative_to(DEPLOY).parts)}
    assert everything - separate - referenced_files() == set()
    kinds = {d["kind"] for d in DOCS}
    assert {"Namespace", "ServiceAccount", "ClusterRole", "Role", "ConfigMap", "Deployment", "DaemonSet"} <= kinds


def test_every_namespace_is_created_or_built_in() -> None:
    created = {d["metadata"]["name"] for d in DOCS if d["kind"] == "Namespace"}
    for d in DOCS:
        ns = d["metadata"].get("namespace")
        if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
                             "ValidatingWebhookConfiguration"):
            assert ns in created | BUILT_IN_NAMESPACES, (d["kind"], d["metadata"]["name"], ns)
        for subject in d.get("subjects", []):
            if subject["kind"] == "ServiceAccount":
                assert any(s["kind"] == "ServiceAccount" and s["metadata"]["name"] == subject["name"]
                           and s["metadata"]["namespace"] == subject["namespace"] for s in DOCS), subject


def test_what_pods_mount_and_run_as_exists_in_their_namespace() -> None:
    have = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in DOCS}
    for d, spec in pod_specs(DOCS):
        ns = d["metadata"]["namespace"]
        assert ("ServiceAccount", ns, spec["serviceAccountName"]) in have
        for vol in spec.get("volumes", []):
            if "configMap" in vol:
                assert not vol["configMap"].get("optional"), f"{d['metadata']['name']}: a missing policy is an error"
                assert ("ConfigMap", ns, vol["configMap"]["name"]) in have, (d["metadata"]["name"], vol)


def gpuslice_images() -> set[str]:
    images = set()
    for path in DEPLOY.rglob("*.yaml"):
        images |= set(re.findall(r"image:\s*(\S+)", path.read_text()))
    return {i for i in images if "kube-scheduler" not in i and "pause" not in i and "kindest" not in i}


def test_one_image_reference_everywhere() -> None:
    (entry,) = kustomization(DEPLOY)["images"]
    image = f"{entry['newName']}:{entry['newTag']}"
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert entry["name"] == entry["newName"] and entry["newTag"] == version
    assert gpuslice_images() == {image}
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^IMAGE\s*\?=\s*(\S+)", makefile, re.M).group(1) == f"{entry['name']}:$(VERSION)"
    assert re.search(r"^IMAGE=(\S+)", (DEPLOY / "e2e-kind.sh").read_text(), re.M).group(1) == image


def test_the_dockerfile_builds_what_the_manifests_run() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["gpuslice"\]', dockerfile, re.M)
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)  # the console script from pyproject
    user = re.search(r"^USER (\d+)", dockerfile, re.M).group(1)
    parser = build_parser()
    for _d, spec in pod_specs(DOCS):
        for c in spec["containers"]:
            if c["image"] not in gpuslice_images():
                continue
            argv = [a.replace("$(NODE_NAME)", "n1") for a in [*c.get("command", ["gpuslice"])[1:], *c["args"]]]
            assert c.get("command", ["gpuslice"])[0] == "gpuslice"
            parser.parse_args(argv)  # the container's arguments are the CLI's
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc.get("runAsUser") in (int(user), 0), c["name"]  # 0 only for the agent's host files
            for probe in ("readinessProbe", "livenessProbe"):
                cmd = c.get(probe, {}).get("exec", {}).get("command")
                if cmd:  # exec probes need the interpreter the image is built on
                    assert cmd[0] == "python" and re.search(r"^FROM python:3\.\d+", dockerfile, re.M)


def test_the_deployed_policy_is_valid() -> None:
    load_policy(DEPLOY / "policy.yaml")


def test_kind_nodes_are_within_the_schedulers_version_skew() -> None:
    """kube-scheduler may not be newer than the API server (Kubernetes' version-skew policy)."""
    sched = re.search(r"kube-scheduler:v1\.(\d+)", (DEPLOY / "scheduler-deployment.yaml").read_text()).group(1)
    for image in re.findall(r"kindest/node:v1\.(\d+)", (DEPLOY / "kind-config.yaml").read_text()):
        assert image == sched


def test_e2e_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(DEPLOY / "e2e-kind.sh")], capture_output=True).returncode == 0
