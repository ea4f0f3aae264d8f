"""`gpuslice plan --kubeconfig`: planning on a live cluster's Nodes, on top of the tenants already bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import extender.plan_cli as plan_cli
from extender.cli import main
from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, GpuAssignment
from extender.core.inventory import INVENTORY_ANNOTATION, LABEL_PRODUCT, RESOURCE_AMD_GPU, GpuInfo, format_inventory
from extender.core.policy import parse_policy
from extender.engine.cluster import NodeView, PodView
from extender.engine.occupancy import occupancy
from extender.kube.controlplane import ControlPlane
from tests.kube.conftest import start_control_plane
from tests.kube.fake_api import FakeApi

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30
# Two replicas of 100Gi: one per MI300X (192Gi). An existing 150Gi tenant on n1 leaves room for only one.
WORKLOADS = {"workloads": [{"name": "llm", "replicas": 2, "compute": "250m", "memory": "100Gi",
                            "class": "memory-bound"}]}


def inventory(node: str) -> str:
    return format_inventory([GpuInfo(index=0, id=f"{node}-g0", model="MI300X", computeUnits=304, xcds=8,
                                     shaderEngines=32, memoryBytes=192 * GIB, healthy=True)])


def tenant(node: str) -> str:
    return Assignment(node, (GpuAssignment(0, f"{node}-g0", frozenset(range(64)), frozenset(), 150 * GIB,
                                           150 * GIB),), "memory-bound", "v1").to_json()


# --- unit: the views, through the engine's rebuild ---------------------------------------------
def test_occupancy_reads_inventory_skips_bad_nodes_and_counts_only_bound_tenants() -> None:
    nodes = [NodeView("n1", annotations={INVENTORY_ANNOTATION: inventory("n1")}),
             NodeView("n2", labels={LABEL_PRODUCT: "AMD_Instinct_MI300X_OAM"}, allocatable={RESOURCE_AMD_GPU: "2"}),
             NodeView("bad", annotations={INVENTORY_ANNOTATION: "not json"}),
             NodeView("cpu-only", allocatable={"cpu": "8"})]
    pods = [PodView("u1", "ns", "bound", annotations={ASSIGNMENT_ANNOTATION: tenant("n1")}, node_name="n1",
                    phase="Running"),
            PodView("u2", "ns", "unbound", annotations={ASSIGNMENT_ANNOTATION: tenant("n1")}),
            PodView("u3", "ns", "done", annotations={ASSIGNMENT_ANNOTATION: tenant("n1")}, node_name="n1",
                    phase="Succeeded"),
            PodView("u4", "ns", "elsewhere", annotations={ASSIGNMENT_ANNOTATION: tenant("n1")}, node_name="n2",
                    phase="Running")]
    occ = occupancy(nodes, pods, parse_policy({}))
    assert sorted(occ.nodes) == ["n1", "n2"] and len(occ.nodes["n2"]) == 2  # node-labeller fallback
    assert [ref.uid for ref, _, _ in occ.existing] == ["u1"]
    assert set(occ.skipped) == {"bad"} and occ.without_gpus == 1
    assert len(occ.problems) == 1 and "ns/elsewhere" in occ.problems[0]


def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    api = FakeApi()
    for name in ("n1", "n2"):
        api.add_node(name, {INVENTORY_ANNOTATION: inventory(name)})
    api.add_node("bad", {INVENTORY_ANNOTATION: "[{}]"})
    api.add_pod("ns", "old", {ASSIGNMENT_ANNOTATION: tenant("n1")})
    api.bind_elsewhere("ns", "old", "n1")
    monkeypatch.setattr(plan_cli, "api_client", lambda kubeconfig, pool: None)
    monkeypatch.setattr(plan_cli, "core_api", lambda _client: api)
    return api


def run_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(WORKLOADS))
    assert main(["plan", "--kubeconfig", "unused", "--workloads", str(tmp_path / "w.yaml"), "--json",
                 "--time-limit", "2", "--allow-partial", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_on_fake_api_reserves_the_existing_tenant(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    fake_cluster(monkeypatch)
    doc = run_in_process(tmp_path, capsys)
    assert [p["node"] for p in doc["placements"]] == ["n2"]
    assert [(u["workload"], u["replica"] is not None) for u in doc["unplaced"]] == [("llm", True)]
    assert doc["gpusTotal"] == 2 and doc["gpusUsed"] == 2 and doc["bounds"]["occupied"] == 1
    assert doc["cluster"]["existingTenants"] == 1 and set(doc["cluster"]["skippedNodes"]) == {"bad"}

    doc = run_in_process(tmp_path, capsys, "--ignore-existing")
    assert sorted(p["node"] for p in doc["placements"]) == ["n1", "n2"] and not doc["unplaced"]
    assert doc["cluster"]["existingCounted"] is False and "occupied" not in doc["bounds"]


def test_plan_reports_an_unreachable_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(WORKLOADS))
    assert main(["plan", "--kubeconfig", str(tmp_path / "missing"), "--workloads", str(tmp_path / "w.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "--kubeconfig" in err and len(err.strip().splitlines()) == 1


def test_plan_needs_exactly_one_cluster_source(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["plan", "--cluster", "c.json", "--kubeconfig", "k", "--workloads", "w.yaml"])
    with pytest.raises(SystemExit):
        main(["plan", "--workloads", "w.yaml"])


# --- integration: a real API server --------------------------------------------------------------
@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    cp = start_control_plane()
    try:
        yield cp
    finally:
        cp.stop()


def run_cli(cp: ControlPlane, workloads: Path, *extra: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "extender", "plan", "--kubeconfig", str(cp.kubeconfig),
                          "--workloads", str(workloads), "--json", "--allow-partial", "--time-limit", "2", *extra],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_plan_on_a_real_api_server(control_plane: ControlPlane, tmp_path: Path) -> None:
    from extender.kube.client import api_client, core_api

    api = core_api(api_client(str(control_plane.kubeconfig)))
    for name, ann in (("n1", inventory("n1")), ("n2", inventory("n2")), ("bad", "[{}]")):
        api.create_node({"apiVersion": "v1", "kind": "Node",
                         "metadata": {"name": name, "annotations": {INVENTORY_ANNOTATION: ann}}})
    api.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "cpu-only"}})
    api.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "old", "annotations": {ASSIGNMENT_ANNOTATION: tenant("n1")}},
        "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": "registry.invalid/pause:1"}]}})
    # a pod that carries an assignment but was never bound holds nothing
    api.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "crashed-bind", "annotations": {ASSIGNMENT_ANNOTATION: tenant("n2")}},
        "spec": {"schedulerName": "nobody", "containers": [{"name": "main", "image": "registry.invalid/pause:1"}]}})
    workloads = tmp_path / "w.yaml"
    workloads.write_text(yaml.safe_dump(WORKLOADS))

    doc = run_cli(control_plane, workloads)
    assert {p["node"] for p in doc["placements"]} <= {"n1", "n2"}
    assert [p["node"] for p in doc["placements"]] == ["n2"]  # n1's 150Gi tenant leaves 42Gi there
    assert [(u["workload"], u["replica"] is not None) for u in doc["unplaced"]] == [("llm", True)]
    assert doc["cluster"]["nodes"] == ["n1", "n2"] and doc["cluster"]["existingTenants"] == 1
    assert set(doc["cluster"]["skippedNodes"]) == {"bad"} and doc["cluster"]["nodesWithoutGpus"] == 1

    doc = run_cli(control_plane, workloads, "--ignore-existing")
    assert sorted(p["node"] for p in doc["placements"]) == ["n1", "n2"] and not doc["unplaced"]


def test_plan_table_says_what_the_live_cluster_held(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake_cluster(monkeypatch)
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(WORKLOADS))
    assert main(["plan", "--kubeconfig", "unused", "--workloads", str(tmp_path / "w.yaml"), "--time-limit", "2",
                 "--allow-partial"]) == 0
    out = capsys.readouterr().out
    assert "live cluster: 2 GPU node(s), 1 existing tenant(s) reserved first" in out
    assert "skipped bad: gpuslice.io/inventory[0].index" in out and "ns/old (running)" in out
