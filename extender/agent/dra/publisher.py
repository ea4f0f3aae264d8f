"""Keeps the node's ResourceSlice equal to its GPUs: created once, replaced when a device changes
(a GPU turned unhealthy or vanished, the burst fraction changed), with the pool generation bumped so
kube-scheduler drops slices of older generations. Called every agent poll; writes only on change."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from extender.agent.dra.slices import resource_slice, slice_name
from extender.agent.topology import Topology

log = logging.getLogger(__name__)


class SliceStore(Protocol):
    def get_slice(self, name: str) -> dict[str, Any] | None: ...
    def create_slice(self, body: dict[str, Any]) -> None: ...
    def replace_slice(self, name: str, body: dict[str, Any]) -> None: ...


class SlicePublisher:
    def __init__(self, store: SliceStore, node: str, root: str | Path = "/") -> None:
        self.store = store
        self.node = node
        self.root = root
        self.published: list[dict[str, Any]] | None = None  # devices last written (or found equal)
        self.generation = 0
        self.writes = 0

    def publish(self, topology: Topology, shared_fraction: float) -> bool:
        """Write the slice if its devices differ from what the API holds; True when it wrote."""
        body = resource_slice(self.node, topology, shared_fraction, self.generation, self.root)
        devices = body["spec"]["devices"]
        if devices == self.published:
            return False
        name = slice_name(self.node)
        current = self.store.get_slice(name)
        if current is not None:
            spec = current.get("spec") or {}
            self.generation = int((spec.get("pool") or {}).get("generation", 0))
            if spec.get("devices") == devices and spec.get("nodeName") == self.node:
                self.published = devices
                return False
        self.generation += 1
        body["spec"]["pool"]["generation"] = self.generation
        if current is None:
            self.store.create_slice(body)
        else:
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            self.store.replace_slice(name, body)
        self.published = devices
        self.writes += 1
        log.info("published ResourceSlice %s generation %d: %d GPUs (%d healthy)", name, self.generation,
                 len(devices), sum(g.info.healthy for g in topology.gpus))
        return True
