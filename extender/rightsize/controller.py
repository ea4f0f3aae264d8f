"""The right-sizing loop: for each SLA workload, observe (Prometheus), decide (core.rightsizing),
and — with apply — patch its pod template, record the change on it, and emit an Event.

A workload qualifies when its pod template carries `<prefix>/profile` and `<prefix>/target-rps` for
one GPU per pod. The controller rewrites `target-rps` (so the extender sizes the new slice by its own
rule), `memory`, and the replica count; a rolling update re-creates the pods at the new size (CU
masks are fixed at container start). It waits while a rollout is in progress or a
PodDisruptionBudget of the pods allows no disruption.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from string import Template

from kubernetes.client import ApiException

from extender.core.errors import GpusliceError, SliceRequestError
from extender.core.policy import GpuClass, Policy
from extender.core.requests import parse_slice_request
from extender.core.rightsizing import (
    GIB,
    STATE_KEY,
    Change,
    Decision,
    Fleet,
    Ladder,
    Observation,
    Record,
    decide,
    read_record,
    repack_hold,
    rfc3339,
    sla_ladder,
    window_peak,
)
from extender.engine.cluster import NodeView, PodView
from extender.engine.occupancy import synced_engine
from extender.engine.repack import co_tenants, moves_beside_tenants, replacement_landings
from extender.engine.scheduler import Engine
from extender.rightsize.metrics import RightsizeMetrics
from extender.rightsize.prometheus import Prometheus, PrometheusError
from extender.rightsize.workloads import Workload, Workloads, selects

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    workload: str
    decision: Decision | None
    applied: bool
    note: str


Views = tuple[list[NodeView], list[PodView]]


class RightSizer:
    """`cluster` lists every Node and bound Pod as the extender sees them (`kube.snapshot.list_views`); it
    is read, and an engine synced over it, at most once per pass, and only when a fleet may repack.
    Without it nothing is repacked."""

    def __init__(self, policy: Callable[[], Policy], workloads: Workloads, prometheus: Prometheus,
                 metrics: RightsizeMetrics, apply: bool = False, namespace: str | None = None,
                 clock: Callable[[], float] = time.time, cluster: Callable[[], Views] | None = None) -> None:
        self.policy = policy
        self.workloads = workloads
        self.prometheus = prometheus
        self.metrics = metrics
        self.apply = apply
        self.namespace = namespace
        self.clock = clock
        self.cluster = cluster
        self._ladders: dict[tuple[str, str, int, str], Ladder] = {}
        self._snapshot: tuple[Views, Engine] | None = None  # this pass's listing and the engine synced over it
        self._repacked = False  # one pod moved per pass: the listing is stale after it

    def ladder(self, policy: Policy, profile: str, memory: int, workload_class: GpuClass) -> Ladder:
        """The sizing rule's ladder for pods of this profile, memory and class (the class the extender
        sizes them with: the pod's own when it overrides the profile's)."""
        key = (policy.version, profile, memory, workload_class)
        if key not in self._ladders:
            self._ladders[key] = sla_ladder(policy, profile, memory, workload_class)
        return self._ladders[key]

    def run_once(self) -> list[Outcome]:
        policy = self.policy()
        self._snapshot, self._repacked = None, False
        out = []
        for w in self.workloads.list(self.namespace):
            try:
                outcome = self.reconcile(policy, w)
            except (PrometheusError, ApiException, GpusliceError) as exc:
                cause = type(exc).__name__
                self.metrics.errors.labels(w.namespace, w.name, cause).inc()
                log.warning("rightsize %s: %s", w.key, exc)
                outcome = Outcome(w.key, None, False, f"error: {exc}")
            if outcome is not None:
                out.append(outcome)
        return out

    def run(self, interval: float, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            for o in self.run_once():
                log.info("rightsize %s: %s", o.workload, o.note)
            time.sleep(interval)

    def reconcile(self, policy: Policy, w: Workload) -> Outcome | None:
        p = policy.prefix
        try:
            req = parse_slice_request(w.template_labels, w.template_annotations, policy)
        except SliceRequestError as exc:
            return Outcome(w.key, None, False, f"skipped: its pod template is not a valid slice request ({exc})")
        if req is None or req.profile is None or req.target_rps is None:
            return None  # not an SLA workload
        rs = policy.rightsizing
        own = rs.workloads.get(w.key)
        if own is not None and not own.enabled:
            return Outcome(w.key, None, False, "skipped: rightsizing.workloads disables it")
        if req.count != 1:
            return Outcome(w.key, None, False, "skipped: pods of more than one GPU are not right-sized")
        if req.compute_cus is None:
            return Outcome(w.key, None, False, f"skipped: {p}/compute is set; remove it to let rightsize size "
                                               f"from {p}/target-rps")
        profile = policy.profiles[req.profile]
        model = policy.models[profile.gpuModel]
        ladder = self.ladder(policy, req.profile, req.memory_bytes, req.workload_class)
        current = Fleet(w.replicas, req.guaranteed_cus(policy, model, model.computeUnits), req.memory_bytes)
        record = read_record(w.annotations, p)
        now = self.clock()
        obs = self.observe(policy, w, now)
        d = decide(rs, ladder, current, obs, now, record.last_change, profile.minMemory, model.memory,
                   own.headroom if own else None, own.minReplicas if own else None)
        self._gauges(w, d)
        if not d.changed:
            if d.wanted != d.current:
                self.metrics.holds.labels(w.namespace, w.name, "interval").inc()
            moved = self._repack(policy, w, ladder, d, record, now) if d.wanted == d.current else None
            return moved or Outcome(w.key, d, False, f"hold: {d.reason}")
        if not self.apply:
            self.metrics.changes.labels(w.namespace, w.name, d.action, "recommended").inc()
            return Outcome(w.key, d, False, f"would {d.action} (dry run): {d.reason}")
        blocked = None if w.rolled_out else "a rollout is in progress"
        if blocked is None and (d.next.cus != d.current.cus or d.next.memory != d.current.memory
                                or d.next.replicas < d.current.replicas):
            blocked = self.workloads.disruption_blocked(w)
        if blocked:
            self.metrics.holds.labels(w.namespace, w.name, "pdb" if "Budget" in blocked else "rollout").inc()
            return Outcome(w.key, d, False, f"hold: {blocked}; {d.reason}")
        self._apply(policy, w, d, record.with_change(Change(now, d.action, d.current, d.next, d.peak_rps,
                                                                d.need_rps, d.reason)))
        return Outcome(w.key, d, True, f"{d.action}: {d.reason}")

    def _repack(self, policy: Policy, w: Workload, ladder: Ladder, d: Decision, record: Record,
                now: float) -> Outcome | None:
        """Move one of the fleet's pods that is alone on its GPU when its replacement would land beside other
        tenants (`engine.repack`) and `repack_hold` allows it: evict it, or restart a one-pod Deployment
        whose rolling update surges (the new pod first). The outcome, or None to just hold."""
        if self.cluster is None or self._repacked or not w.rolled_out or not w.selector:
            return None  # (an empty selector would claim every pod of the namespace)
        surge = w.surges and d.current.replicas == 1  # one pod: restarted (a new one first), never deleted
        if repack_hold(policy.rightsizing, ladder, d.current, d.need_rps, now, record, surge) is not None:
            return None
        if self._snapshot is None:
            views = self.cluster()
            self._snapshot = views, synced_engine(*views, policy)[0]
        (nodes, pods), engine = self._snapshot
        mine = [p for p in pods if p.namespace == w.namespace and p.node_name and not p.deleting
                and not p.terminal and selects(w.selector, p.labels)]
        if len(mine) != d.current.replicas:
            return None  # a pod is missing, unscheduled or going: not at rest
        for pod in [p for p in mine if co_tenants(engine.ledger, p.uid) == 0]:
            copy, _ = synced_engine(nodes, pods, policy)  # replacement_landings consumes its engine
            landings = replacement_landings(copy, copy.cluster, pod, surge)  # type: ignore[arg-type]
            if not moves_beside_tenants(landings):
                continue
            where = ", ".join(f"{x.node} GPU {'+'.join(map(str, x.gpus))} ({x.co_tenants} tenants)" for x in landings)
            how = ("it is restarted (its rolling update starts the new pod first)" if surge else
                   f"the other {d.current.replicas - 1} pods carry need {d.need_rps:.2f}")
            reason = f"pod {pod.name} is alone on its GPU on {pod.node_name}; its replacement would go beside " \
                     f"other tenants ({where}) and {how}"
            return self._move(policy, w, pod, d, record, now, reason, surge)
        return None

    def _move(self, policy: Policy, w: Workload, pod: PodView, d: Decision, record: Record, now: float,
              reason: str, surge: bool) -> Outcome:
        if not self.apply:
            self.metrics.changes.labels(w.namespace, w.name, "repack", "recommended").inc()
            return Outcome(w.key, d, False, f"would repack (dry run): {reason}")
        change = Change(now, "repack", d.current, d.current, d.peak_rps, d.need_rps, reason)
        state = {f"{policy.prefix}/{STATE_KEY}": record.with_repack(change).to_text()}
        blocked = self.workloads.disruption_blocked(w) if surge else None  # as a resize's rollout waits
        if blocked:
            self.metrics.holds.labels(w.namespace, w.name, "pdb").inc()
            return Outcome(w.key, d, False, f"hold: {blocked}; {reason}")
        if surge:  # a pod-template change rolls the pod: the new one is placed while the old one serves
            restart = {"annotations": {f"{policy.prefix}/{REPACKED_AT}": rfc3339(now)}}
            self.workloads.patch(w, w.replicas, restart, state)
        else:
            blocked = self.workloads.evict(pod.namespace, pod.name)
            if blocked:
                self.metrics.holds.labels(w.namespace, w.name, "pdb" if "Budget" in blocked else "repack").inc()
                return Outcome(w.key, d, False, f"hold: {blocked}; {reason}")
            self.workloads.patch(w, w.replicas, {}, state)
        self._repacked = True
        self.metrics.changes.labels(w.namespace, w.name, "repack", "applied").inc()
        try:
            self.workloads.event(w, "Repacked", reason)
        except ApiException as exc:
            log.warning("rightsize %s: event not written: %s", w.key, exc.reason)
        return Outcome(w.key, d, True, f"repack: {reason}")

    def observe(self, policy: Policy, w: Workload, now: float) -> Observation:
        rs = policy.rightsizing
        own = rs.workloads.get(w.key)
        fill = {"namespace": w.namespace, "name": w.name, "pods": w.pods_regex}
        query = Template(own.query if own and own.query else rs.query).substitute(fill)
        vram_query = Template(own.vramQuery if own and own.vramQuery else rs.vramQuery).substitute(fill)
        start = now - max(rs.windowSeconds, rs.downWindowSeconds)
        rate = self.prometheus.range(query, start, now, rs.stepSeconds, sum)
        vram = self.prometheus.range(vram_query, start, now, rs.stepSeconds, max)
        peak_vram = window_peak(vram, now, rs.windowSeconds)
        return Observation(window_peak(rate, now, rs.windowSeconds),
                           window_peak(rate, now, rs.downWindowSeconds, full=True),
                           None if peak_vram is None else int(peak_vram))

    def _apply(self, policy: Policy, w: Workload, d: Decision, record: Record) -> None:
        p = policy.prefix
        template: dict[str, dict[str, str]] = {}
        for key, value in ((f"{p}/target-rps", d.target_text), (f"{p}/memory", _memory_text(d.next.memory))):
            where = "labels" if key in w.template_labels and key not in w.template_annotations else "annotations"
            template.setdefault(where, {})[key] = value
        self.workloads.patch(w, d.next.replicas, template, {f"{p}/{STATE_KEY}": record.to_text()})
        self.metrics.changes.labels(w.namespace, w.name, d.action, "applied").inc()
        try:
            self.workloads.event(w, "RightSized", d.reason)
        except ApiException as exc:  # the change is made and recorded on the owner; the Event is a courtesy
            log.warning("rightsize %s: event not written: %s", w.key, exc.reason)

    def _gauges(self, w: Workload, d: Decision) -> None:
        m = self.metrics
        for state, fleet in (("current", d.current), ("wanted", d.wanted)):
            m.compute_units.labels(w.namespace, w.name, state).set(fleet.cus)
            m.replicas.labels(w.namespace, w.name, state).set(fleet.replicas)
            m.memory.labels(w.namespace, w.name, state).set(fleet.memory)
        m.need.labels(w.namespace, w.name).set(d.need_rps)


REPACKED_AT = "repacked-at"  # <prefix>/repacked-at on the pod template: the restart that moved a lone pod


def _memory_text(memory: int) -> str:
    return f"{memory // GIB}Gi" if memory % GIB == 0 else str(memory)
