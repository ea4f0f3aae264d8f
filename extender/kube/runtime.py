"""The extender's engine on a live cluster: API client, watch-fed cluster view, nudger, leader gate."""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes.client import ApiClient

from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.engine.solver_placer import SolverPlacer
from extender.kube.client import api_client, core_api
from extender.kube.cluster import KubeCluster
from extender.kube.lease import LeaseGate
from extender.kube.nudge import Nudger
from extender.kube.watch import ClusterWatch


@dataclass
class KubeRuntime:
    engine: Engine
    cluster: KubeCluster
    watch: ClusterWatch
    nudger: Nudger | None

    def start(self) -> KubeRuntime:
        if self.nudger is not None:
            self.nudger.start()
        self.watch.start()
        return self

    def stop(self) -> None:
        self.watch.stop()
        if self.nudger is not None:
            self.nudger.stop()


def kube_runtime(policies: PolicyStore, kubeconfig: str | None = None, client: ApiClient | None = None,
                 lease: str | None = None, nudge: bool = True, scheduler_name: str | None = None) -> KubeRuntime:
    """Wire the pieces (not started). `lease` "namespace/name" gates binds on our scheduler leading."""
    client = client or api_client(kubeconfig)
    core = core_api(client)
    gate = None
    if lease:
        namespace, _, name = lease.partition("/")
        gate = LeaseGate(client, namespace, name)
    cluster = KubeCluster(core, leading=gate, prefix=lambda: policies.current.prefix)
    nudger = Nudger(core, wanted=cluster.has_waiting_pods) if nudge else None
    cluster.on_failed = nudger.poke if nudger else None
    engine = Engine(cluster, policies, bind_placer=SolverPlacer())  # CP-SAT picks GPUs and CUs at bind
    watch = ClusterWatch(core, cluster, engine, on_freed=nudger.poke if nudger else None,
                         scheduler_name=scheduler_name)
    return KubeRuntime(engine, cluster, watch, nudger)
