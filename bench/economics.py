"""The economics benchmark: GPUs saved on the seed scenario, and allocation on an openb-format trace.

    python bench/economics.py [--out bench/results] [--seed 1] [--nodes 1000] [--pods 12000] [--load 130]
        [--trace-dir DIR]

1. The built-in seed scenario (`gpuslice simulate --scenario seed`): GPUs needed by 1-model-1-GPU
   against gpuslice with every SLA met.
2. With --trace-dir: the real openb trace (Alibaba cluster-trace-gpu-v2023: DIR holds its
   openb_pod_list_default.csv and openb_node_list_gpu_node.csv, from the cluster-trace-gpu-v2023/csv
   folder of the public alibaba/clusterdata repository). Without it, as a supplement only: a synthetic
   trace in the openb CSV format (generated here with the seed; written to OUT/trace/). Either is
   replayed with the published methodology (sample until the GPUs asked reach --load % of the
   cluster's, pods never depart), gpuslice side by side with the baselines.
3. The replay speed: the whole synthetic trace (>= 10,000 pods with arrivals, departures and
   retries) on --nodes nodes, wall and CPU seconds, binding with the CP-SAT placer (as `gpuslice
   serve` does) and with the greedy placer.
Prints the tables; writes OUT/economics.json and PNG plots to OUT.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extender.cli import build_parser  # noqa: E402
from extender.sim import synthetic  # noqa: E402
from extender.sim.cli import simulate  # noqa: E402


def _simulate(argv: list[str]) -> dict[str, Any]:
    args = build_parser().parse_args(["simulate", *argv])
    return simulate(args)


def run(out: Path, seed: int, nodes: int, pods: int, load: float, console: Console,
        trace_dir: Path | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"seed": seed, "nodes": nodes, "tracePods": pods, "load": load,
                               "trace": str(trace_dir) if trace_dir else "synthetic"}

    console.rule("seed scenario")
    results["seedScenario"] = _simulate(["--scenario", "seed", "--plots", str(out)])

    if trace_dir is not None:
        node_csv, pod_csv = trace_dir / "openb_node_list_gpu_node.csv", trace_dir / "openb_pod_list_default.csv"
    else:
        trace = out / "trace"
        trace.mkdir(exist_ok=True)
        node_csv = synthetic.write_nodes(trace / "nodes.csv", nodes, seed)
        pod_csv = synthetic.write_pods(trace / "pods.csv", pods, seed)
    base = ["--pods", str(pod_csv), "--nodes", str(node_csv), "--seed", str(seed), "--policy", "openb"]

    console.rule(f"{'openb trace' if trace_dir else 'synthetic openb-format trace'}, published methodology: "
                 f"load {load:g}%")
    results["openbLoad"] = _simulate([*base, "--load", f"{load:g}", "--compare", "--series", "--plots", str(out)])
    console.rule("the same, kube-scheduler scoring hosts MostAllocated instead of its default LeastAllocated")
    results["openbLoadMostAllocated"] = _simulate([*base, "--load", f"{load:g}", "--host-score", "most",
                                                   "--series", "--json"])

    results["replay"] = {}
    for bind in ("solver", "greedy"):
        console.rule(f"replay speed: the whole trace (arrivals, departures, retries), bind placer {bind}")
        wall, cpu = time.perf_counter(), time.process_time()
        replay = _simulate([*base, "--bind-placer", bind, "--json"])
        results["replay"][bind] = {"pods": replay["podsArrived"], "nodes": replay["nodes"],
                                   "wallSeconds": round(time.perf_counter() - wall, 1),
                                   "cpuSeconds": round(time.process_time() - cpu, 1),
                                   "replaySeconds": replay["runs"][0]["elapsedSeconds"],
                                   "allocatedPct": replay["allocatedPct"], "pendingPods": replay["pendingPods"]}
    console.print(summary(results))
    path = out / "economics.json"
    path.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {path} and plots in {out}")
    return results


def summary(r: dict[str, Any]) -> Group:
    seed = Table(title="seed scenario: GPUs needed", title_justify="left")
    for col in ("1-model-1-GPU", "gpuslice", "fewer GPUs", "every SLA met"):
        seed.add_column(col, justify="right")
    s = r["seedScenario"]
    seed.add_row(str(s["baselineGpus"]), str(s["gpus"]), f"{s['savingsPct']}%", str(s["slaMet"]))
    which = "openb trace (cluster-trace-gpu-v2023)" if r.get("trace", "synthetic") != "synthetic" else \
        "synthetic openb-format trace"
    load = Table(title=f"{which}, {r['load']:g}% load (published methodology, seed {r['seed']})",
                 title_justify="left")
    load.add_column("placer")
    for col in ("allocated % at the end", "idle GPUs", "pending pods", "allocated % at 60% arrived", "at 80%",
                "at 100%"):
        load.add_column(col, justify="right")
    most = r["openbLoadMostAllocated"]["runs"][0]
    for run in [*r["openbLoad"]["runs"], {**most, "label": f"{most['label']} (hosts MostAllocated)"}]:
        load.add_row(run["label"], str(run["allocatedPct"]), str(run["idleGpus"]), str(run["pods"]["pending"]),
                     *[str(_at(run, x)) for x in (60, 80, 100)])
    speed = Table(title="replay speed: the whole trace with arrivals, departures and retries", title_justify="left")
    for col in ("bind placer", "pods", "nodes", "replay s", "process CPU s", "process wall s"):
        speed.add_column(col, justify="right")
    for bind, rp in r["replay"].items():
        speed.add_row(bind, str(rp["pods"]), str(rp["nodes"]), str(rp["replaySeconds"]), str(rp["cpuSeconds"]),
                      str(rp["wallSeconds"]))
    return Group(seed, load, speed)


def _at(run: dict[str, Any], arrived: float) -> float | str:
    """Allocated % at the first arrival that brought the arrived load to `arrived`%."""
    xs, ys = run["series"]["arrivedPct"], run["series"]["allocatedPct"]
    for x, y in zip(xs, ys, strict=True):
        if x >= arrived:
            return y
    return "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--pods", type=int, default=12000)
    p.add_argument("--load", type=float, default=130.0)
    p.add_argument("--trace-dir", type=Path, help="the real openb trace's csv folder (else a synthetic trace)")
    args = p.parse_args(argv)
    run(Path(args.out), args.seed, args.nodes, args.pods, args.load, Console(width=140), args.trace_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
