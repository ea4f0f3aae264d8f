from __future__ import annotations

import json
from pathlib import Path

import pytest

from extender.cli import main


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_seed_scenario_json(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, ["simulate", "--scenario", "seed", "--json"])
    assert {"baselineGpus", "gpus", "slaMet", "savingsPct"} <= set(out)
    assert out["baselineGpus"] == 42  # one GPU per replica
    assert out["gpus"] < out["baselineGpus"]
    assert isinstance(out["slaMet"], bool) and out["slaMet"]
    assert out["savingsPct"] == pytest.approx(100 * (1 - out["gpus"] / out["baselineGpus"]), abs=0.1)
    needed = out["neededRun"]
    assert needed["pods"]["pending"] == 0 and needed["sla"]["violated"] == 0
    assert all(r["predictedRps"] >= r["targetRps"] for r in needed["sla"]["perPod"])


def test_openb_load_json(capsys: pytest.CaptureFixture[str], trace: tuple[Path, Path], openb_policy: str) -> None:
    pods, nodes = trace
    argv = ["simulate", "--pods", str(pods), "--nodes", str(nodes), "--load", "130", "--seed", "3",
            "--policy", openb_policy, "--bind-placer", "greedy", "--json"]  # greedy: no wall-clock limit
    out = _json(capsys, argv)
    assert {"allocatedPct", "idleGpus", "arrivedPct"} <= set(out)
    assert out["arrivedPct"] >= 130 and 0 < out["allocatedPct"] <= 100
    again = _json(capsys, argv)
    assert again["allocatedPct"] == out["allocatedPct"] and again["idleGpus"] == out["idleGpus"]


def test_compare_runs_policies_and_baselines_side_by_side(capsys: pytest.CaptureFixture[str],
                                                          trace: tuple[Path, Path], openb_policy: str) -> None:
    pods, nodes = trace
    out = _json(capsys, ["simulate", "--pods", str(pods), "--nodes", str(nodes), "--load", "100", "--policy",
                         openb_policy, "--policy", "mi300x-inference", "--compare", "--json"])
    labels = [r["label"] for r in out["runs"]]
    assert labels == ["gpuslice:openb", "gpuslice:mi300x-inference", "1-model-1-gpu", "first-fit", "best-fit", "random"]
    assert len({r["arrivedPct"] for r in out["runs"]}) == 1  # the same arrivals for every run
    assert main(["simulate", "--pods", str(pods), "--nodes", str(nodes), "--load", "100", "--compare"]) == 0
    text = capsys.readouterr().out
    for label in labels[2:]:
        assert label in text


def test_what_if_policy_change(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    current = tmp_path / "current.yaml"
    current.write_text(Path("extender/sim/data/mi300x-inference.yaml").read_text())
    new = tmp_path / "new.yaml"
    new.write_text(current.read_text().replace("maxMemoryBoundPerGpu: 2", "maxMemoryBoundPerGpu: 1"))
    out = _json(capsys, ["simulate", "--scenario", "seed", "--policy", str(new), "--baseline", str(current),
                         "--json"])
    labels = [r["label"] for r in out["runs"]]
    assert labels[:2] == ["current:current", "new:new"]
    assert out["currentPolicyGpus"] is not None
    assert out["gpus"] > out["currentPolicyGpus"]  # one memory-bound tenant per GPU needs more GPUs
    assert main(["simulate", "--scenario", "seed", "--policy", str(new), "--baseline", str(current)]) == 0
    assert "what this policy change does" in capsys.readouterr().out


def test_plots_are_written(capsys: pytest.CaptureFixture[str], tmp_path: Path, trace: tuple[Path, Path]) -> None:
    pods, nodes = trace
    out = _json(capsys, ["simulate", "--pods", str(pods), "--nodes", str(nodes), "--load", "100", "--compare",
                         "--baselines", "first-fit", "--plots", str(tmp_path / "plots"), "--json"])
    assert len(out["plots"]) == 2
    for p in out["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_an_error_not_a_crash(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("nodes: []\npods: [{name: x, targetRps: 3}]\n")
    assert main(["simulate", "--scenario", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "nodes" in err and "targetRps needs a profile" in err


def test_demand_on_a_scenario_without_a_curve_is_an_error_not_a_crash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--scenario", "seed-llm-only", "--demand"]) == 2
    err = capsys.readouterr().err
    assert "seed-llm-only" in err and "no pod group with a demand: curve" in err
