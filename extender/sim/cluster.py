"""The simulated cluster: the engine's MemoryCluster plus what kube-scheduler itself tracks — host CPU
and memory requested per node — and a numpy mirror of every GPU's free CUs and memory, so the
simulator can screen nodes the way kube-scheduler's NodeResourcesFit does before calling the
extender (which, like kube-scheduler, only ever sees nodes that passed its own filters)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from extender.core.inventory import LABEL_PRODUCT, RESOURCE_AMD_GPU
from extender.core.ledger import NodeState
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.sim.workload import SimNode


class SimCluster(MemoryCluster):
    def __init__(self, nodes: list[SimNode], models: list[str]) -> None:
        super().__init__()
        self.sim_nodes = nodes
        self.index = {n.name: i for i, n in enumerate(nodes)}
        self.models = models  # model id -> name
        model_id = {m: i for i, m in enumerate(models)}
        self.by_key: dict[tuple[str, str], PodView] = {}
        n = len(nodes)
        width = max([x.gpus for x in nodes] + [1])
        self.cpu_cap = np.array([x.cpu_millis for x in nodes], dtype=np.int64)
        self.mem_cap = np.array([x.memory_bytes for x in nodes], dtype=np.int64)
        self.cpu_free = self.cpu_cap.copy()
        self.mem_free = self.mem_cap.copy()
        self.model = np.array([model_id[x.model] if x.gpus else -1 for x in nodes], dtype=np.int64)
        self.pods_on = np.zeros(n, dtype=np.int64)
        # nodes with the same GPUs and no GPU tenant have identical ledger states
        kinds: dict[tuple, int] = {}
        self.kind = np.array([kinds.setdefault((x.model, x.gpus), len(kinds)) for x in nodes], dtype=np.int64)
        self.version = np.zeros(n, dtype=np.int64)  # bumped whenever a node's ledger state changes
        # per GPU: free guaranteeable CUs in whole atoms (-1 = no such GPU or unhealthy), whether it has no
        # tenant, free memory
        self.gpu_free = np.full((n, width), -1, dtype=np.int64)
        self.gpu_empty = np.zeros((n, width), dtype=bool)
        self.gpu_mem = np.zeros((n, width), dtype=np.int64)
        for x in nodes:
            alloc = {"cpu": f"{x.cpu_millis}m", "memory": str(x.memory_bytes)}
            labels = {}
            if x.gpus:
                alloc[RESOURCE_AMD_GPU] = str(x.gpus)
                labels = {LABEL_PRODUCT: x.model, "gpuslice.io/sim-model": x.model}
            self.add_node(NodeView(x.name, labels=labels, allocatable=alloc))

    # fast lookups the engine uses for pods that pass through (MemoryCluster scans every pod)
    def add_pod(self, pod: PodView) -> None:
        super().add_pod(pod)
        self.by_key[(pod.namespace, pod.name)] = pod

    def get_pod(self, namespace: str, name: str) -> PodView | None:
        return self.by_key.get((namespace, name))

    def bind_pod(self, pod: PodView, node: str, annotations: Mapping[str, str]) -> None:
        super().bind_pod(pod, node, annotations)
        i = self.index[node]
        self.cpu_free[i] -= pod.cpu_millis
        self.mem_free[i] -= pod.memory_bytes
        self.pods_on[i] += 1
        self.version[i] += 1  # host room changed (it enters fragmentation scores)
        self.by_key[(pod.namespace, pod.name)] = self._pods[pod.uid]

    def remove_pod(self, uid: str) -> PodView | None:
        pod = super().remove_pod(uid)
        if pod is None:
            return None
        self.by_key.pop((pod.namespace, pod.name), None)
        if pod.node_name:
            i = self.index[pod.node_name]
            self.cpu_free[i] += pod.cpu_millis
            self.mem_free[i] += pod.memory_bytes
            self.pods_on[i] -= 1
            self.version[i] += 1
        return pod

    def host_free(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Host CPU and memory left per node (engine.cluster.HostRoom)."""
        idx = np.fromiter((self.index[n] for n in names), np.int64, len(names))
        return self.cpu_free[idx], self.mem_free[idx]

    def gpu_idle(self) -> np.ndarray:
        """Nodes without any GPU tenant."""
        return ~np.any((self.gpu_free >= 0) & ~self.gpu_empty, axis=1)

    def refresh(self, state: NodeState) -> None:
        """Mirror one node's ledger state into the GPU arrays."""
        i = self.index[state.name]
        self.version[i] += 1
        for j, g in enumerate(state.gpus):
            self.gpu_free[i, j] = g.free_atom_cus if g.info.healthy else -1  # the fit rule's count (core/fit.py)
            self.gpu_empty[i, j] = g.info.healthy and not g.slices
            self.gpu_mem[i, j] = g.memory_free
