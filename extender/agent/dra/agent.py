"""The agent's DRA side: its ResourceSlice, the kubelet DRA plugin and the prepared-claim checkpoint,
driven by the agent's poll (which re-reads the topology) and stopped with it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from extender.agent.cdi import DEFAULT_SPEC_DIR
from extender.agent.dra.plugin import DEFAULT_PLUGIN_DIR, DEFAULT_REGISTRY_DIR, DraPlugin
from extender.agent.dra.prepare import ClaimSource, ClaimStatusWriter, Preparer, extender_tenants
from extender.agent.dra.publisher import SlicePublisher, SliceStore
from extender.agent.pods import PodSource
from extender.agent.topology import Topology
from extender.core.policy import Policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DraConfig:
    registry_dir: str = DEFAULT_REGISTRY_DIR
    plugin_dir: str = DEFAULT_PLUGIN_DIR  # the DRA socket and the checkpoint live here
    cdi_dir: str = DEFAULT_SPEC_DIR


class DraAgent:
    def __init__(self, node: str, root: str, cfg: DraConfig, topology: Callable[[], Topology],
                 policy: Callable[[], Policy], slices: SliceStore, claims: ClaimSource,
                 status: ClaimStatusWriter | None = None, pods: PodSource | None = None) -> None:
        self.policy = policy
        self.publisher = SlicePublisher(slices, node, root)
        held = (lambda: extender_tenants(pods.pods_on_node(node), node)) if pods is not None else None
        self.preparer = Preparer(node, topology, claims, policy, Path(cfg.plugin_dir), cfg.cdi_dir, status, held)
        self.plugin = DraPlugin(self.preparer, cfg.registry_dir, cfg.plugin_dir)

    def poll(self, topology: Topology) -> None:
        """Keep the slice equal to the GPUs and the plugin sockets served. A failed publish is retried
        next poll; it does not stop the plugin from serving claims already allocated. The first poll
        restores the checkpoint before the plugin serves kubelet."""
        if not self.preparer.restored:
            self.preparer.restore()
        try:
            self.publisher.publish(topology, self.policy().burst.sharedFraction)
        except Exception as exc:
            log.error("cannot publish the ResourceSlice: %s", exc)
        self.plugin.check()
        self.preparer.publish_pending()

    def ready(self) -> bool:
        return self.publisher.published is not None and self.plugin.registration.registered.is_set()

    def stop(self) -> None:
        self.plugin.stop()
