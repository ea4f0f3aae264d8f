"""`gpuslice explain NAMESPACE/POD` (why is my pod pending?) and `gpuslice top` (the GPUs, live).

Both read the cluster the way the extender does: the live cluster's Nodes and bound Pods rebuilt into
an engine's ledgers (the same rebuild `serve` runs at start-up), or the built-in demo cluster.
`top` can also read a running extender's /debug/ledger.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import urllib3
from kubernetes.client import ApiException
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from extender.core.errors import InputError, UsageError
from extender.core.layout import fragmentation
from extender.core.policy import Policy, PolicyError, load_policy, parse_policy
from extender.core.requests import SliceRequest
from extender.core.rightsizing import explain_lines
from extender.engine.cluster import PodView
from extender.engine.demo import PENDING, demo_cluster
from extender.engine.explain import Explanation, explain
from extender.engine.occupancy import synced_engine
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.http.metrics import min_slice_cus
from extender.kube.client import api_client, core_api
from extender.kube.raw import read_json
from extender.kube.snapshot import list_views
from extender.kube.views import pod_view
from extender.rightsize.workloads import Workloads

GIB = 2**30


def _sources(p: argparse.ArgumentParser, demo_help: str) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--demo", action="store_true", help=demo_help)
    source.add_argument("--kubeconfig", metavar="FILE", help="the live cluster this kubeconfig names")
    source.add_argument("--in-cluster", action="store_true", help="the live cluster this pod runs in")
    p.add_argument("--policy", metavar="FILE", help="the policy the extender runs with (e.g. deploy/policy.yaml); "
                   "default: the built-in defaults")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="why a pod does or does not fit: its request, the best nodes and what "
                       "holds it back")
    p.add_argument("pod", metavar="NAMESPACE/POD")
    pending = ", ".join(x.namespace + "/" + x.name for x in PENDING)
    _sources(p, f"the built-in demo cluster (its pending pods: {pending})")
    p.add_argument("--top", type=int, default=3, metavar="N", help="how many nodes to show")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.set_defaults(func=explain_cmd)

    t = sub.add_parser("top", help="the cluster's GPUs in the terminal: CUs, memory, tenants, fragmentation")
    t.add_argument("--url", metavar="URL", help="a running extender (its /debug/ledger), e.g. http://127.0.0.1:8888")
    t.add_argument("--demo", action="store_true", help="the built-in demo cluster")
    t.add_argument("--kubeconfig", metavar="FILE", help="the live cluster this kubeconfig names")
    t.add_argument("--in-cluster", action="store_true", help="the live cluster this pod runs in")
    t.add_argument("--policy", metavar="FILE", help="policy for --kubeconfig/--in-cluster (default: built-in)")
    t.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="refresh period")
    t.add_argument("--once", action="store_true", help="print once and exit (the default when not on a terminal)")
    t.set_defaults(func=top_cmd)


def _policy(args: argparse.Namespace) -> Policy:
    try:
        return load_policy(args.policy) if args.policy else parse_policy({})
    except PolicyError as exc:
        raise UsageError(f"--policy {args.policy}: invalid ({exc.problems[0][0]}: {exc.problems[0][2]}); "
                         "see `gpuslice policy check`") from None


def _engine(args: argparse.Namespace, policy: Policy) -> tuple[Engine, Any]:
    """An engine over the demo or the live cluster, and the live API (None for the demo)."""
    if args.demo:
        engine = Engine(demo_cluster(policy), PolicyStore(policy))
        engine.sync()
        return engine, None
    client = api_client(args.kubeconfig, pool=2)
    api = core_api(client)
    try:
        nodes, pods = list_views(api, client)  # with the DRA claims as tenants (kube/claims.py)
    except (ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
        raise UsageError(f"cannot list Nodes and Pods ({args.kubeconfig or 'in-cluster'}): {_short(exc)}; "
                         "check the credentials' access (kubectl get nodes,pods,resourceclaims -A)") from None
    engine, _ = synced_engine(nodes, pods, policy)
    return engine, api


def _short(exc: Exception) -> str:
    return str(getattr(exc, "reason", None) or exc).splitlines()[0]


def _find_pod(args: argparse.Namespace, engine: Engine, api: Any) -> tuple[PodView, dict[str, Any] | None]:
    """The pod's view and, from a live cluster, its JSON (None for the demo)."""
    namespace, sep, name = args.pod.partition("/")
    if not sep or not namespace or not name:
        raise UsageError(f"{args.pod}: name the pod as NAMESPACE/POD")
    raw = None
    if api is None:
        pod = engine.cluster.get_pod(namespace, name)
    else:
        try:
            raw = read_json(api.read_namespaced_pod(name, namespace, _preload_content=False))
            pod = pod_view(raw)
        except ApiException as exc:
            if exc.status != 404:
                raise UsageError(f"cannot read pod {args.pod}: {exc.status} {exc.reason}") from None
            pod = None
    if pod is None:
        raise UsageError(f"pod {args.pod} not found" + (f"; the demo's pending pods: "
                         f"{', '.join(p.namespace + '/' + p.name for p in PENDING)}" if api is None else ""))
    return pod, raw


