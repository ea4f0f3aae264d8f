"""VRAM limits: kernel enforcement through dmem where the node has it, and watching either way.

Each poll compares every pod's VRAM per GPU (from KFD) with its assignment's memoryLimitBytes for
that GPU (0 on a GPU it was not assigned). A breach is reported once until it clears, per
policy.memoryEnforcement.action: `monitor` = metric + Kubernetes Event; `evict` = that plus an
eviction through the Eviction API (so PodDisruptionBudgets apply).

dmem.max goes on the pod's cgroup, not the container's: the container's cgroup does not exist
yet when kubelet calls Allocate, while the pod's cgroup exists before any container starts and
bounds all of them. The agent writes it as soon as the pod's cgroup appears.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from extender.agent.cgroups import dmem_available, dmem_regions, find_pod_cgroup, vram_region, write_dmem_max
from extender.agent.metrics import AgentMetrics
from extender.agent.pods import ClusterActions, PodInfo
from extender.agent.topology import Topology
from extender.agent.vram import VramSample
from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, parse_assignment
from extender.core.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Breach:
    pod: str
    gpu: str
    used: int
    limit: int


def pod_assignment(pod: PodInfo) -> Assignment | None:
    text = pod.annotations.get(ASSIGNMENT_ANNOTATION)
    if text is None:
        return None
    try:
        return parse_assignment(text)
    except InputError:
        return None


class MemoryEnforcer:
    def __init__(self, root: str | Path, actions: ClusterActions, metrics: AgentMetrics,
                 action: str = "monitor") -> None:
        if action not in ("monitor", "evict"):
            raise ValueError(f"memoryEnforcement.action {action!r}: must be monitor or evict")
        self.root = Path(root)
        self.actions = actions
        self.metrics = metrics
        self.action = action
        self.dmem = dmem_available(root)
        self._reported: set[tuple[str, int]] = set()
        self._labels: set[tuple[str, str, str]] = set()
        metrics.dmem.set(1 if self.dmem else 0)

    def startup_message(self) -> str:
        if self.dmem:
            return "dmem cgroup controller present: VRAM limits are enforced by the kernel (dmem.max on pod cgroups)"
        return ("dmem cgroup controller absent (needs Linux 6.14+ with CONFIG_CGROUP_DMEM): VRAM limits are "
                "cooperative (GPUSLICE_MEMORY_LIMIT_BYTES / GPUSLICE_MEMORY_FRACTION) and watched by the agent")

    def apply_dmem(self, pods: list[PodInfo], topology: Topology,
                   assignments: Mapping[str, Assignment] | None = None) -> dict[str, dict[str, int]]:
        """Write dmem.max for every assigned, live pod whose cgroup exists. Returns {cgroup: limits} written."""
        if not self.dmem:
            return {}
        regions = dmem_regions(self.root)
        written: dict[str, dict[str, int]] = {}
        for pod in pods:
            if pod.phase not in ("Pending", "Running") or pod.deleting:
                continue
            assignment = (assignments or {}).get(pod.uid) or pod_assignment(pod)
            if assignment is None:
                continue
            cgroup = find_pod_cgroup(self.root, pod.uid)
            if cgroup is None:
                continue
            limits: dict[str, int] = defaultdict(int)
            for g in assignment.gpus:
                gpu = topology.by_id(g.id)
                region = vram_region(gpu.bdf, regions) if gpu and gpu.bdf else None
                if region is None:
                    log.warning("pod %s: no dmem region for GPU %s", pod.key, g.id)
                    continue
                limits[region] += g.memoryLimitBytes  # compute partitions of one GPU share its region
            try:
                if limits and write_dmem_max(self.root, cgroup, dict(limits)):
                    written[cgroup] = dict(limits)
                    self.metrics.dmem_writes.labels("ok").inc()
                    log.info("dmem.max for pod %s: %s", pod.key, dict(limits))
            except OSError as exc:
                self.metrics.dmem_writes.labels("error").inc()
                log.warning("pod %s: cannot write dmem.max on %s: %s", pod.key, cgroup, exc)
        return written

    def check(self, sample: VramSample, pods: list[PodInfo], topology: Topology,
              assignments: Mapping[str, Assignment] | None = None) -> list[Breach]:
        """Update per-pod metrics and act on new breaches. `assignments` (pod uid -> the assignment
        Allocate handed out) overrides the pod annotation."""
        by_uid = {p.uid: p for p in pods}
        labels_now: set[tuple[str, str, str]] = set()
        breaches: list[Breach] = []
        over_now: set[tuple[str, int]] = set()
        for (uid, gpu_id), used in sorted(sample.by_pod().items()):
            pod = by_uid.get(uid)
            assignment = (assignments or {}).get(uid) or (pod_assignment(pod) if pod else None)
            if pod is None or assignment is None:
                continue  # not a gpuslice pod: another device plugin's business
            gpu = topology.by_gpu_id(gpu_id)
            gpu_name = gpu.info.id if gpu else f"kfd-gpu-{gpu_id}"
            limit = next((g.memoryLimitBytes for g in assignment.gpus if gpu and g.id == gpu.info.id), 0)
            labels = (pod.namespace, pod.name, gpu_name)
            labels_now.add(labels)
            self.metrics.pod_vram.labels(*labels).set(used)
            self.metrics.pod_vram_limit.labels(*labels).set(limit)
            if used <= limit:
                continue
            over_now.add((uid, gpu_id))
            if (uid, gpu_id) in self._reported:
                continue
            breach = Breach(pod.key, gpu_name, used, limit)
            breaches.append(breach)
            self._act(pod, breach)
        for labels in self._labels - labels_now:
            self.metrics.pod_vram.remove(*labels)
            self.metrics.pod_vram_limit.remove(*labels)
        self._labels = labels_now
        self._reported = over_now
        return breaches

    def _act(self, pod: PodInfo, breach: Breach) -> None:
        what = "not assigned to it" if breach.limit == 0 else f"limit {breach.limit} bytes"
        message = f"uses {breach.used} bytes of VRAM on GPU {breach.gpu} ({what})"
        log.warning("pod %s %s; action %s", pod.key, message, self.action)
        self.metrics.breaches.labels(self.action).inc()
        try:
            self.actions.event(pod, "GpuMemoryLimitExceeded", message)
            if self.action == "evict":
                self.actions.evict(pod, message)
        except Exception as exc:  # the API may be down; the metric already records the breach
            log.error("acting on pod %s breach failed: %s", pod.key, exc)
