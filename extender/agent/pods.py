"""The pods on the agent's node as it sees them, and what it may do to them (events, evictions).

Everything in the agent talks to these interfaces; extender/agent/kube.py implements them over the
Kubernetes API and the Memory* classes here are the tests' cluster."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

RESOURCE = "gpuslice.io/gpu-share"


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


class PodSource(Protocol):
    def pods_on_node(self, node: str) -> list[PodInfo]: ...

    def get_pod(self, namespace: str, name: str) -> PodInfo | None:
        """The pod as the API server has it now (not a cache), or None when there is none."""
        ...


class ClusterActions(Protocol):
    def event(self, pod: PodInfo, reason: str, message: str, kind: str = "Warning") -> None: ...

    def evict(self, pod: PodInfo, reason: str) -> None: ...


class MemoryPodSource:
    """Pods held in memory: the tests' cluster."""

    def __init__(self, pods: list[PodInfo] | None = None) -> None:
        self.pods: dict[str, PodInfo] = {p.uid: p for p in pods or []}

    def pods_on_node(self, node: str) -> list[PodInfo]:
        return [p for p in self.pods.values() if p.node == node]

    def get_pod(self, namespace: str, name: str) -> PodInfo | None:
        return next((p for p in self.pods.values() if (p.namespace, p.name) == (namespace, name)), None)


class MemoryActions:
    """Records events and evictions: the tests' cluster."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []
        self.evictions: list[tuple[str, str]] = []

    def event(self, pod: PodInfo, reason: str, message: str, kind: str = "Warning") -> None:
        self.events.append((pod.key, reason, message, kind))

    def evict(self, pod: PodInfo, reason: str) -> None:
        self.evictions.append((pod.key, reason))