def rightsizing_lines(api: Any, raw: dict[str, Any] | None, policy: Policy) -> tuple[str, list[str]]:
    """The owner (kind/name) `gpuslice rightsize` manages and its recorded changes, oldest first; ("", [])
    when the pod has no Deployment/StatefulSet owner or it was never changed. An owner that cannot be
    read is said so, not hidden."""
    if api is None or raw is None:
        return "", []
    try:
        owner = Workloads(api.api_client).owner_of(raw)
    except ApiException as exc:
        return "", [f"owner not readable: {exc.status} {exc.reason}"]
    if owner is None:
        return "", []
    kind, name, annotations = owner
    try:
        return f"{kind}/{name}", explain_lines(annotations, policy.prefix)
    except InputError as exc:
        return f"{kind}/{name}", [f"unreadable right-sizing record: {exc.reason}"]


def explain_cmd(args: argparse.Namespace) -> int:
    """Exit 0 when the pod fits somewhere (or is placed), 1 when it fits nowhere."""
    policy = _policy(args)
    engine, api = _engine(args, policy)
    pod, raw = _find_pod(args, engine, api)
    result = explain(engine, pod, top=max(args.top, 1))
    owner, changes = rightsizing_lines(api, raw, policy)
    if args.json:
        print(json.dumps({**to_dict(result), "rightsizing": {"owner": owner or None, "changes": changes}},
                         indent=2))
    else:
        console = Console() if sys.stdout.isatty() else Console(width=160)
        show_explanation(result, policy, console)
        if changes:
            console.print(f"  right-sizing of {owner or 'its owner'} (gpuslice rightsize):")
            for line in changes:
                console.print(f"    {line}", markup=False)
    return 0 if result.fitting or result.placed_on or (result.request is None and not result.request_error) else 1


def describe_request(req: SliceRequest, policy: Policy) -> str:
    model = policy.model_for(None)
    cus = req.guaranteed_cus(policy, model, model.computeUnits)
    asked = f"{req.compute_cus} CUs sized for {req.target_rps:g} req/s ({req.profile})" if req.compute_cus \
        else f"{req.compute_millis}m"
    burst = f"burst to {req.compute_limit_millis}m" if req.compute_limit_millis > req.compute_millis else "no burst"
    return (f"{req.count} GPU(s) x {asked} = {cus} CUs on {policy.defaultModel} after {policy.rounding.mode} "
            f"rounding ({burst}), memory {req.memory_bytes / GIB:g}Gi "
            f"(limit {req.memory_limit_bytes / GIB:g}Gi), class {req.workload_class}")


def to_dict(e: Explanation) -> dict[str, Any]:
    req = e.request
    return {"pod": e.pod, "requestError": e.request_error or None, "placedOn": e.placed_on,
            "request": None if req is None else {
                "count": req.count, "computeMillis": req.compute_millis, "computeCus": req.compute_cus,
                "computeLimitMillis": req.compute_limit_millis, "memoryBytes": req.memory_bytes,
                "memoryLimitBytes": req.memory_limit_bytes, "class": req.workload_class, "profile": req.profile},
            "quota": e.quota or None, "fittingNodes": e.fitting, "nodesConsidered": e.nodes_considered,
            "best": [{"node": v.node, "fits": v.fits, "score": v.score, "constraint": v.constraint or None,
                      "detail": v.detail or None} for v in e.best],
            "hints": e.hints}


def show_explanation(e: Explanation, policy: Policy, console: Console) -> None:
    console.print(f"[bold]{e.pod}[/bold]")
    if e.request_error:
        console.print(f"  request: [red]invalid[/red]: {e.request_error}")
    elif e.request is not None:
        console.print(f"  request: {describe_request(e.request, policy)}")
    if e.placed_on:
        console.print(f"  placed on {e.placed_on} (gpuslice.io/assignment)")
    if e.request is not None:
        console.print(f"  fits on {e.fitting} of {e.nodes_considered} node(s)" + (f"; {e.quota}" if e.quota else ""))
    for v in e.best:
        if v.fits:
            console.print(f"  [green]fits[/green]  {v.node}: score {v.score}/10")
        else:
            console.print(f"  [red]no[/red]    {v.node}: [bold]{v.constraint}[/bold] - {v.detail}")
    for hint in e.hints:
        console.print(f"  -> {hint}")


