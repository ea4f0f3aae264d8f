"""deploy/dra: the DaemonSet patch turns DRA on with the mounts the agent's defaults expect, and the
DeviceClass and claim templates name this driver's capacities and attributes."""

from __future__ import annotations

from pathlib import Path

import yaml

from extender.agent.dra.agent import DraConfig
from extender.agent.dra.slices import COMPUTE_UNITS, DRIVER, MEMORY
from extender.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def apply_adds(doc: dict, ops: list[dict]) -> dict:
    """The JSON-patch `add ... /-` operations the patch file holds (appends to lists)."""
    for op in ops:
        assert op["op"] == "add" and op["path"].endswith("/-")
        target = doc
        for part in op["path"].strip("/").split("/")[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target.append(op["value"])
    return doc


def test_patched_daemonset_runs_dra_with_its_directories_mounted() -> None:
    ds = yaml.safe_load((DEPLOY / "agent" / "daemonset.yaml").read_text())
    ds = apply_adds(ds, yaml.safe_load((DEPLOY / "dra" / "agent-patch.yaml").read_text()))
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    args = build_parser().parse_args([*c["command"][1:], *[a.replace("$(NODE_NAME)", "n1") for a in c["args"]]])
    assert args.dra is True
    mounted = {m["mountPath"] for m in c["volumeMounts"]}
    cfg = DraConfig()
    assert {cfg.registry_dir, cfg.plugin_dir, cfg.cdi_dir} <= mounted
    assert (args.dra_registry_dir, args.dra_plugin_dir, args.cdi_dir) == (cfg.registry_dir, cfg.plugin_dir,
                                                                          cfg.cdi_dir)
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    for m in c["volumeMounts"]:
        if m["mountPath"] in (cfg.registry_dir, cfg.plugin_dir, cfg.cdi_dir):
            assert host[m["name"]] == m["mountPath"]  # kubelet and the runtime see the same paths


def test_device_class_and_templates() -> None:
    (cls,) = list(yaml.safe_load_all((DEPLOY / "dra" / "deviceclass.yaml").read_text()))
    assert f'device.driver == "{DRIVER}"' in cls["spec"]["selectors"][0]["cel"]["expression"]
    templates = {t["metadata"]["name"]: t["spec"]["spec"]["devices"]
                 for t in yaml.safe_load_all((DEPLOY / "dra" / "claim-templates.yaml").read_text()) if t}
    (req,) = templates["gpu-slice-64cu-60gi"]["requests"]
    assert req["exactly"]["capacity"]["requests"] == {COMPUTE_UNITS: "64", MEMORY: "60Gi"}
    assert "capacity" not in templates["gpu-whole"]["requests"][0]["exactly"]
    pair = templates["gpu-pair-same-hive"]
    assert pair["requests"][0]["exactly"]["count"] == 2
    assert pair["constraints"][0]["matchAttribute"] == f"{DRIVER}/hiveId"
    for devices in templates.values():
        assert all(r["exactly"]["deviceClassName"] == cls["metadata"]["name"] for r in devices["requests"])
