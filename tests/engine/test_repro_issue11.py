"""Issue 11 reproductions: masks that fail open, and whole GPUs that `plan` could not place."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from extender.cli import main
from extender.core.atoms import is_xcc_complete
from extender.core.policy import parse_policy
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.planner import parse_cluster, parse_workloads, plan
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine


def _engine(policy: dict) -> Engine:
    cluster = MemoryCluster()
    cluster.add_node(NodeView("n0", allocatable={"amd.com/gpu": "1"}))
    engine = Engine(cluster, PolicyStore(parse_policy(policy)))
    engine.sync()
    return engine


def _bind(engine: Engine, uid: str, **keys: str) -> frozenset[int]:
    ann = {f"gpuslice.io/{k}": v for k, v in {"class": "compute-bound", **keys}.items()}
    engine.cluster.add_pod(PodView(uid, "default", uid, annotations=ann))  # type: ignore[attr-defined]
    assert engine.bind("default", uid, uid, "n0") == ""
    a = engine.assignment_for(uid)
    assert a is not None
    return a.gpus[0].cus


def test_exact_rounding_with_a_small_minimum_still_gives_whole_atoms() -> None:
    engine = _engine({"rounding": {"mode": "exact", "minComputeUnits": 1}})
    cus = _bind(engine, "p", compute="10m", memory="1Gi")  # 4 CUs asked: was 0-3 (XCDs 0-3 only)
    assert len(cus) == 8 and is_xcc_complete(cus, 8)


def test_fragmented_free_space_is_taken_in_equal_bits_per_xcd() -> None:
    engine = _engine({"rounding": {"mode": "exact", "minComputeUnits": 1}})
    # 100m = 31 CUs -> 32; then carve the GPU so no single free run holds the next slice
    held = [_bind(engine, f"p{i}", compute="100m", memory="1Gi") for i in range(8)]
    for i in (1, 3, 5):
        engine.forget_pod(f"p{i}")
    for cus in held:
        assert is_xcc_complete(cus, 8)
    cus = _bind(engine, "big", compute="200m", memory="1Gi")  # 61 -> 64 CUs over two separate runs
    assert len(cus) == 64 and is_xcc_complete(cus, 8)


def test_xcd_layout_is_refused_by_policy_check(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"layout": {"mode": "xcd"}}))
    out = subprocess.run([sys.executable, "-m", "extender", "policy", "check", str(f)], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 1
    assert "layout.mode" in out.stderr and "unmasked" in out.stderr


def test_plan_places_a_whole_gpu_replica_on_an_empty_cluster(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"nodes": [{"name": f"n{i}", "gpus": 8} for i in range(3)]}))
    (tmp_path / "w.yaml").write_text(yaml.safe_dump({"workloads": [
        {"name": "big", "replicas": 1, "compute": "1000m", "memory": "100Gi"}]}))
    main(["plan", "--cluster", str(tmp_path / "c.yaml"), "--workloads", str(tmp_path / "w.yaml"),
          "--time-limit", "2"])
    out = capsys.readouterr().out
    assert "no room left" not in out
    assert "GPUs used: 1 of 24" in out and "304/304" in out
    assert "one model per GPU would take 1" in out
    assert "lower bound: 1 " in out and "nothing to place" not in out


def test_plan_whole_gpu_gets_every_cu_and_no_neighbour() -> None:
    policy = parse_policy({})
    nodes = parse_cluster({"nodes": [{"name": "n0", "gpus": 3}]}, policy)
    workloads, bad = parse_workloads({"workloads": [
        {"name": "big", "replicas": 1, "compute": "1000m", "memory": "10Gi", "count": 2},
        {"name": "small", "replicas": 2, "compute": "100m", "memory": "1Gi"}]}, policy)
    assert not bad
    result = plan(nodes, workloads, policy, time_limit=2.0)
    assert not result.unplaced
    (big,) = [p for p in result.placements if p.workload == "big"]
    assert all(len(g.cus) == 304 and not g.burstCus for g in big.assignment.gpus)
    whole = {g.index for g in big.assignment.gpus}
    small = {g.index for p in result.placements if p.workload == "small" for g in p.assignment.gpus}
    assert small and not small & whole
    assert json.loads(json.dumps(result.to_dict()))["gpusUsed"] == 3


def _summary(tmp_path: Path, capsys: pytest.CaptureFixture[str], workloads: list[dict], gpus: int = 2) -> str:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"nodes": [{"name": "n0", "gpus": gpus}]}))
    (tmp_path / "w.yaml").write_text(yaml.safe_dump({"workloads": workloads}))
    main(["plan", "--cluster", str(tmp_path / "c.yaml"), "--workloads", str(tmp_path / "w.yaml"),
          "--time-limit", "2"])
    return " ".join(capsys.readouterr().out.split())  # rich wraps long lines


def test_plan_summary_when_only_part_is_placed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _summary(tmp_path, capsys, [{"name": "big", "replicas": 3, "compute": "1000m", "memory": "10Gi"}])
    assert "GPUs used: 2 of 2 for 2 of 3 replicas (one model per GPU would take 2 for those, 3 for all)" in out
    assert "lower bound for the placed replicas: 2 " in out
    assert "placing every replica that fits some GPU needs at least 3 GPUs" in out and "the cluster has 2" in out
    assert "no room left in what the placed replicas leave: n0: 0/2 GPUs can take the slice" in out


def test_plan_summary_when_nothing_is_placed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _summary(tmp_path, capsys, [{"name": "huge", "replicas": 2, "compute": "100m", "memory": "500Gi"}])
    assert "GPUs used: 0 of 2 for 0 of 2 replicas (one model per GPU would take 0 for those, 2 for all)" in out
    assert "no replica placed" in out and "lower bound" not in out and "nothing to place" not in out
    assert "huge: fits on no node even when empty" in out


def test_plan_summary_with_nothing_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _summary(tmp_path, capsys, [{"name": "idle", "replicas": 0, "compute": "100m", "memory": "1Gi"}])
    assert "GPUs used: 0 of 2; nothing to place" in out


def test_a_legacy_incomplete_mask_stays_counted_and_flagged_and_new_masks_stay_complete() -> None:
    from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, GpuAssignment

    cluster = MemoryCluster()
    cluster.add_node(NodeView("n0", allocatable={"amd.com/gpu": "1"}))
    # what `layout.mode: xcd` used to hand out: 16 bits at a stride of 8, all on XCD 5
    old = GpuAssignment(0, "n0/gpu0", frozenset(range(5, 128, 8)), frozenset(), 2**30, 2**30)
    a = Assignment("n0", (old,), "compute-bound", "old", "2025-01-01T00:00:00Z")
    cluster.add_pod(PodView("old", "default", "old", node_name="n0", phase="Running",
                            annotations={ASSIGNMENT_ANNOTATION: a.to_json()}))
    engine = Engine(cluster, PolicyStore(parse_policy({"classes": {"maxMemoryBoundPerGpu": None}})))
    engine.sync()
    assert engine.ledger.incomplete_masks() == ["default/old on n0 gpu 0"]
    (tenant,) = engine.ledger.snapshot()["nodes"][0]["gpus"][0]["tenants"]  # type: ignore[index]
    assert tenant["xccComplete"] is False
    for i in range(4):  # XCD 5 has 34 - 16 = 18 guaranteeable CUs left: 4 slices of 4 atoms
        cus = _bind(engine, f"p{i}", compute="100m", memory="1Gi")
        assert is_xcc_complete(cus, 8) and not cus & old.cus
    # 128 CUs are free, but XCD 5 has only 2 of them: two whole atoms (16 CUs) can still be guaranteed
    engine.cluster.add_pod(PodView("p4", "default", "p4", annotations={  # type: ignore[attr-defined]
        "gpuslice.io/compute": "100m", "gpuslice.io/memory": "1Gi", "gpuslice.io/class": "compute-bound"}))
    gpu = engine.ledger.node("n0").gpus[0]  # type: ignore[union-attr]
    assert (len(gpu.free_cus), gpu.free_atom_cus) == (128, 16)
    assert "needs 32 CUs, 16 free" in engine.filter(engine.cluster.get_pod("default", "p4"),  # type: ignore[arg-type]
                                                    names=["n0"]).failed["n0"]
