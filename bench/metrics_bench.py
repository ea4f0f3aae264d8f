"""CPU time of one /metrics scrape: today's path (generate_latest over every family, the per-GPU ones
built sample by sample) against ExtenderMetrics.render (the per-GPU families written by
http/gpu_families.render), on bench/extender_bench.py's synced cluster of N nodes x 8 MI300X.

Both paths scrape the same engine in the same run, alternately, `--repeats` times each; the table has
the medians of process CPU time with min..max, and the ratio of the medians. The two bodies are
checked equal first (the sync age apart, which the clock moves).

    python bench/metrics_bench.py [--sizes 1000,5000] [--repeats 7] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from extender_bench import build_cluster  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.core import Metric  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from extender.core.policy import parse_policy  # noqa: E402
from extender.engine.policy_store import PolicyStore  # noqa: E402
from extender.engine.scheduler import Engine  # noqa: E402
from extender.http import gpu_families  # noqa: E402
from extender.http.metrics import ExtenderMetrics, LedgerCollector  # noqa: E402


class EveryFamily(Collector):
    """Today's collector: the per-GPU families sample by sample, then the ledger collector's others."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.rest = LedgerCollector(engine)

    def collect(self) -> list[Metric]:
        return [*gpu_families.families(self.engine.ledger.nodes()), *self.rest.collect()]


def cpu_ms(scrape: Callable[[], bytes]) -> float:
    start = time.process_time()
    scrape()
    return (time.process_time() - start) * 1000


def timeless(body: bytes) -> list[bytes]:
    return [line for line in body.splitlines() if not line.startswith(b"gpuslice_ledger_sync_age_seconds ")]


def measure(nodes: int, repeats: int, console: Console) -> dict[str, object]:
    policy = parse_policy({})
    engine = Engine(build_cluster(nodes, random.Random(1), policy), PolicyStore(policy))
    engine.sync()
    metrics = ExtenderMetrics(engine)
    before = CollectorRegistry(auto_describe=False)
    before.register(EveryFamily(engine))
    before.register(metrics.request_duration)
    before.register(metrics.request_cpu)

    def today() -> bytes:
        return generate_latest(before)

    body = metrics.render()
    if timeless(body) != timeless(today()):
        raise SystemExit(f"{nodes} nodes: the two scrapes differ")
    times: dict[str, list[float]] = {"today": [], "render": []}
    for _ in range(repeats):  # alternately, so that both see the same machine load
        times["today"].append(cpu_ms(today))
        times["render"].append(cpu_ms(metrics.render))
    row: dict[str, object] = {"nodes": nodes, "lines": body.count(b"\n"), "bytes": len(body), "repeats": repeats}
    for name, samples in times.items():
        row[name] = {"medianMs": round(statistics.median(samples), 1), "minMs": round(min(samples), 1),
                     "maxMs": round(max(samples), 1), "samplesMs": [round(s, 1) for s in samples]}
    row["ratio"] = round(statistics.median(times["today"]) / statistics.median(times["render"]), 1)
    console.log(f"{nodes} nodes done")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,5000", help="node counts, comma-separated")
    ap.add_argument("--repeats", type=int, default=7, help="scrapes per path and size (at least 5)")
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = ap.parse_args()
    if args.repeats < 5:
        ap.error("--repeats must be at least 5")
    console = Console()
    rows = [measure(int(n), args.repeats, console) for n in args.sizes.split(",")]
    table = Table(title="CPU per /metrics scrape: median (min..max) of process time")
    for col in ("nodes", "lines", "MiB", "today's path ms", "render ms", "ratio"):
        table.add_column(col, justify="right")

    def cell(t: dict) -> str:
        return f"{t['medianMs']:.0f} ({t['minMs']:.0f}..{t['maxMs']:.0f})"

    for r in rows:
        table.add_row(f"{r['nodes']:,}", f"{r['lines']:,}", f"{r['bytes'] / 2**20:.1f}", cell(r["today"]),
                      cell(r["render"]), f"{r['ratio']}x")
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
