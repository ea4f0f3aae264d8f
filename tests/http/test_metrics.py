"""ExtenderMetrics.render: the scrape of before, at a fraction of its cost (bench/metrics_bench.py)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from extender.core.layout import fragmentation
from extender.core.policy import parse_policy
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.http import gpu_families
from extender.http.metrics import ExtenderMetrics, LedgerCollector, min_slice_cus
from tests.http.test_gpu_families import latest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from extender_bench import build_cluster  # noqa: E402


@pytest.fixture(scope="module")
def engine() -> Engine:
    policy = parse_policy({})
    engine = Engine(build_cluster(20, random.Random(1), policy), PolicyStore(policy))
    engine.sync()
    return engine


def test_scrape_is_the_one_registry_of_before(engine: Engine) -> None:
    """The whole scrape is what one registry gave when the ledger collector yielded the per-GPU families
    first: same families, same order, same bytes (the sync age apart, which the clock moves)."""
    metrics = ExtenderMetrics(engine)
    metrics.request_duration.labels("bind").observe(0.02)
    before = latest(lambda: gpu_families.families(engine.ledger.nodes()), LedgerCollector(engine).collect,
                    lambda: metrics.request_duration.collect(), lambda: metrics.request_cpu.collect())

    def timeless(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("gpuslice_ledger_sync_age_seconds ")]

    after = metrics.render().decode()
    assert after.count("\n") > 20 * 8 * 8
    assert timeless(after) == timeless(before)


def test_fragmentation_ratio_is_the_share_of_stranded_free_cus(engine: Engine) -> None:
    """The cluster-wide ratio is layout.fragmentation's rule summed over the healthy GPUs' free CUs."""
    policy = engine.policies.current
    free = stranded = 0
    for state in engine.ledger.nodes():
        for g in state.gpus:
            if g.info.healthy:
                free += len(g.free_cus)
                stranded += round(fragmentation(g.free_cus, min_slice_cus(policy, g.info.model)) * len(g.free_cus))
    (family,) = [m for m in LedgerCollector(engine).collect() if m.name == "gpuslice_fragmentation_ratio"]
    assert stranded > 0
    assert family.samples[0].value == stranded / free
