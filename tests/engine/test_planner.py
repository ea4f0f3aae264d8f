from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from extender.cli import main
from extender.core.assignment import parse_assignment
from extender.core.ledger import PodRef, rebuild
from extender.core.policy import load_policy, parse_policy
from extender.engine.planner import PlanInputError, parse_cluster, parse_workloads, plan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
GIB = 2**30


def gpu(i: int, numa: int = 0) -> dict:
    return {"index": i, "id": f"id{i}", "model": "MI300X", "computeUnits": 304, "xcds": 8, "shaderEngines": 32,
            "memoryBytes": 192 * GIB, "healthy": True, "numaNode": numa}


POLICY = {"profiles": {"llama": {"class": "memory-bound", "minMemory": "60Gi",
                                 "points": [{"computeUnits": 32, "rps": 7.2}, {"computeUnits": 64, "rps": 10.7},
                                            {"computeUnits": 128, "rps": 13.5}]}}}


def run_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str], cluster: dict, workloads: dict,
             policy: dict | None = None) -> dict:
    (tmp_path / "c.json").write_text(json.dumps(cluster))
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(workloads))
    args = ["plan", "--cluster", str(tmp_path / "c.json"), "--workloads", str(tmp_path / "w.yaml"), "--json",
            "--time-limit", "2", "--allow-partial"]
    if policy is not None:
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(policy))
        args += ["--policy", str(tmp_path / "p.yaml")]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_json_places_every_replica_and_reports_bad_workloads(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cluster = {"nodes": [{"name": "a", "inventory": [gpu(i) for i in range(4)]}, {"name": "b", "gpus": 2}]}
    workloads = {"workloads": [
        {"name": "dec", "replicas": 3, "compute": "250m", "memory": "60Gi", "class": "memory-bound"},
        {"name": "emb", "replicas": 3, "compute": "125m", "memory": "8Gi", "class": "compute-bound"},
        {"name": "chat", "replicas": 2, "profile": "llama", "targetRps": 10},
        {"name": "pair", "replicas": 1, "compute": "500m", "memory": "10Gi", "count": 2},
        {"name": "ghost", "replicas": 1, "profile": "nope", "targetRps": 3},
        {"name": "greedy-sla", "replicas": 1, "profile": "llama", "targetRps": 100},
        {"name": "huge", "replicas": 1, "compute": "100m", "memory": "500Gi"},
        {"name": "typo", "replicas": 1, "compute": "100m", "memory": "1Gi", "clas": "x"},
    ]}
    out = run_plan(tmp_path, capsys, cluster, workloads, POLICY)
    assert {"gpusUsed", "lowerBound", "placements", "unplaced"} <= set(out)
    assert len(out["placements"]) == 3 + 3 + 2 + 1
    reasons = {u["workload"]: u["reason"] for u in out["unplaced"]}
    assert set(reasons) == {"ghost", "greedy-sla", "huge", "typo"}
    assert "unknown profile" in reasons["ghost"]
    assert "at most" in reasons["greedy-sla"]
    assert "memory" in reasons["huge"]
    assert "clas" in reasons["typo"]
    pair = next(p for p in out["placements"] if p["workload"] == "pair")
    assert len(pair["gpus"]) == 2
    assert out["lowerBound"] <= out["gpusUsed"]
    # the plan is a valid set of assignments: the ledger accepts all of them, class rules hold
    policy = parse_policy(POLICY)
    nodes = parse_cluster(cluster, policy)
    bound = [(PodRef(f"{p['workload']}#{p['replica']}", "plan", "x"), parse_assignment(json.dumps(
        {"node": p["node"], "gpus": p["gpus"], "class": p["class"], "policy": "", "assignedAt": ""})), 0)
        for p in out["placements"]]
    ledger, problems = rebuild(nodes, bound)
    assert problems == []
    for state in ledger.nodes():
        for g in state.gpus:
            assert g.count("memory-bound") <= 2
    assert out["gpusUsed"] == sum(1 for s in ledger.nodes() for g in s.gpus if g.slices)


def test_class_rule_lower_bound_is_met(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = {"nodes": [{"name": "a", "gpus": 8}]}
    workloads = {"workloads": [{"name": "m", "replicas": 6, "compute": "100m", "memory": "10Gi",
                                "class": "memory-bound"},
                               {"name": "c", "replicas": 3, "compute": "100m", "memory": "10Gi",
                                "class": "compute-bound"}]}
    out = run_plan(tmp_path, capsys, cluster, workloads)
    assert out["bounds"]["memoryBoundPerGpu"] == 3
    assert out["gpusUsed"] == out["lowerBound"] == 3
    assert out["unplaced"] == []


def test_a_full_cluster_leaves_replicas_unplaced_with_a_reason(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    cluster = {"nodes": [{"name": "a", "gpus": 1}]}
    workloads = {"workloads": [{"name": "m", "replicas": 3, "compute": "100m", "memory": "10Gi",
                                "class": "memory-bound"}]}
    out = run_plan(tmp_path, capsys, cluster, workloads)
    assert len(out["placements"]) == 2
    assert [(u["workload"], u["replica"] is not None) for u in out["unplaced"]] == [("m", True)]
    assert "no room" in out["unplaced"][0]["reason"]


def test_bad_documents_are_input_errors() -> None:
    policy = parse_policy({})
    with pytest.raises(PlanInputError):
        parse_cluster({"nodes": [{"name": "a", "inventory": [{"index": 0}]}]}, policy)
    with pytest.raises(PlanInputError):
        parse_cluster([], policy)
    with pytest.raises(PlanInputError):
        parse_workloads({"workload": []}, policy)


def test_unreadable_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--cluster", str(tmp_path / "missing.yaml"), "--workloads", "x"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_example_40_models_plan_within_5_percent_of_the_lower_bound() -> None:
    policy = load_policy(EXAMPLES / "policy-profiles.yaml")
    nodes = parse_cluster(yaml.safe_load((EXAMPLES / "cluster-8node.yaml").read_text()), policy)
    workloads, bad = parse_workloads(yaml.safe_load((EXAMPLES / "workloads-40.yaml").read_text()), policy)
    assert bad == [] and len(workloads) == 40
    result = plan(nodes, workloads, policy, time_limit=3.0)
    assert result.unplaced == []
    assert result.gpus_used <= 1.05 * result.lower_bound
    assert result.gpus_used < result.one_per_gpu / 2


def test_existing_tenants_that_do_not_fit_their_node_are_unusable_input() -> None:
    policy = parse_policy({})
    nodes = parse_cluster({"nodes": [{"name": "n1", "inventory": [gpu(0)]}]}, policy)
    workloads, _ = parse_workloads({"workloads": [{"name": "w", "compute": "250m", "memory": "10Gi"}]}, policy)
    a = parse_assignment(json.dumps({"node": "n1", "class": "memory-bound", "policy": "v1",
                                     "assignedAt": "2026-01-01T00:00:00Z",
                                     "gpus": [{"index": 0, "id": "id0", "cus": "0-31", "burstCus": "",
                                               "memoryBytes": 100 * GIB, "memoryLimitBytes": 100 * GIB}]}))
    twice = [(PodRef(uid, "ns", uid), a, 250) for uid in ("a", "b")]  # 200Gi on a 192Gi GPU, same CUs
    with pytest.raises(PlanInputError, match="existing tenants do not fit"):
        plan(nodes, workloads, policy, 1.0, existing=twice)
    result = plan(nodes, workloads, policy, 1.0, existing=twice[:1])
    assert [p.assignment.node for p in result.placements] == ["n1"] and result.bounds["occupied"] == 1
    assert not {c for g in result.placements[0].assignment.gpus for c in g.cus} & frozenset(range(32))
