"""`gpuslice simulate --scenario S --demand`: the day-of-demand comparison (sim.dayreplay) as a table or JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from extender.core.policy import Policy
from extender.sim.dayreplay import compare
from extender.sim.runs import policy_spec
from extender.sim.scenario import load_scenario

ROWS = (("GPU-hours (GPUs with a tenant)", "gpuHours"), ("  vs static peak, % fewer", "savingsVsStaticPeakPct"),
        ("slice GPU-hours (guaranteed CUs)", "sliceGpuHours"),
        ("  vs static peak, % fewer", "sliceSavingsVsStaticPeakPct"),
        ("SLA-minutes missed", "slaMinutesMissed"), ("changes made", "changes"), ("pods created", "podsCreated"),
        ("GPUs in use, min..max", "gpus"), ("pods never placed", "podsNeverPlaced"))


SPLIT = (("followed services' GPU share: demand followed each minute", "demandFollowed"),
         ("  + headroom", "withHeadroom"), ("  + sliding window's peak", "withWindow"),
         ("  + controller bounds = the fleets run", "fleet"),
         ("pods without a demand curve, placed alone", "fixedAlone"), ("GPUs with a tenant (placed)", "placed"),
         ("  added by the followed services", "addedByServices"),
         ("the same fleets packed fresh every 15 min: demand followed", "packedDemandFollowed"),
         ("  + headroom", "packedWithHeadroom"), ("  + sliding window's peak", "packedWithWindow"),
         ("  + controller bounds = the fleets run", "packedFleet"),
         ("  + the day's placement history = placed", "history"),
         ("what-if: lone followed pods re-placed every 15 min", "consolidatedPlaced"),
         ("  pods moved beside other tenants", "consolidationMoves"),
         ("  its SLA-minutes missed", "consolidatedSlaMinutesMissed"),
         ("floor: fewest GPUs carrying the demand, all repacked", "floorDemand"),
         ("  with the headroom", "floorWithHeadroom"),
         ("floor, pods without a curve where placed: demand", "floorPinnedDemand"),
         ("  with the headroom", "floorPinnedWithHeadroom"),
         ("no anti-flapping (the last minute's demand): placed", "reactivePlaced"),
         ("  its fleets packed fresh every 15 min", "reactivePacked"),
         ("  its SLA-minutes missed", "reactiveSlaMinutesMissed"), ("  its changes", "reactiveChanges"))


PLACED_REF = ("packed", "floor", "reactive", "consolidated")  # rows compared with static peak's GPUs placed

# rows shown with their saving against static peak (its own figure, or its GPUs with a tenant)
PCT = ("fleet", "addedByServices", "placed", "packedDemandFollowed", "packedWithHeadroom", "packedWithWindow",
       "packedFleet", "floorDemand", "floorWithHeadroom", "floorPinnedDemand", "floorPinnedWithHeadroom",
       "reactivePlaced", "reactivePacked", "consolidatedPlaced")


def breakdown_table(out: dict) -> Table:
    """Where the GPU-hours go (sim.dayreplay.breakdown), with each strategy's savings against static peak
    on the followed services' share and on the GPUs they add."""
    split = out["gpuHoursBreakdown"]
    table = Table(title="where the GPU-hours go (GPU share: the least GPUs the slices fill under the per-GPU rules; "
                  "floor: sim.gpu_floor)")
    table.add_column("GPU-hours over the day")
    for strategy in split:
        table.add_column(strategy, justify="right")
    base = split["static-peak"]
    for label, key in SPLIT:
        cells = []
        for r in split.values():
            v = r.get(key)
            ref = base.get(key, base["placed"] if key.startswith(PLACED_REF) else None)
            pct = "" if v is None or r is base or not ref or key not in PCT else f" ({100 * (1 - v / ref):.1f}% fewer)"
            cells.append("" if v is None else f"{v:.1f}{pct}")
        table.add_row(label, *cells)
    return table


def run(args: argparse.Namespace, resolve: Callable[[str, Path], tuple[Policy, str]]) -> int:
    scenario, where = load_scenario(args.scenario)
    name = (args.policy or [scenario.policy or "mi300x-inference"])[0]
    policy, label = resolve(name, where)
    spec = policy_spec(f"gpuslice:{label}", policy, name, args.bind_placer)
    out = compare(scenario, policy, spec, args.seed, args.rollout_minutes, args.host_score, args.extender_weight)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    runs = out["runs"]
    table = Table(title=f"{scenario.name}: one day of demand, {len(out['demand'])} services following it, "
                  f"rollouts take {out['rolloutMinutes']} min")
    table.add_column("")
    for strategy in runs:
        table.add_column(strategy, justify="right")
    for label_, key in ROWS:
        if key == "gpus":
            cells = [f"{r['gpusMin']}..{r['gpusMax']}" for r in runs.values()]
        else:
            cells = [str(r[key]) for r in runs.values()]
        table.add_row(label_, *cells)
    console = Console(width=120)
    console.print(table)
    console.print(breakdown_table(out))
    demand = ", ".join(f"{s} {d['troughRps']}..{d['peakRps']} req/s" for s, d in out["demand"].items())
    console.print(f"demand (trough..peak): {demand}; headroom {out['headroom']:.0%}")
    return 0
