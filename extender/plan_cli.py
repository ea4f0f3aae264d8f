"""`gpuslice plan`: capacity planning — where would these workloads go, and how many GPUs do they need?"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import urllib3
import yaml
from kubernetes.client import ApiException
from kubernetes.config import ConfigException
from rich.console import Console
from rich.table import Table

from extender.core.ledger import PodRef
from extender.core.policy import Policy, PolicyError, load_policy, parse_policy
from extender.engine.occupancy import Occupancy, occupancy
from extender.engine.planner import PLAN_NAMESPACE, Plan, PlanInputError, parse_cluster, parse_workloads, plan
from extender.kube.client import api_client, core_api
from extender.kube.snapshot import list_views

GIB = 2**30


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="plan workloads onto a cluster's GPUs (CP-SAT), with a proven lower bound")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--cluster", metavar="FILE",
                        help='YAML/JSON {"nodes": [{"name", "inventory": [...]} | {"name", "gpus": N, "model"}]}')
    source.add_argument("--kubeconfig", metavar="FILE", help="plan on the live cluster this kubeconfig names")
    source.add_argument("--in-cluster", action="store_true", help="plan on the live cluster this pod runs in")
    p.add_argument("--ignore-existing", action="store_true",
                   help="live cluster: plan on empty GPUs (default: on what the bound pods' gpuslice.io/assignment "
                        "annotations leave free)")
    p.add_argument("--workloads", required=True, metavar="FILE",
                   help='YAML/JSON {"workloads": [{"name", "replicas", "compute", "memory", "class"} | '
                        '{"name", "replicas", "profile", "targetRps"}]}')
    p.add_argument("--policy", metavar="FILE", help="policy YAML (default: the built-in defaults)")
    p.add_argument("--time-limit", type=float, default=5.0, metavar="SECONDS",
                   help="wall-clock limit of the whole plan (default 5)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="CP-SAT workers (default: the policy's solver.workers)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--allow-partial", action="store_true",
                   help="exit 0 even when some replicas cannot be placed (default: exit 1 then)")
    p.set_defaults(func=plan_cmd)


def _load(path: str, what: str) -> object:
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise PlanInputError(f"{what} {path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PlanInputError(f"{what} {path}: not YAML/JSON: {exc}") from None


def plan_cmd(args: argparse.Namespace) -> int:
    """Exit 0 with a plan that places everything; 1 when replicas are left unplaced (listed in the plan;
    --allow-partial makes that 0); 2 on unusable input."""
    try:
        policy: Policy = load_policy(args.policy) if args.policy else parse_policy({})
        nodes = parse_cluster(_load(args.cluster, "cluster"), policy) if args.cluster else {}
        workloads, rejected = parse_workloads(_load(args.workloads, "workloads"), policy)
        if args.time_limit <= 0:
            raise PlanInputError("--time-limit must be positive")
        live = None if args.cluster else _live(args, policy)
        if live is not None:
            nodes = live.nodes
            if not nodes:
                raise PlanInputError(f"cluster: no node with GPUs ({len(live.skipped)} skipped for unreadable "
                                     f"inventory, {live.without_gpus} without GPUs)")
        existing = [] if live is None or args.ignore_existing else live.existing
        result = plan(nodes, workloads, policy, args.time_limit, args.workers or policy.solver.workers, existing)
    except (PolicyError, PlanInputError, KubeReadError) as exc:
        print(f"gpuslice plan: {exc}", file=sys.stderr)
        return 2
    result.unplaced[:0] = rejected
    # piped output has no terminal width; keep the table readable instead of 80 columns
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if args.json:
        doc = result.to_dict()
        if live is not None:  # the file path's document stays as it was (a stable interface)
            doc["cluster"] = {**live.to_dict(), "existingCounted": not args.ignore_existing}
        print(json.dumps(doc, indent=2))
    else:
        show(result, console)
        if live is not None:
            show_live(live, args.ignore_existing, console)
    if result.unplaced and not args.allow_partial:
        print(f"gpuslice plan: {len(result.unplaced)} replica(s) not placed; add GPUs or shrink the workloads, "
              "or pass --allow-partial to accept a partial plan", file=sys.stderr)
        return 1
    return 0


class KubeReadError(RuntimeError):
    """The live cluster could not be read (credentials, connection, permissions)."""


def _live(args: argparse.Namespace, policy: Policy) -> Occupancy:
    try:
        client = api_client(args.kubeconfig, pool=2)
        nodes, pods = list_views(core_api(client), client)
    except (ConfigException, ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
        where = args.kubeconfig or "in-cluster"
        raise KubeReadError(f"cannot list Nodes and Pods ({where}): {exc}") from None
    return occupancy(nodes, pods, policy)


def _tenant(pod: PodRef) -> str:
    # the planner reserves its replicas in the "plan" namespace; anything else was already running
    return pod.name if pod.namespace == PLAN_NAMESPACE else f"{pod.key} (running)"


def show(result: Plan, console: Console) -> None:
    table = Table(title="placement per GPU")
    for col in ("node", "gpu", "tenant", "class", "CUs", "memory", "GPU CUs", "GPU memory"):
        table.add_column(col, justify="left" if col in ("node", "tenant", "class") else "right")
    for state in sorted(result.nodes, key=lambda s: s.name):
        for g in state.gpus:
            whole = len(g.guaranteed) >= g.info.computeUnits  # a whole GPU: no burst region on it
            usable = g.info.computeUnits if whole else g.info.computeUnits - len(g.shared)
            for k, s in enumerate(g.slices):
                last = k == len(g.slices) - 1
                table.add_row(state.name if k == 0 else "", str(g.info.index) if k == 0 else "", _tenant(s.pod),
                              s.workload_class, str(len(s.cus)), f"{s.memory / GIB:.0f}Gi",
                              f"{len(g.guaranteed)}/{usable}" if last else "",
                              f"{g.memory_used / GIB:.0f}/{g.info.memoryBytes / GIB:.0f}Gi" if last else "",
                              end_section=last)
    console.print(table)
    for line in summary(result):
        console.print(line)
    show_sla(result, console)
    if result.unplaced:
        console.print(f"[red]{len(result.unplaced)} not placed:[/red]")
        for u in result.unplaced:
            which = u.workload if u.replica is None else f"{u.workload}#{u.replica}"
            console.print(f"  {which}: {u.reason}")


def _bounds(bounds: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(bounds.items()))


def summary(result: Plan) -> list[str]:
    """The plan's summary lines; they say what was placed, and when not everything was, how far off it is."""
    asked, placed = result.replicas, len(result.placements)
    solver = f"solver {result.outcome} in {result.seconds:.2f}s"
    used = f"GPUs used: [bold]{result.gpus_used}[/bold] of {result.gpus_total}"
    if asked == 0:
        return [f"{used}; nothing to place", solver]
    if placed == asked:
        return [f"{used} (one model per GPU would take {result.one_per_gpu})",
                f"lower bound: [bold]{result.lower_bound}[/bold] ({_bounds(result.bounds)}); gap {result.gap:.1%}; "
                f"{solver}"]
    lines = [f"{used} for {placed} of {asked} replicas (one model per GPU would take {result.one_per_gpu} for "
             f"those, {result.one_per_gpu_all} for all)"]
    if placed:
        lines.append(f"lower bound for the placed replicas: [bold]{result.lower_bound}[/bold] "
                     f"({_bounds(result.bounds)}); gap {result.gap:.1%}; {solver}")
    else:
        lines.append(f"no replica placed; {solver}")
    if result.bounds_all:
        lines.append(f"placing every replica that fits some GPU needs at least {result.lower_bound_all} GPUs "
                     f"({_bounds(result.bounds_all)}); the cluster has {result.gpus_total}")
    return lines


