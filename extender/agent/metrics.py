"""The agent's Prometheus metrics, on its own registry (served on the agent's own port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.pod_vram = Gauge("gpuslice_agent_pod_vram_bytes", "VRAM a pod's processes use on a GPU",
                              ["namespace", "pod", "gpu"], registry=r)
        self.pod_vram_limit = Gauge("gpuslice_agent_pod_vram_limit_bytes", "a pod's VRAM limit on a GPU",
                                    ["namespace", "pod", "gpu"], registry=r)
        self.breaches = Counter("gpuslice_agent_vram_breaches_total", "pods found above their VRAM limit",
                                ["action"], registry=r)
        self.gpus = Gauge("gpuslice_agent_gpus", "GPUs in the node's inventory", ["health"], registry=r)
        self.allocations = Counter("gpuslice_agent_allocations_total", "device plugin Allocate calls",
                                   ["result"], registry=r)
        self.handoffs = Counter("gpuslice_agent_handoffs_total",
                                "PreStartContainer hand-offs: ok, or the reason the container was refused", ["result"],
                                registry=r)
        self.cdi_removed = Counter("gpuslice_agent_cdi_specs_removed_total",
                                   "CDI spec files removed because no container holds their devices", registry=r)
        self.registrations = Counter("gpuslice_agent_kubelet_registrations_total",
                                     "registrations with kubelet", registry=r)
        self.publishes = Counter("gpuslice_agent_inventory_publishes_total", "inventory annotation patches",
                                 ["result"], registry=r)
        self.dmem = Gauge("gpuslice_agent_dmem_enforced", "1 when the kernel's dmem cgroup enforces VRAM limits",
                          registry=r)
        self.dmem_writes = Counter("gpuslice_agent_dmem_writes_total", "dmem.max writes", ["result"], registry=r)
