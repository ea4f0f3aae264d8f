"""The agent's DaemonSet and RBAC ask for what the agent needs and no more."""

from __future__ import annotations

from pathlib import Path

import yaml

from extender.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "agent"


def test_daemonset_is_least_privilege_and_matches_the_cli() -> None:
    ds = yaml.safe_load((DEPLOY / "daemonset.yaml").read_text())
    spec = ds["spec"]["template"]["spec"]
    assert not spec.get("hostNetwork") and not spec.get("hostPID")
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["sys"]["readOnly"] and mounts["proc"]["readOnly"] and not mounts["cgroup"]["readOnly"]
    assert mounts["device-plugins"]["mountPath"] == "/var/lib/kubelet/device-plugins"
    assert mounts["pod-resources"]["readOnly"] and not mounts["cdi"].get("readOnly")
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert (volumes["pod-resources"], volumes["cdi"]) == ("/var/lib/kubelet/pod-resources", "/var/run/cdi")
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    args = build_parser().parse_args([*c["command"][1:], *[a.replace("$(NODE_NAME)", "n1") for a in c["args"]]])
    assert (args.root, args.port, args.node_name) == ("/host", 9402, "n1")
    assert args.pod_resources_socket == f"{mounts['pod-resources']['mountPath']}/kubelet.sock"
    assert args.cdi_dir == mounts["cdi"]["mountPath"]


def test_rbac_verbs() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    rules = {r: set(rule["verbs"]) for rule in role["rules"] for r in rule["resources"]}
    assert rules == {"pods": {"get", "list"}, "pods/eviction": {"create"},
                     "nodes": {"get", "patch"}, "events": {"create", "patch"}}