def show_sla(result: Plan, console: Console) -> None:
    """Each SLA replica's predicted req/s beside the co-tenants the plan gave it (core/sizing.predict)."""
    rows = [p for p in result.placements if p.sla is not None]
    if not rows:
        return
    table = Table(title="SLA per replica: predicted req/s beside its co-tenants")
    for col in ("replica", "node", "gpu", "CUs", "co-tenants (memory/compute-bound)", "target req/s",
                "predicted req/s", "status"):
        table.add_column(col, justify="left" if col in ("replica", "node", "status") else "right")
    for p in rows:
        sla = p.sla
        assert sla is not None
        status = {True: "met", False: "[red]under target[/red]", None: "not measured on this GPU model"}[sla.met]
        table.add_row(f"{p.workload}#{p.replica}", p.assignment.node,
                      ",".join(str(g.index) for g in p.assignment.gpus), str(sla.cus),
                      f"{sla.co_tenants.memory_bound}/{sla.co_tenants.compute_bound}", f"{sla.target_rps:g}",
                      "-" if sla.predicted_rps is None else f"{sla.predicted_rps:.2f}", status)
    console.print(table)


def show_live(live: Occupancy, ignore_existing: bool, console: Console) -> None:
    counted = "ignored (--ignore-existing)" if ignore_existing else "reserved first"
    console.print(f"live cluster: {len(live.nodes)} GPU node(s), {len(live.existing)} existing tenant(s) {counted}; "
                  f"{live.without_gpus} node(s) without GPUs")
    for name, reason in sorted(live.skipped.items()):
        console.print(f"  [yellow]skipped[/yellow] {name}: {reason}")
    for problem in live.problems:
        console.print(f"  [yellow]not counted[/yellow] {problem}")