# --- top ---------------------------------------------------------------------------------------


def _snapshot(args: argparse.Namespace, policy: Policy) -> dict[str, Any]:
    if args.url:
        url = args.url.rstrip("/") + "/debug/ledger"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {url}: {_short(exc)}; is `gpuslice serve` listening there?") from None
    engine, _ = _engine(args, policy)
    return engine.ledger.snapshot()


def gpu_rows(snapshot: dict[str, Any], policy: Policy) -> list[dict[str, Any]]:
    """One row per GPU: guaranteed / burst / free CUs, memory, tenants with class, fragmentation."""
    from extender.core.rangelist import parse_ranges

    rows = []
    for node in snapshot.get("nodes", []):
        for g in node.get("gpus", []):
            guaranteed = sum(len(parse_ranges(t["cus"])) for t in g["tenants"])
            burst = len(parse_ranges(g.get("burstRegion", "")))
            free = int(g["freeCus"])
            min_slice = min_slice_cus(policy, g["model"])
            free_set = _free_set(g, parse_ranges)
            rows.append({"node": node["node"], "gpu": g["index"], "healthy": g["healthy"], "total": g["computeUnits"],
                         "guaranteed": guaranteed, "burst": burst, "free": free,
                         "memoryUsed": g["memoryUsedBytes"], "memory": g["memoryBytes"],
                         "tenants": [(t["pod"], t["class"]) for t in g["tenants"]],
                         "fragmentation": fragmentation(free_set, min_slice) if free_set is not None else None})
    return rows


def _free_set(g: dict[str, Any], parse_ranges: Any) -> frozenset[int] | None:
    """The free CU set, from the GPU's size less guarantees, tenants' burst sets and the burst region."""
    taken: set[int] = set(parse_ranges(g.get("burstRegion", "")))
    for t in g["tenants"]:
        taken |= set(parse_ranges(t["cus"])) | set(parse_ranges(t.get("burstCus", "")))
    free = frozenset(range(int(g["computeUnits"]))) - taken
    return free if len(free) == int(g["freeCus"]) else None


def top_table(snapshot: dict[str, Any], policy: Policy, source: str) -> Group:
    table = Table(title=f"gpuslice top - {source}", expand=False)
    for col, just in (("node", "left"), ("gpu", "right"), ("guaranteed", "right"), ("burst", "right"),
                      ("free CUs", "right"), ("memory", "right"), ("frag", "right"), ("tenants (class)", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    rows = gpu_rows(snapshot, policy)
    last = None
    for r in rows:
        tenants = ", ".join(f"{pod} ({cls})" for pod, cls in r["tenants"]) or "-"
        frag = "-" if r["fragmentation"] is None else f"{r['fragmentation']:.2f}"
        gpu = str(r["gpu"]) if r["healthy"] else f"[red]{r['gpu']} unhealthy[/red]"
        table.add_row(r["node"] if r["node"] != last else "", gpu, f"{r['guaranteed']}/{r['total']}",
                      str(r["burst"]), str(r["free"]),
                      f"{r['memoryUsed'] / GIB:.0f}/{r['memory'] / GIB:.0f}Gi", frag, tenants)
        last = r["node"]
    used = sum(1 for r in rows if r["tenants"])
    cus = sum(r["guaranteed"] for r in rows)
    total = sum(r["total"] for r in rows) or 1
    footer = (f"{len(rows)} GPU(s) on {len({r['node'] for r in rows})} node(s); {used} with tenants; "
              f"{cus / total:.1%} of CUs guaranteed; reservations: "
              f"{sum(len(n.get('reservations', [])) for n in snapshot.get('nodes', []))}")
    if snapshot.get("policyReloadError"):
        footer += f"\n[yellow]policy reload rejected:[/yellow] {snapshot['policyReloadError']}"
    return Group(table, footer)


def top_cmd(args: argparse.Namespace) -> int:
    chosen = [x for x in (args.url, args.demo, args.kubeconfig, args.in_cluster) if x]
    if len(chosen) != 1:
        raise UsageError("choose one source: --url URL (a running extender), --demo, --kubeconfig FILE or "
                         "--in-cluster")
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    policy = _policy(args)
    source = args.url or ("demo cluster" if args.demo else args.kubeconfig or "in-cluster")
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if args.once or not sys.stdout.isatty():
        console.print(top_table(_snapshot(args, policy), policy, source))
        return 0
    with Live(top_table(_snapshot(args, policy), policy, source), console=console, screen=False) as live:
        try:
            while True:
                time.sleep(args.interval)
                live.update(top_table(_snapshot(args, policy), policy, source))
        except KeyboardInterrupt:
            pass
    return 0


__all__ = ["describe_request", "explain_cmd", "gpu_rows", "register", "to_dict", "top_cmd"]
