"""An engine synced over a memory cluster of alike GPU nodes, as the engine tests build it."""

from __future__ import annotations

from extender.core.policy import Policy
from extender.engine.cluster import MemoryCluster, NodeView
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine


def engine_on(policy: Policy, names: list[str], gpus: int, cpu: str = "64", memory: str = "256Gi") -> Engine:
    cluster = MemoryCluster()
    for name in names:
        cluster.add_node(NodeView(name, allocatable={"amd.com/gpu": str(gpus), "cpu": cpu, "memory": memory}))
    engine = Engine(cluster, PolicyStore(policy))
    engine.sync()
    return engine
