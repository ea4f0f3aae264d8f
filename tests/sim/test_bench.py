from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "economics.py"


def test_economics_benchmark_small(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("economics", BENCH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--out", str(tmp_path), "--nodes", "12", "--pods", "150", "--load", "90"]) == 0
    data = json.loads((tmp_path / "economics.json").read_text())
    assert data["seedScenario"]["baselineGpus"] > data["seedScenario"]["gpus"]
    assert {r["label"] for r in data["openbLoad"]["runs"]} >= {"gpuslice:openb", "1-model-1-gpu", "best-fit"}
    assert data["replay"]["solver"]["pods"] == data["replay"]["greedy"]["pods"] == 150
    assert len(list(tmp_path.glob("*.png"))) == 4
    assert (tmp_path / "trace" / "pods.csv").read_text().startswith("name,cpu_milli")
