"""Prometheus metrics. Ledger gauges and counters are computed at scrape time from the engine's own
state (ledger, stats, policy store) by a custom collector, so they can never drift from it; only the
request-duration histogram and the request-CPU counter are observed by the app as requests happen.
The per-GPU families, nearly every line, are written by gpu_families.render (the text generate_latest
writes for them, at a fraction of its cost); the registry holds the rest.

Each app gets its own CollectorRegistry, so many apps (tests, benchmarks) can live in one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from extender.core.layout import stranded
from extender.core.policy import Policy
from extender.engine.scheduler import Engine
from extender.http import gpu_families

VERBS = ("filter", "prioritize", "preempt", "bind")
# Extender calls are milliseconds normally; kube-scheduler gives up at 5 s.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def min_slice_cus(policy: Policy, model_name: str) -> int:
    """The smallest guarantee the policy hands out on this model: free runs shorter are stranded."""
    model = policy.model_for(model_name)
    if policy.rounding.mode == "balanced":
        return max(policy.rounding.minComputeUnits, model.balanced_multiple)
    return policy.rounding.minComputeUnits


class LedgerCollector(Collector):
    """Reads the engine at scrape time: every family but the per-GPU ones (gpu_families.py)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        policy = engine.policies.current
        free_total = stranded_total = 0
        min_slices: dict[str, int] = {}  # per model
        for state in engine.ledger.nodes():
            for g in state.gpus:
                if g.free_runs and g.info.healthy:
                    model = g.info.model
                    if model not in min_slices:
                        min_slices[model] = min_slice_cus(policy, model)
                    free_total += len(g.free_cus)
                    stranded_total += stranded(g.free_runs, min_slices[model])
        yield GaugeMetricFamily("gpuslice_fragmentation_ratio", "share of free CUs (cluster-wide) stranded in "
                                "runs shorter than the smallest slice the policy hands out",
                                value=stranded_total / free_total if free_total else 0.0)
        yield _counter("gpuslice_filter_rejections", "nodes rejected by filter, by reason", "reason",
                       engine.stats.filter_rejections)
        yield _counter("gpuslice_bind", "bind requests by result", "result", engine.stats.binds)
        yield _counter("gpuslice_policy_reloads", "policy reloads by result", "result", engine.policies.reloads)
        watching = engine.policies.watching
        if watching is not None:
            yield GaugeMetricFamily("gpuslice_policy_watch_up", "1 while the policy file's watcher thread runs "
                                    "(0: policy changes are no longer applied, and /readyz fails)",
                                    value=1 if watching else 0)
        failures = CounterMetricFamily("gpuslice_policy_watch_failures", "policy-file polls that raised (each "
                                       "logged; the watcher went on)")
        failures.add_metric([], engine.policies.watch_failures)
        yield failures
        yield _counter("gpuslice_refused_input", "values refused for being beyond gpuslice's bounds, by the key "
                       "that carried them (list positions as [])", "key", engine.stats.refused)
        expired = CounterMetricFamily("gpuslice_reservations_expired", "reservations dropped because their bind "
                                      "never completed (since the last ledger rebuild)")
        expired.add_metric([], engine.ledger.expired_total)
        yield expired
        if engine.stats.last_sync is not None:
            yield GaugeMetricFamily("gpuslice_ledger_sync_age_seconds", "seconds since the ledgers were rebuilt "
                                    "from the cluster", value=max(0.0, time.time() - engine.stats.last_sync))
        yield GaugeMetricFamily("gpuslice_skipped_nodes", "nodes whose GPU inventory could not be read",
                                value=len(engine.stats.skipped_nodes))
        yield from _solver_families(engine)


def _solver_families(engine: Engine) -> Iterator[Metric]:
    """The CP-SAT bind placer's own counters, when bind uses it."""
    stats = getattr(engine.bind_placer, "stats", None)
    if stats is None:
        return
    buckets, total = stats.histogram()
    yield HistogramMetricFamily("gpuslice_solver_duration_seconds", "wall-clock time of one bind-time solve",
                                buckets=buckets, sum_value=total)
    yield _counter("gpuslice_solver_outcome", "bind-time solves by outcome (optimal, feasible, "
                   "fallback-greedy, infeasible)", "outcome", stats.outcomes)


def _counter(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(dict(values).items()):
        family.add_metric([key], value)
    return family


class ExtenderMetrics:
    """One app's metrics: its registry (the ledger collector, the request-duration histogram and the
    request-CPU counter), and the per-GPU families, written at render."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(LedgerCollector(engine))
        self.request_duration = Histogram("gpuslice_extender_request_duration_seconds",
                                          "time to answer a kube-scheduler extender call", ["verb"],
                                          registry=self.registry, buckets=DURATION_BUCKETS)
        # The answering thread's own CPU (time.thread_time): a duration well above it was spent waiting,
        # for the GIL, a lock or the API server, not computing.
        self.request_cpu = Counter("gpuslice_extender_request_cpu_seconds", "CPU time the answering thread "
                                   "spent on kube-scheduler extender calls", ["verb"], registry=self.registry)
        for verb in VERBS:  # export every verb from the start, not only after its first call
            self.request_duration.labels(verb)
            self.request_cpu.labels(verb)

    def render(self) -> bytes:
        """The scrape: the per-GPU families (written by gpu_families.render, the text generate_latest
        writes for them), then the registry's."""
        return gpu_families.render(self.engine.ledger.nodes()).encode() + generate_latest(self.registry)
