"""The right-sizing controller's Prometheus metrics, on its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class RightsizeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        labels = ["namespace", "workload"]
        self.changes = Counter("gpuslice_rightsize_changes_total", "slice or replica changes, applied or "
                               "recommended (dry run)", labels + ["action", "mode"], registry=r)
        self.holds = Counter("gpuslice_rightsize_holds_total", "changes wanted but held back",
                             labels + ["cause"], registry=r)
        self.compute_units = Gauge("gpuslice_rightsize_compute_units", "CUs per pod", labels + ["state"], registry=r)
        self.replicas = Gauge("gpuslice_rightsize_replicas", "replicas", labels + ["state"], registry=r)
        self.memory = Gauge("gpuslice_rightsize_memory_bytes", "GPU memory per pod", labels + ["state"], registry=r)
        self.need = Gauge("gpuslice_rightsize_need_rps", "window peak x (1 + headroom)", labels, registry=r)
        self.errors = Counter("gpuslice_rightsize_errors_total", "passes that failed for a workload",
                              labels + ["cause"], registry=r)
