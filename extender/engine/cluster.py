"""The cluster as the engine sees it: plain views of Pods and Nodes, and the interface that records
a bind. The in-memory implementation backs the demo and the simulator; the Kubernetes one lives in
`extender.kube`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import Protocol, runtime_checkable

import numpy as np

from extender.core.errors import GpusliceError, TemporaryError
from extender.core.quantity import parse_bytes, parse_millis

TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)  # one per pod in the watch cache: no __dict__ each
class PodView:
    uid: str
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_name: str | None = None
    phase: str = "Pending"
    deleting: bool = False
    resource_version: str | None = None
    cpu_millis: int = 0
    memory_bytes: int = 0
    priority: int = 0
    scheduler_name: str | None = None
    claims: tuple[str, ...] = ()  # its ResourceClaims' names (engine/dra_requests.py)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    allocatable: Mapping[str, str] = field(default_factory=dict)
    unschedulable: bool = False
    resource_version: str | None = None


class BindError(GpusliceError):
    """The cluster refused to record a bind. `temporary` tells whether a retry may succeed;
    `outcome_unknown` that the cluster may have recorded it anyway (the API did not answer), so the
    reservation must stay until the watch shows the pod bound or its TTL runs out."""

    def __init__(self, message: str, temporary: bool = False, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.outcome_unknown = outcome_unknown


class Cluster(Protocol):
    """What the engine needs from a cluster."""

    def get_pod(self, namespace: str, name: str) -> PodView | None: ...

    def pod_by_uid(self, uid: str) -> PodView | None:
        """The pod with this UID if the cluster view holds it already (no API call)."""
        ...

    def list_nodes(self) -> list[NodeView]: ...

    def list_pods(self) -> list[PodView]: ...

    def bind_pod(self, pod: PodView, node: str, annotations: Mapping[str, str]) -> None:
        """Bind the pod to `node` with `annotations` written onto it; all or nothing. Raises BindError."""
        ...


@runtime_checkable
class HostRoom(Protocol):
    """A cluster that knows each node's host CPU and memory left (allocatable less its pods' requests),
    as kube-scheduler's NodeResourcesFit counts them; fragmentation scoring uses it when offered."""

    def host_free(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(CPU millis, memory bytes) free per named node, in order."""
        ...


class ClusterStore:
    """Node views by name and pod views by UID behind one lock: what a `Cluster` answers reads from
    (the memory cluster's truth, the watch's cache in the Kubernetes one)."""

    def __init__(self) -> None:
        self._nodes: dict[str, NodeView] = {}
        self._pods: dict[str, PodView] = {}  # uid -> pod
        self._lock = threading.Lock()
        # Host room, kept as the views change (host_free is asked about thousands of nodes per pod): each
        # node's allocatable CPU and memory, parsed once, and the requests of the live pods bound to it.
        self._allocatable: dict[str, tuple[int, int]] = {}
        self._requested: dict[str, tuple[int, int]] = {}
        self._cpu_room: dict[str, int] = {}  # the two less each other, per name either knows
        self._mem_room: dict[str, int] = {}
        # The last long list of names asked about, its answer, and the names whose room changed since: filter asks
        # about the same thousands of nodes per pod, and looking each up again cost a quarter of its CPU.
        self._asked: _Asked | None = None

    # --- writes: subclasses change the views only through these, holding _lock -----------------
    def _store_node(self, view: NodeView) -> NodeView | None:
        old = self._nodes.get(view.name)
        self._nodes[view.name] = view
        self._allocatable[view.name] = (_quantity(view.allocatable.get("cpu"), parse_millis),
                                        _quantity(view.allocatable.get("memory"), parse_bytes))
        self._room(view.name)
        return old

    def _drop_node(self, name: str) -> NodeView | None:
        self._allocatable.pop(name, None)
        self._room(name)
        return self._nodes.pop(name, None)

    def _store_nodes(self, views: list[NodeView]) -> None:
        for name in list(self._nodes):
            self._drop_node(name)
        for view in views:
            self._store_node(view)

    def _store_pod(self, view: PodView) -> PodView | None:
        old = self._pods.get(view.uid)
        self._pods[view.uid] = view
        self._count(old, -1)
        self._count(view, 1)
        return old

    def _drop_pod(self, uid: str) -> PodView | None:
        old = self._pods.pop(uid, None)
        self._count(old, -1)
        return old

    def _store_pods(self, views: list[PodView]) -> None:
        for uid in list(self._pods):
            self._drop_pod(uid)
        for view in views:
            self._store_pod(view)

    def _count(self, pod: PodView | None, sign: int) -> None:
        """Add (sign 1) or take away (-1) a pod's host requests on its node, if it holds them (bound, live)."""
        if pod is None or not pod.node_name or pod.terminal or not (pod.cpu_millis or pod.memory_bytes):
            return
        cpu, mem = self._requested.get(pod.node_name, (0, 0))
        cpu, mem = cpu + sign * pod.cpu_millis, mem + sign * pod.memory_bytes
        if cpu or mem:
            self._requested[pod.node_name] = (cpu, mem)
        else:
            del self._requested[pod.node_name]
        self._room(pod.node_name)

    def _room(self, name: str) -> None:
        asked = self._asked
        if asked is not None:
            asked.changed.add(name)
            if len(asked.changed) > len(asked.names) // 8:  # looking them all up again is as cheap
                self._asked = None
        alloc, used = self._allocatable.get(name), self._requested.get(name)
        if alloc is None and used is None:
            self._cpu_room.pop(name, None)
            self._mem_room.pop(name, None)
            return
        alloc, used = alloc or (0, 0), used or (0, 0)
        self._cpu_room[name], self._mem_room[name] = alloc[0] - used[0], alloc[1] - used[1]

    # --- reads ----------------------------------------------------------------------------------
    def get_node(self, name: str) -> NodeView | None:
        return self._nodes.get(name)

    def pod_by_uid(self, uid: str) -> PodView | None:
        return self._pods.get(uid)

    def list_nodes(self) -> list[NodeView]:
        with self._lock:
            return list(self._nodes.values())

    def list_pods(self) -> list[PodView]:
        with self._lock:
            return list(self._pods.values())

    def host_free(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """HostRoom from the stored views: allocatable CPU and memory less the requests of the live pods
        bound to each node (kept as the views change, not worked out from every pod per call)."""
        n = len(names)
        with self._lock:
            if n < REMEMBER_ASKED:
                return self._looked_up(names)
            key = tuple(names)
            asked = self._asked
            if asked is None or asked.names != key:
                asked = self._asked = _Asked(key, *self._looked_up(names))
            elif asked.changed:
                asked.update(self._cpu_room, self._mem_room)
            return asked.cpu.copy(), asked.mem.copy()

    def _looked_up(self, names: list[str] | tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        n = len(names)
        return (np.fromiter(map(self._cpu_room.get, names, repeat(0)), np.int64, n),
                np.fromiter(map(self._mem_room.get, names, repeat(0)), np.int64, n))


REMEMBER_ASKED = 64  # shorter lists of names (bind asks about one node) are looked up, not remembered


@dataclass
class _Asked:
    """ClusterStore.host_free's answer for one list of names, brought up to date name by name."""

    names: tuple[str, ...]
    cpu: np.ndarray
    mem: np.ndarray
    changed: set[str] = field(default_factory=set)
    at: dict[str, list[int]] | None = None  # name -> its positions in `names`

    def update(self, cpu_room: dict[str, int], mem_room: dict[str, int]) -> None:
        if self.at is None:
            self.at = {}
            for i, name in enumerate(self.names):
                self.at.setdefault(name, []).append(i)
        for name in self.changed:
            for i in self.at.get(name, ()):
                self.cpu[i], self.mem[i] = cpu_room.get(name, 0), mem_room.get(name, 0)
        self.changed.clear()


def _quantity(text: str | None, parse: Callable[[object], int]) -> int:
    """A node's allocatable quantity; an absent or unreadable one counts as unlimited (no host limit known)."""
    if text is None:
        return UNLIMITED
    try:
        return parse(text)
    except ValueError:
        return UNLIMITED


UNLIMITED = 2**62


class MemoryCluster(ClusterStore):
    """An in-memory cluster: the demo's and the simulator's source of truth."""

    def __init__(self) -> None:
        super().__init__()
        self.binds = 0

    def add_node(self, node: NodeView) -> None:
        with self._lock:
            self._store_node(node)

    def remove_node(self, name: str) -> None:
        with self._lock:
            self._drop_node(name)

    def add_pod(self, pod: PodView) -> None:
        with self._lock:
            self._store_pod(pod)

    def remove_pod(self, uid: str) -> PodView | None:
        with self._lock:
            return self._drop_pod(uid)

    def get_pod(self, namespace: str, name: str) -> PodView | None:
        with self._lock:
            for pod in self._pods.values():
                if pod.namespace == namespace and pod.name == name:
                    return pod
        return None

    def bind_pod(self, pod: PodView, node: str, annotations: Mapping[str, str]) -> None:
        with self._lock:
            if node not in self._nodes:
                raise BindError(f"node {node} not found")
            current = self._pods.get(pod.uid)
            if current is not None and current.node_name and current.node_name != node:
                raise BindError(f"pod {pod.key} is already bound to {current.node_name}")
            base = current or pod
            self._store_pod(replace(base, annotations={**base.annotations, **annotations},
                                    node_name=node, phase="Running"))
            self.binds += 1


__all__ = ["BindError", "Cluster", "MemoryCluster", "NodeView", "PodView", "TemporaryError"]
