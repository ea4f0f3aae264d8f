"""The built-in demo cluster: four 8-GPU MI300X nodes with tenants already placed, the three plain
nodes of the recorded kube-scheduler fixtures, and a few pending pods to try the extender with.

Tenants are placed through the engine's own bind path, so their assignment annotations are exactly
what a running extender writes and a restarted one (`Engine.sync`) rebuilds without problems.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from extender.core.inventory import INVENTORY_ANNOTATION, GpuInfo, format_inventory
from extender.core.policy import Policy
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine

GPU_NODES = ("mi300x-0", "mi300x-1", "mi300x-2", "mi300x-3")
FIXTURE_NODES = ("node-a", "node-b", "bad-node-c")  # as in tests/fixtures/kube-scheduler (no agent)
MI300X_CUS = 304
MI300X_BYTES = 206_141_652_992  # what KFD reports for a 192 GiB MI300X
_NS = uuid.UUID("6f1c2a1e-9a53-4d0e-9a39-0a9b5e2d7c11")


@dataclass(frozen=True)
class DemoPod:
    namespace: str
    name: str
    annotations: Mapping[str, str]
    node: str | None = None  # None: pending

    @property
    def uid(self) -> str:
        return str(uuid.uuid5(_NS, f"{self.namespace}/{self.name}"))


def _slice(compute: str, memory: str, cls: str, limit: str | None = None, memory_limit: str | None = None,
           count: int = 1) -> dict[str, str]:
    out = {"gpuslice.io/vendor": "amd", "gpuslice.io/compute": compute, "gpuslice.io/memory": memory,
           "gpuslice.io/class": cls}
    if limit:
        out["gpuslice.io/computeLimit"] = limit
    if memory_limit:
        out["gpuslice.io/memoryLimit"] = memory_limit
    if count != 1:
        out["gpuslice.io/count"] = str(count)
    return out


_DECODE = _slice("250m", "60Gi", "memory-bound", limit="375m", memory_limit="64Gi")
_PREFILL = _slice("500m", "24Gi", "compute-bound", limit="625m")
_EMBED = _slice("125m", "8Gi", "compute-bound")
_RAG = _slice("125m", "40Gi", "memory-bound", memory_limit="48Gi")
_TP2 = _slice("750m", "150Gi", "memory-bound", count=2)

# Placed in this order; the engine picks GPUs and CUs (binpack packs them onto shared GPUs).
TENANTS: tuple[DemoPod, ...] = (
    DemoPod("serving", "llama-8b-decode-0", _DECODE, "mi300x-0"),
    DemoPod("serving", "llama-8b-prefill-0", _PREFILL, "mi300x-0"),
    DemoPod("serving", "llama-8b-decode-1", _DECODE, "mi300x-0"),
    DemoPod("serving", "embed-bge-0", _EMBED, "mi300x-0"),
    DemoPod("serving", "llama-8b-decode-2", _DECODE, "mi300x-1"),
    DemoPod("serving", "llama-8b-prefill-1", _PREFILL, "mi300x-1"),
    DemoPod("research", "llama-70b-tp2", _TP2, "mi300x-1"),
    DemoPod("serving", "rag-retriever-0", _RAG, "mi300x-2"),
    DemoPod("serving", "embed-bge-1", _EMBED, "mi300x-2"),
    DemoPod("batch", "vision-batch-0", _slice("375m", "32Gi", "compute-bound", limit="500m"), "mi300x-2"),
)

PENDING: tuple[DemoPod, ...] = (
    DemoPod("serving", "llama-8b-decode-3", _DECODE),
    DemoPod("serving", "llama-8b-prefill-2", _PREFILL),
    DemoPod("research", "llama-70b-tp2-b", _TP2),
)


def _gpu_id(node: str, index: int) -> str:
    # KFD unique_id is a 64-bit value; derive a stable one per (node, GPU) for the demo.
    return "0x" + hashlib.sha256(f"{node}/{index}".encode()).hexdigest()[:16]


def mi300x_inventory(node: str, gpus: int = 8) -> list[GpuInfo]:
    """An 8-GPU MI300X platform: two NUMA nodes of four GPUs, one XGMI hive, SPX/NPS1."""
    hive = "0x" + hashlib.sha256(f"hive/{node}".encode()).hexdigest()[:16]
    return [GpuInfo(index=i, id=_gpu_id(node, i), model="MI300X", computeUnits=MI300X_CUS, xcds=8,
                    shaderEngines=32, memoryBytes=MI300X_BYTES, healthy=True, numaNode=i * 2 // gpus,
                    hiveId=hive, renderMinor=128 + 8 * i, partition="SPX/NPS1")
            for i in range(gpus)]


def gpu_node(name: str, gpus: int = 8) -> NodeView:
    """A node whose agent has published its inventory annotation."""
    labels = {"kubernetes.io/hostname": name, "amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM"}
    return NodeView(name, labels=labels,
                    annotations={INVENTORY_ANNOTATION: format_inventory(mi300x_inventory(name, gpus))},
                    allocatable={"amd.com/gpu": str(gpus), "gpuslice.io/gpu-share": str(gpus * 8),
                                 "cpu": "192", "memory": "2Ti", "pods": "110"})


def fixture_node(name: str) -> NodeView:
    """Shaped like the recorded fixtures' nodes: `amd.com/gpu: 8`, no agent, no node-labeller labels."""
    return NodeView(name, labels={"kubernetes.io/hostname": name},
                    allocatable={"amd.com/gpu": "8", "cpu": "16", "memory": "64Gi", "pods": "110"})


def pod_view(pod: DemoPod) -> PodView:
    return PodView(uid=pod.uid, namespace=pod.namespace, name=pod.name, annotations=dict(pod.annotations),
                   cpu_millis=4000, memory_bytes=32 * 2**30)


def demo_cluster(policy: Policy | None = None) -> MemoryCluster:
    """A fresh demo cluster (every call builds a new one)."""
    cluster = MemoryCluster()
    for name in GPU_NODES:
        cluster.add_node(gpu_node(name))
    for name in FIXTURE_NODES:
        cluster.add_node(fixture_node(name))
    engine = Engine(cluster, PolicyStore(policy))
    engine.sync()
    for tenant in TENANTS:
        cluster.add_pod(pod_view(tenant))
        error = engine.bind(tenant.namespace, tenant.name, tenant.uid, tenant.node or "")
        if error:  # the table above is fixed; a failure here is a bug in the engine or the table
            raise RuntimeError(f"demo tenant {tenant.namespace}/{tenant.name}: {error}")
    for pod in PENDING:
        cluster.add_pod(pod_view(pod))
    return cluster


__all__ = ["FIXTURE_NODES", "GPU_NODES", "PENDING", "TENANTS", "DemoPod", "demo_cluster", "fixture_node",
           "gpu_node", "mi300x_inventory", "pod_view"]
