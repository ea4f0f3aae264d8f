"""`gpuslice simulate`: replay a scenario or an openb trace through the engine, side by side with
other policies and baselines."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from extender.core.errors import GpusliceError
from extender.core.policy import Policy, PolicyError, load_policy
from extender.sim import openb, plots, report
from extender.sim.baselines import BASELINES
from extender.sim.gpumodels import builtin_policy_path, model_table_text, parse_model_option, with_models
from extender.sim.replay import RunSpec
from extender.sim.runs import baseline_spec, fewest_gpus, policy_spec, runner
from extender.sim.scenario import load_scenario, scenario_nodes, scenario_pods
from extender.sim.workload import SimNode, SimPod

HELP = f"""\
Replays pods through gpuslice's own filter/prioritize/bind (the engine) on a simulated cluster, with
kube-scheduler's host CPU/memory fit and node choice modelled around it (see extender/sim/replay.py):
node score = LeastAllocated (or --host-score most) + BalancedAllocation (weight 1 each, 0..100)
+ extender score (0..10) x 10 x --extender-weight (default 5), highest wins, ties at random (seeded).

Inputs:
  --scenario seed|FILE       our YAML scenario format (extender/sim/scenario.py documents it). Built in:
                             `seed` (the DESIGN's Llama-3.1-8B/MI300X facts with an assumed fleet, see
                             extender/sim/data/seed.scenario.yaml) and `seed-llm-only` (the same LLM
                             endpoints without compute-bound services: a sensitivity check)
  --pods P.csv --nodes N.csv the openb trace format. Translation: num_gpu 0 = no GPU; num_gpu 1 =
                             compute gpu_milli m; num_gpu > 1 = that many whole GPUs (1000m each);
                             gpu_spec = allowed GPU models (node selector on the node's model);
                             GPU memory (not in the trace) = gpu_milli/1000 x the memory of the
                             smallest allowed GPU, i.e. proportional to the compute share.
                             GPU models (CUs = SMs for NVIDIA): {model_table_text()}.
  --load X --seed N          the published methodology: sample trace pods with replacement (seeded)
                             until the GPUs they ask reach X% of the cluster's; pods never depart.
                             Without --load the trace replays by creation/deletion time.
SLA right-sizing: a pod with a profile and a target req/s is sized by the extender's own rule
(extender/core/sizing.py): the smallest CU count (after the policy's rounding) whose profile
throughput, less the interference of the worst co-tenancy the policy's per-GPU rules allow beside it
(class limits, bandwidth budget, CUs left; interference.memoryBoundPenalty per other memory-bound
tenant, computeBoundPenalty per other compute-bound one), meets the target, and at least the profile's
minimum memory; targets no CU count meets are reported as infeasible. After the replay each such pod's
predicted req/s is recomputed with the co-tenants it actually has.
Reproducibility: --seed fixes sampling and tie-breaks; with the CP-SAT placer at bind a solve that hits
its wall-clock limit (policy solver.timeLimitMs) may answer differently on a busier machine, so use
--bind-placer greedy for bit-identical replays.
Outputs: GPUs used/idle, allocated and arrived % of GPUs, fragmentation, pending pods, per-class
interference, SLA per pod; --json; --plots DIR (PNG).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="replay workloads or an openb trace through the placement engine",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", help="built-in `seed` or a scenario YAML file")
    p.add_argument("--pods", help="openb pod list CSV")
    p.add_argument("--nodes", help="openb node list CSV")
    p.add_argument("--load", type=float, help="sample pods until they ask this %% of the cluster's GPUs")
    p.add_argument("--seed", type=int, default=1, help="random seed (sampling, tie-breaks, random baseline)")
    p.add_argument("--limit", type=int, help="replay only the first N trace pods (by creation time)")
    p.add_argument("--policy", action="append", default=[],
                   help="policy file or built-in name (mi300x-inference, openb); repeat to compare. "
                   "Default: the scenario's policy, or openb for traces")
    p.add_argument("--baseline", help="the current policy file to compare --policy against (what-if), "
                                      f"or a baseline placer: {', '.join(BASELINES)}")
    p.add_argument("--compare", action="store_true", help=f"also run the baselines ({', '.join(BASELINES)})")
    p.add_argument("--baselines", default=",".join(BASELINES), help="which baselines --compare runs")
    p.add_argument("--host-score", choices=["least", "most", "none"], default="least",
                   help="kube-scheduler's NodeResourcesFit scoring strategy (default least: its default)")
    p.add_argument("--extender-weight", type=float, default=5.0, help="the extender's weight in the "
                   "KubeSchedulerConfiguration (default 5)")
    p.add_argument("--bind-placer", choices=["solver", "greedy"], default="solver",
                   help="gpuslice's bind decision: the CP-SAT placer as `gpuslice serve` uses (default; each "
                   "bind may take up to the policy's solver.timeLimitMs of wall time) or the greedy placer")
    p.add_argument("--gpu-model", action="append", default=[], metavar="NAME=CUS:GIB",
                   help="define a trace GPU model missing from the table")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--series", action="store_true", help="include per-arrival series and per-GPU arrays in JSON")
    p.add_argument("--per-pod", action="store_true", help="print the per-pod SLA table")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots to DIR")
    p.set_defaults(func=simulate_cmd)


def simulate_cmd(args: argparse.Namespace) -> int:
    try:
        out = simulate(args)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except GpusliceError as exc:
        print(f"gpuslice simulate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


def resolve_policy(name: str, base: Path | None = None) -> tuple[Policy, str]:
    path = Path(name)
    if not path.exists() and base is not None and (base / name).exists():
        path = base / name
    if not path.exists() and builtin_policy_path(name).exists():
        path = builtin_policy_path(name)
    return load_policy(path), path.stem


def _inputs(args: argparse.Namespace) -> tuple[str, list[SimNode], list[SimPod], list[str], str]:
    """(name, nodes, pods, policy names, directory for relative policy paths)."""
    extra = dict(parse_model_option(t) for t in args.gpu_model)
    if args.scenario:
        if args.pods or args.nodes:
            raise GpusliceError("use --scenario or --pods/--nodes, not both")
        scenario, where = load_scenario(args.scenario)
        default = [scenario.policy] if scenario.policy else []
        return scenario.name, scenario_nodes(scenario), scenario_pods(scenario), default, str(where)
    if not (args.pods and args.nodes):
        raise GpusliceError("give --scenario, or both --pods and --nodes (openb CSVs)")
    nodes = openb.read_nodes(args.nodes, extra)
    pods = openb.read_pods(args.pods, openb.node_model_memory(nodes, extra))
    if args.load is not None:
        pods = openb.sample_load(pods, sum(n.gpus for n in nodes), args.load, args.seed)
    elif args.limit:
        pods = pods[: args.limit]
    return Path(args.pods).stem, nodes, pods, ["openb"], "."


def _specs(args: argparse.Namespace, default_policies: list[str], where: Path,
           nodes: list[SimNode]) -> tuple[list[RunSpec], bool]:
    """The runs: [current policy (what-if)], each --policy, then baselines. Returns (specs, what-if)."""
    extra = dict(parse_model_option(t) for t in args.gpu_model)
    models = {n.model for n in nodes if n.gpus}
    names = args.policy or default_policies or ["mi300x-inference"]
    loaded = [resolve_policy(n, where) for n in names]
    labels = _unique([label for _, label in loaded])
    specs: list[RunSpec] = []
    what_if = args.baseline is not None and args.baseline not in BASELINES
    if what_if:
        current, label = resolve_policy(args.baseline, where)
        specs.append(policy_spec(f"current:{label}", with_models(current, models, extra), args.baseline,
                                 args.bind_placer))
    for (policy, _), label, src in zip(loaded, labels, names, strict=True):
        run_label = f"new:{label}" if what_if else f"gpuslice:{label}"
        specs.append(policy_spec(run_label, with_models(policy, models, extra), src, args.bind_placer))
    wanted = [b.strip() for b in args.baselines.split(",") if b.strip()] if args.compare else []
    if args.baseline in BASELINES:
        wanted.append(args.baseline)
    if args.scenario and "1-model-1-gpu" not in wanted:
        wanted.insert(0, "1-model-1-gpu")
    primary_policy = with_models(loaded[0][0], models, extra)
    specs.extend(baseline_spec(b, primary_policy, args.seed) for b in dict.fromkeys(wanted))
    return specs, what_if


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    name, nodes, pods, default_policies, where = _inputs(args)
    specs, what_if = _specs(args, default_policies, Path(where), nodes)
    run = runner(args.host_score, args.extender_weight, args.seed)
    runs = [run(nodes, pods, s) for s in specs]
    primary = runs[1] if what_if else runs[0]
    out: dict[str, Any] = {"input": name, "nodes": len(nodes), "podsArrived": len(pods)}
    plotted = list(runs)
    if args.scenario:
        out.update(_needed(run, nodes, pods, specs, runs, what_if))
        if out.get("neededRun"):
            plotted.append({**out["neededRun"], "label": f"{primary['label']} @ {out['gpus']} GPUs"})
    out.update({k: primary[k] for k in ("allocatedPct", "arrivedPct", "idleGpus", "fragmentationPct",
                                        "cuAllocatedPct", "gpusTotal") if k not in out})
    out.setdefault("slaMet", primary["slaMet"])
    out["pendingPods"] = primary["pods"]["pending"]  # type: ignore[index]
    out["runs"] = [report.compact(r, args.series) for r in runs]
    if "neededRun" in out:
        out["neededRun"] = report.compact(out["neededRun"], args.series)
    if args.plots:
        out["plots"] = [str(p) for p in plots.write_plots(plotted, Path(args.plots), name)]
    if not args.json:
        _print(args, name, runs, out, what_if)
    return out


def _needed(run: Any, nodes: list[SimNode], pods: list[SimPod], specs: list[RunSpec],
            runs: list[dict[str, Any]], what_if: bool) -> dict[str, Any]:
    """GPUs the status quo needs (one per replica per GPU asked) against the fewest gpuslice needs."""
    base = next(r for r, s in zip(runs, specs, strict=True) if s.label == "1-model-1-gpu")
    # every replica, placed on the scenario's cluster or not, takes its own whole GPUs
    baseline_gpus = max(int(base["gpus"]), sum(p.gpu.count for p in pods if p.gpu))
    k = 1 if what_if else 0
    gpus, needed = fewest_gpus(run, nodes, pods, specs[k], runs[k])
    out: dict[str, Any] = {"baselineGpus": baseline_gpus, "baselineSlaMet": base["slaMet"],
                           "gpusOnScenarioCluster": runs[k]["gpus"]}
    if gpus is None:
        out.update(gpus=runs[k]["gpus"], savingsPct=None, slaMet=False,
                   note="the scenario's cluster cannot place every pod with its SLA under this policy")
        return out
    out.update(gpus=gpus, savingsPct=round(100 * (1 - gpus / baseline_gpus), 1) if baseline_gpus else None,
               slaMet=bool(needed["slaMet"]) or needed["sla"]["pods"] == 0, neededRun=needed)
    if what_if:
        current, _ = fewest_gpus(run, nodes, pods, specs[0], runs[0])
        out["currentPolicyGpus"] = current  # None: the current policy cannot place everything with its SLA
    return out


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def _print(args: argparse.Namespace, name: str, runs: list[dict[str, Any]], out: dict[str, Any],
           what_if: bool) -> None:
    console = Console(width=max(100, 30 + 26 * (len(runs) + 1)))
    header = [f"[bold]{name}[/]: {out['nodes']} nodes, {out['podsArrived']} pods arrived"]
    shown = list(runs)
    if "baselineGpus" in out:
        current = f", current policy {out['currentPolicyGpus']}" if what_if else ""
        header.append(f"GPUs needed: 1-model-1-GPU {out['baselineGpus']}{current}, gpuslice {out['gpus']} "
                      f"({out['savingsPct']}% fewer); every SLA met: {out['slaMet']}")
        if out.get("neededRun"):
            shown.append({**out["neededRun"], "label": f"{runs[1 if what_if else 0]['label']} @ {out['gpus']} GPUs"})
    per_pod = "all" if args.per_pod else ("last" if "baselineGpus" in out else "")
    report.print_tables(console, "side by side", shown, per_pod, header)
    if what_if:
        cur, new = runs[0], runs[1]
        deltas = [f"{label}: {cur[key]} -> {new[key]}" for label, key in report.ROWS if cur[key] != new[key]]
        console.print("[bold]what this policy change does:[/] " + ("; ".join(deltas) or "no change"))
    if out.get("plots"):
        console.print("plots: " + ", ".join(out["plots"]))
