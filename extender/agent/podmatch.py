"""Which pod an Allocate call is for.

kubelet's Allocate names only the share devices it picked, never the pod. The rule, applied under
one lock so no two Allocate calls can take the same pod:

1. Candidates are (pod, container) pairs where the pod is bound to this node, has a parseable
   `gpuslice.io/assignment` naming this node, is Pending with no container started, is not being
   deleted, the container requests exactly as many `gpuslice.io/gpu-share` devices as kubelet
   passed, and that container has not been claimed yet (claims are kept in memory and written to the
   pod as `gpuslice.io/allocated`, so a restarted agent does not hand a pod out twice).
2. kubelet admits pods one at a time, oldest `creationTimestamp` first, so the earliest candidate
   (creationTimestamp, then the assignment's assignedAt) is the pod being started.
3. If several candidates tie on both and their slices differ (GPU count, CU counts, memory,
   class), the call fails loudly naming them: guessing could give a pod another pod's slice size.
   Tied candidates with interchangeable slices are taken in (namespace, name) order; each still
   gets a whole, exclusive slice of the size it asked for.
4. A repeated call with the same device ids (kubelet retrying) returns the same answer.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from extender.agent.allocation import ContainerAllocation, allocation_for
from extender.agent.topology import Topology
from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, parse_assignment
from extender.core.errors import GpusliceError, InputError

log = logging.getLogger(__name__)

RESOURCE = "gpuslice.io/gpu-share"
ALLOCATED_ANNOTATION = "gpuslice.io/allocated"


@dataclass(frozen=True)
class PodInfo:
    uid: str
    namespace: str
    name: str
    node: str | None
    phase: str = "Pending"
    created: str = ""  # RFC 3339; sorts chronologically as text
    annotations: Mapping[str, str] = field(default_factory=dict)
    share_requests: Mapping[str, int] = field(default_factory=dict)  # container -> gpu-share count
    started: bool = False  # some container is running or has run
    deleting: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def allocated_containers(self) -> set[str]:
        try:
            data = json.loads(self.annotations.get(ALLOCATED_ANNOTATION, "{}"))
        except json.JSONDecodeError:
            return set()
        return set(data) if isinstance(data, dict) else set()


class PodSource(Protocol):
    def pods_on_node(self, node: str) -> list[PodInfo]: ...

    def mark_allocated(self, pod: PodInfo, container: str, device_ids: list[str]) -> None:
        """Record on the pod that `container` got its devices (best effort; errors are logged)."""
        ...


class MemoryPodSource:
    """Pods held in memory: the tests' cluster."""

    def __init__(self, pods: list[PodInfo] | None = None) -> None:
        self.pods: dict[str, PodInfo] = {p.uid: p for p in pods or []}
        self.marks: list[tuple[str, str, list[str]]] = []

    def pods_on_node(self, node: str) -> list[PodInfo]:
        return [p for p in self.pods.values() if p.node == node]

    def mark_allocated(self, pod: PodInfo, container: str, device_ids: list[str]) -> None:
        self.marks.append((pod.uid, container, list(device_ids)))


class AllocationError(GpusliceError):
    """No pod, or no single pod, fits an Allocate call; kubelet fails the container start with this."""


@dataclass(frozen=True)
class Claim:
    pod: PodInfo
    container: str
    assignment: Assignment
    allocation: ContainerAllocation
    device_ids: frozenset[str]


def _shape(a: Assignment) -> tuple[object, ...]:
    return (a.workload_class, tuple(sorted((len(g.cus), len(g.burstCus), g.memoryBytes, g.memoryLimitBytes)
                                           for g in a.gpus)))


class PodMatcher:
    def __init__(self, node: str, pods: PodSource, topology: Callable[[], Topology]) -> None:
        self.node = node
        self.pods = pods
        self.topology = topology
        self._lock = threading.Lock()
        self._claims: dict[tuple[str, str], Claim] = {}
        self._by_devices: dict[frozenset[str], Claim] = {}

    def claims(self) -> list[Claim]:
        with self._lock:
            return list(self._claims.values())

    def forget_missing(self, live_uids: set[str]) -> None:
        """Drop claims of pods that no longer exist."""
        with self._lock:
            for key in [k for k in self._claims if k[0] not in live_uids]:
                claim = self._claims.pop(key)
                self._by_devices.pop(claim.device_ids, None)

    def _candidates(self, count: int) -> tuple[list[tuple[PodInfo, str, Assignment]], list[str]]:
        out: list[tuple[PodInfo, str, Assignment]] = []
        notes: list[str] = []
        for pod in self.pods.pods_on_node(self.node):
            if ASSIGNMENT_ANNOTATION not in pod.annotations or pod.phase != "Pending" or pod.started or pod.deleting:
                continue
            try:
                assignment = parse_assignment(pod.annotations[ASSIGNMENT_ANNOTATION])
            except InputError as exc:
                notes.append(f"{pod.key}: unreadable assignment ({exc})")
                continue
            if assignment.node != self.node:
                notes.append(f"{pod.key}: assigned to node {assignment.node}, not {self.node}")
                continue
            done = pod.allocated_containers()
            for container, n in sorted(pod.share_requests.items()):
                if n == count and (pod.uid, container) not in self._claims and container not in done:
                    out.append((pod, container, assignment))
        return out, notes

    def allocate(self, device_ids: list[str]) -> Claim:
        key = frozenset(device_ids)
        with self._lock:
            if key in self._by_devices:
                return self._by_devices[key]
            candidates, notes = self._candidates(len(device_ids))
            if not candidates:
                detail = f" ({'; '.join(notes)})" if notes else ""
                raise AllocationError(f"no pending pod on node {self.node} with a gpuslice assignment requests "
                                      f"{len(device_ids)} {RESOURCE}{detail}")
            candidates.sort(key=lambda c: (c[0].created, c[2].assignedAt, c[0].namespace, c[0].name, c[1]))
            first = candidates[0]
            tied = [c for c in candidates if (c[0].created, c[2].assignedAt) == (first[0].created, first[2].assignedAt)]
            if len({_shape(c[2]) for c in tied}) > 1:
                names = ", ".join(f"{c[0].key}[{c[1]}]" for c in tied)
                raise AllocationError(f"ambiguous Allocate for {len(device_ids)} {RESOURCE}: pods {names} started "
                                      "in the same second with different slices; refusing to guess")
            pod, container, assignment = first
            try:
                allocation = allocation_for(assignment, self.topology())
            except InputError as exc:
                raise AllocationError(f"pod {pod.key}: {exc}") from None
            claim = Claim(pod, container, assignment, allocation, key)
            self._claims[(pod.uid, container)] = claim
            self._by_devices[key] = claim
        log.info("Allocate %s -> pod %s container %s", sorted(device_ids), pod.key, container)
        try:
            self.pods.mark_allocated(pod, container, sorted(device_ids))
        except Exception as exc:  # the in-memory claim still protects this agent's lifetime
            log.warning("could not mark pod %s allocated: %s", pod.key, exc)
        return claim
