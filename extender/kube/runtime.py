"""The extender's engine on a live cluster: API client, watch-fed cluster view, nudger, leader gate."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from kubernetes.client import ApiClient

from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.engine.solver_placer import SolverPlacer
from extender.kube.claims import ClaimWatch
from extender.kube.client import api_client, core_api
from extender.kube.cluster import KubeCluster
from extender.kube.lease import LeaseGate
from extender.kube.nudge import Nudger
from extender.kube.shadow_claims import ShadowClaims
from extender.kube.watch import ClusterWatch

log = logging.getLogger(__name__)


EXPIRE_EVERY = 1.0  # seconds between sweeps for reservations whose bind never completed


@dataclass
class KubeRuntime:
    engine: Engine
    cluster: KubeCluster
    watch: ClusterWatch
    nudger: Nudger | None
    claims: ClaimWatch | None = None  # DRA tenants (ResourceClaims of gpu.gpuslice.io)
    shadows: ShadowClaims | None = None  # extender pods shown to kube-scheduler's DRA allocator
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> KubeRuntime:
        if self.nudger is not None:
            self.nudger.start()
        self.watch.start()
        if self.claims is not None:
            self.claims.start()
        if self.shadows is not None:
            self.shadows.start()
        # filter sweeps too, but while every waiting pod sits in kube-scheduler's unschedulable pool no
        # filter comes; the capacity a lapsed reservation held must still be freed and announced.
        threading.Thread(target=self._expire_loop, name="expire-reservations", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.watch.stop()
        if self.claims is not None:
            self.claims.stop()
        if self.shadows is not None:
            self.shadows.stop()
        if self.nudger is not None:
            self.nudger.stop()

    def _expire_loop(self) -> None:
        while not self._stop.wait(EXPIRE_EVERY):
            try:
                self.engine.expire_reservations()
            except Exception:  # never let a sweep kill the loop
                log.exception("expiring reservations failed")


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
    poke = nudger.poke if nudger else None  # capacity came free on a node: retry waiting pods
    cluster.on_failed = poke
    # The solver's objective picks GPUs and CUs at bind; pods of another scheduler are refused (the watch
    # follows only `scheduler_name`'s pods, so nothing would ever free theirs).
    engine = Engine(cluster, policies, bind_placer=SolverPlacer(), scheduler_name=scheduler_name)
    engine.on_freed = poke
    shadows = ShadowClaims(client, cluster.list_own_pods, lambda: engine.synced, leading=gate)
    cluster.on_bound = shadows.bound

    def freed(node: str) -> None:
        shadows.freed(node)
        if poke is not None:
            poke(node)

    watch = ClusterWatch(core, cluster, engine, on_freed=freed, scheduler_name=scheduler_name)
    claims = ClaimWatch(client, cluster, engine, watch._feed, on_freed=poke)  # under the watch's lock
    return KubeRuntime(engine, cluster, watch, nudger, claims, shadows)
