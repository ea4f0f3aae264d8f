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


def test_openb_sweep_runs_every_variant_and_says_who_leads(tmp_path: Path) -> None:
    from extender.sim import synthetic

    spec = importlib.util.spec_from_file_location("openb_sweep", BENCH.parent / "openb_sweep.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    synthetic.write_nodes(tmp_path / "openb_node_list_gpu_node.csv", 10, seed=3)
    for name, seed in (("default", 3), ("gpushare40", 4)):
        synthetic.write_pods(tmp_path / f"openb_pod_list_{name}.csv", 120, seed=seed)
    assert mod.variants(tmp_path) == ["default", "gpushare40"]
    out = tmp_path / "sweep.json"
    assert mod.main(["--trace-dir", str(tmp_path), "--variants", "--seeds", "1-2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["summary"]["leads"]) == {"default", "gpushare40"}
    lead = data["summary"]["leads"]["default"]
    runs = data["summary"]["default"]
    assert lead["margin"] == round(runs["gpuslice:openb"]["mean"] - runs[lead["bestBaseline"]]["mean"], 2)
    assert all(r["cpuSeconds"] > 0 and r["wallSeconds"] > 0 for r in data["perSeed"])
    assert {r["seed"] for r in data["perSeed"]} == {1, 2}
    again = tmp_path / "again.json"  # resumed from the partial file: the same answer, no run
    (tmp_path / "again.partial.jsonl").write_text(out.with_suffix(".partial.jsonl").read_text())
    assert mod.main(["--trace-dir", "/nonexistent", "--traces", "default", "gpushare40", "--seeds", "1-2",
                     "--json", str(again)]) == 0
    assert json.loads(again.read_text())["summary"]["leads"] == data["summary"]["leads"]
