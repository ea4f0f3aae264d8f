"""Results as rich tables (side by side, one column per run) and as JSON."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

ROWS: list[tuple[str, str]] = [
    ("GPUs used", "gpus"), ("idle GPUs", "idleGpus"), ("GPUs total", "gpusTotal"),
    ("arrived load % of GPUs", "arrivedPct"), ("allocated % of GPUs", "allocatedPct"),
    ("CUs guaranteed %", "cuAllocatedPct"), ("GPUs with tenants %", "gpusUsedPct"),
    ("fragmentation % of GPUs", "fragmentationPct"), ("tenants per used GPU", "tenantsPerUsedGpu"),
]


def _pods(r: dict[str, Any], key: str) -> str:
    return str(r["pods"][key])


def comparison_table(runs: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for r in runs:
        table.add_column(str(r["label"]), justify="right")
    for name, key in ROWS:
        table.add_row(name, *[f"{r[key]}" for r in runs])
    for key in ("placed", "pending", "infeasible"):
        table.add_row(f"pods {key}", *[_pods(r, key) for r in runs])
    classes = sorted({c for r in runs for c in r["interference"]})
    for cls in classes:
        table.add_row(f"{cls} sharing / mean loss", *[
            (f"{r['interference'][cls]['sharing']}/{r['interference'][cls]['tenants']} "
             f"{r['interference'][cls]['meanLossPct']}%") if cls in r["interference"] else "-" for r in runs])
    if any(r["sla"]["pods"] for r in runs):
        table.add_row("SLAs met", *[f"{r['sla']['met']}/{r['sla']['pods']}" for r in runs])
    table.add_row("replay seconds", *[f"{r['elapsedSeconds']}" for r in runs])
    return table


def sla_table(run: dict[str, Any], limit: int = 60) -> Table:
    table = Table(title=f"SLA per pod ({run['label']}): predicted req/s with its co-tenants at the end",
                  title_justify="left")
    for col in ("pod", "target req/s", "predicted req/s", "CUs", "co-tenants", "status"):
        table.add_column(col, justify="left" if col in ("pod", "status") else "right")
    for row in run["sla"]["perPod"][:limit]:
        status = row["status"] + (f": {row['reason']}" if row.get("reason") else "")
        table.add_row(row["pod"], f"{row['targetRps']:g}", str(row.get("predictedRps", "-")),
                      str(row.get("cus", "-")), str(row.get("coTenants", "-")), status)
    return table


def print_tables(console: Console, title: str, runs: list[dict[str, Any]], per_pod: str,
                 header: list[str] | None = None) -> None:
    """per_pod: "all" runs' SLA tables, "last" run's only, or "" for none."""
    for line in header or []:
        console.print(line)
    console.print(comparison_table(runs, title))
    for r in runs:
        if r["pendingReasons"]:
            console.print(f"[bold]{r['label']}[/] pending: " +
                          "; ".join(f"{n}x {why}" for why, n in r["pendingReasons"].items()))
        for item in r["infeasible"][:5]:
            console.print(f"[bold]{r['label']}[/] infeasible {item['pod']}: {item['reason']}")
    if per_pod:
        for r in runs if per_pod == "all" else runs[-1:]:
            if r["sla"]["perPod"]:
                console.print(sla_table(r))


def compact(run: dict[str, Any], series: bool = False) -> dict[str, Any]:
    """A run for JSON output: the bulky per-arrival series and per-GPU arrays only on request."""
    if series:
        return run
    return {k: v for k, v in run.items() if k not in ("series", "occupancy", "occupancyByClass")}
