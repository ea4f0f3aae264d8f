"""GPU allocation on the real openb trace (Alibaba cluster-trace-gpu-v2023), the published methodology,
over seeds: gpuslice and every baseline the project ships, one `gpuslice simulate --compare` per seed.

    python bench/openb_sweep.py --trace-dir DIR [--traces default multigpu50 ... | --variants] [--seeds 42-51]
        [--load 130] [--jobs 2] [--no-compare] [--set scoring.candidates.tolerance=0] [--json OUT]

DIR holds the trace's CSVs (openb_node_list_gpu_node.csv and openb_pod_list_<trace>.csv), as in the
`cluster-trace-gpu-v2023/csv` folder of the public alibaba/clusterdata repository; the trace is not
part of this repository. `--set key.path=value` overrides one field of the openb policy (for measuring a
variant; the policy file is written next to the JSON). Prints allocated % per run label: mean over the
seeds, min and max, and the wall and CPU seconds of each seed's whole `simulate` process; unless
`--no-compare`, a last table says per trace whether gpuslice leads every baseline and by how much.
Writes JSON; each seed is also appended to OUT.partial.jsonl as it finishes, and a rerun with the same
arguments resumes from it.
`--variants` runs every `openb_pod_list_*.csv` in DIR (default, gpushare*, multigpu*, gpuspec*, cpu*).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
NODES = "openb_node_list_gpu_node.csv"


def seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def policy_with(overrides: list[str], where: Path) -> str:
    """The built-in openb policy with `key.path=value` overrides (YAML values), written to `where`."""
    if not overrides:
        return "openb"
    data = yaml.safe_load((ROOT / "extender/sim/data/openb.yaml").read_text())
    for item in overrides:
        path, _, value = item.partition("=")
        node = data
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = yaml.safe_load(value)
    where.write_text(yaml.safe_dump(data))
    return str(where)


def one(trace_dir: Path, trace: str, seed: int, load: float, policy: str, compare: bool) -> dict[str, Any]:
    argv = [sys.executable, "-m", "extender", "simulate", "--pods", str(trace_dir / f"openb_pod_list_{trace}.csv"),
            "--nodes", str(trace_dir / NODES), "--load", f"{load:g}", "--seed", str(seed), "--policy", policy,
            "--json"] + (["--compare"] if compare else [])
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU time, whatever else runs
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise subprocess.CalledProcessError(proc.returncode, argv, stdout, err.read())
    out = json.loads(stdout)
    return {"trace": trace, "seed": seed, "wallSeconds": round(time.perf_counter() - started, 1),
            "cpuSeconds": round(usage.ru_utime + usage.ru_stime, 1),
            "runs": {r["label"]: {"allocatedPct": r["allocatedPct"], "pending": r["pods"]["pending"],
                                  "idleGpus": r["idleGpus"], "elapsedSeconds": r["elapsedSeconds"],
                                  "multiGpu": r.get("multiGpu")} for r in out["runs"]}}


def table(results: list[dict[str, Any]], console: Console) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for trace in dict.fromkeys(r["trace"] for r in results):
        rows = [r for r in results if r["trace"] == trace]
        labels = list(dict.fromkeys(label for r in rows for label in r["runs"]))
        t = Table(title=f"{trace}: allocated % of GPUs at the end, seeds {', '.join(str(r['seed']) for r in rows)}")
        for col in ("placer", "mean", "min", "max", "idle GPUs (mean)", "multi-GPU pods placed"):
            t.add_column(col, justify="left" if col == "placer" else "right")
        summary[trace] = {}
        for label in labels:
            got = [r["runs"][label] for r in rows if label in r["runs"]]
            alloc = [g["allocatedPct"] for g in got]
            multi = [g["multiGpu"] for g in got if g.get("multiGpu")]
            placed = sum(m["placed"] for m in multi)
            arrived = sum(m["arrived"] for m in multi)
            summary[trace][label] = {"mean": round(mean(alloc), 2), "min": min(alloc), "max": max(alloc),
                                     "idleGpus": round(mean(g["idleGpus"] for g in got), 1), "seeds": len(got),
                                     "multiGpuPlaced": placed, "multiGpuArrived": arrived}
            s = summary[trace][label]
            t.add_row(label, f"{s['mean']:.2f}", f"{s['min']:.2f}", f"{s['max']:.2f}", f"{s['idleGpus']:.1f}",
                      f"{placed}/{arrived}" if arrived else "-")
        for key in ("wallSeconds", "cpuSeconds"):
            got = sorted(r[key] for r in rows)
            summary[trace][key] = {"median": got[len(got) // 2], "min": got[0], "max": got[-1]}
        w, c = summary[trace]["wallSeconds"], summary[trace]["cpuSeconds"]
        t.caption = f"seconds per seed (one simulate, all its runs): wall median {w['median']} " \
                    f"({w['min']}-{w['max']}), CPU median {c['median']} ({c['min']}-{c['max']})"
        console.print(t)
    return summary


def _read_partial(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def variants(trace_dir: Path) -> list[str]:
    """The pod lists in the trace folder, the default one first."""
    names = sorted(f.name[len("openb_pod_list_"):-len(".csv")] for f in trace_dir.glob("openb_pod_list_*.csv"))
    return sorted(names, key=lambda n: n != "default")


def leads(summary: dict[str, Any], console: Console) -> dict[str, Any]:
    """Per trace: gpuslice's mean against the best baseline's mean (positive margin: gpuslice leads)."""
    out: dict[str, Any] = {}
    t = Table(title="gpuslice against its best baseline (mean allocated %, same seeds)")
    for col in ("trace", "gpuslice", "best baseline", "its mean", "margin", "leads"):
        t.add_column(col, justify="left" if col in ("trace", "best baseline") else "right")
    for trace, runs in summary.items():
        ours = [k for k in runs if k.startswith("gpuslice")]
        others = {k: v for k, v in runs.items() if k not in ours and isinstance(v, dict) and "mean" in v}
        if not ours or not others:
            continue
        best = max(others, key=lambda k: others[k]["mean"])
        mine = runs[ours[0]]["mean"]
        margin = round(mine - others[best]["mean"], 2)
        out[trace] = {"gpuslice": mine, "bestBaseline": best, "baselineMean": others[best]["mean"],
                      "margin": margin, "leads": margin > 0}
        t.add_row(trace, f"{mine:.2f}", best, f"{others[best]['mean']:.2f}", f"{margin:+.2f}",
                  "yes" if margin > 0 else "NO")
    console.print(t)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace-dir", required=True, type=Path)
    p.add_argument("--traces", nargs="+", default=["default"])
    p.add_argument("--variants", action="store_true", help="every openb_pod_list_*.csv in --trace-dir")
    p.add_argument("--seeds", default="42-51")
    p.add_argument("--load", type=float, default=130.0)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--no-compare", action="store_true", help="gpuslice alone, without the baselines")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    p.add_argument("--json", type=Path, default=ROOT / "bench/results/openb_sweep.json")
    a = p.parse_args(argv)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    if a.variants:
        a.traces = variants(a.trace_dir)
    policy = policy_with(a.set, a.json.with_suffix(".policy.yaml"))
    jobs = [(t, s) for t in a.traces for s in seeds(a.seeds)]
    console = Console()
    # each finished seed is appended to OUT.partial.jsonl as it ends; a rerun with the same arguments
    # takes those from there (a long sweep on a shared machine can be stopped and resumed)
    partial = a.json.with_suffix(".partial.jsonl")
    setting = {"load": a.load, "policy": policy, "overrides": a.set, "compare": not a.no_compare}
    done = {(r["trace"], r["seed"]): r for r in _read_partial(partial) if r.get("setting") == setting}
    lock = threading.Lock()

    def run(job: tuple[str, int]) -> dict[str, Any]:
        if job in done:
            return done[job]
        r = {**one(a.trace_dir, job[0], job[1], a.load, policy, not a.no_compare), "setting": setting}
        with lock, partial.open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        return r

    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        results = list(pool.map(run, jobs))
    summary = table(results, console)
    if not a.no_compare:
        summary["leads"] = leads(summary, console)
    a.json.write_text(json.dumps({"load": a.load, "policy": policy, "overrides": a.set, "summary": summary,
                                  "perSeed": results}, indent=2))
    console.print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
