"""What a live cluster holds, for planning: each node's GPUs and the tenants already bound there.

Read through the engine's own rebuild (Engine.sync over the listed Nodes and Pods), so a plan sees the
cluster exactly as the extender's ledger would: the same inventory (annotation, or the AMD
node-labeller fallback), the same skipped nodes, the same rule for which assignments count (bound,
not terminal, naming the node the pod is bound to).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from extender.core.inventory import GpuInfo
from extender.core.policy import Policy
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.planner import Existing
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine


@dataclass
class Occupancy:
    nodes: dict[str, list[GpuInfo]]  # nodes with at least one GPU
    existing: list[Existing]  # tenants bound to those nodes, oldest first
    skipped: dict[str, str] = field(default_factory=dict)  # node -> why its inventory is unreadable
    problems: list[str] = field(default_factory=list)  # assignments that were not counted, and why
    without_gpus: int = 0  # nodes with no GPUs at all (not planned on)

    def to_dict(self) -> dict[str, object]:
        return {"nodes": sorted(self.nodes), "existingTenants": len(self.existing),
                "skippedNodes": dict(sorted(self.skipped.items())), "nodesWithoutGpus": self.without_gpus,
                "problems": self.problems}


def synced_engine(nodes: Iterable[NodeView], pods: Iterable[PodView], policy: Policy) -> tuple[Engine, list[str]]:
    """An engine whose ledger is rebuilt from a snapshot of the cluster's objects, and the rebuild's problems."""
    cluster = MemoryCluster()
    for node in nodes:
        cluster.add_node(node)
    for pod in pods:
        cluster.add_pod(pod)
    engine = Engine(cluster, PolicyStore(policy))
    return engine, engine.sync()


def occupancy(nodes: Iterable[NodeView], pods: Iterable[PodView], policy: Policy) -> Occupancy:
    engine, problems = synced_engine(nodes, pods, policy)
    states = [s for s in engine.ledger.nodes() if s.gpus]
    existing = sorted(((e.pod, e.assignment, e.compute_millis) for s in states for e in s.pods.values()),
                      key=lambda x: (x[1].assignedAt, x[0].uid))
    return Occupancy(nodes={s.name: [g.info for g in s.gpus] for s in states}, existing=existing,
                     skipped=dict(engine.stats.skipped_nodes), problems=problems,
                     without_gpus=len(engine.ledger.nodes()) - len(states))
