"""A day of demand replayed three ways — slices sized once for the day's peak, once for its average,
and right-sized as `gpuslice rightsize --apply` would — through the engine's own placement.

Each service with a `demand:` curve is sized by one rule in all three: the fleet with the least GPU
share carrying need = demand x (1 + headroom), each slice from the SLA-sizing rule the replay places
with (`core.rightsizing.plan_fleet` over a `Ladder`). Static peak: need from the day's highest minute;
static average: from its mean; right-sizing: `core.rightsizing.decide` every minute on the minutes seen
so far (window peak, hysteresis, minimum interval, maximum step), after a warm-up day so its windows
are full. A slice change re-creates the service's pods (masks are fixed at container start) by a
rolling update (`schedule`); a replica-only change adds or removes pods. Services without a curve stay as placed.

Reported per strategy: GPU-hours (GPUs with a tenant, per minute), slice GPU-hours (the guaranteed
CUs of every tenant, in GPUs, per minute: what the slices hold), SLA-minutes missed (minutes in
which a service's modelled capacity — each pod's profile req/s at its CUs less the interference of the
co-tenants it actually has — is below that minute's demand) and changes made. Rolling updates go one
pod at a time (maxSurge 1, maxUnavailable 0): the policy right-sized workloads should run with.
`breakdown` and `floors` say where the GPU-hours go, down to the fewest GPUs any sizer could carry each
minute's demand on (`sim.gpu_floor`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from extender.core.errors import InputError
from extender.core.fit import Rules
from extender.core.policy import Policy
from extender.core.rightsizing import (
    Fleet,
    Ladder,
    Observation,
    Record,
    decide,
    plan_fleet,
    repack_hold,
    sla_ladder,
    window_peak,
)
from extender.core.sizing import predict
from extender.engine.repack import co_tenants
from extender.sim.demand import per_minute
from extender.sim.gpu_floor import Followed, GpuFloor, Tenant
from extender.sim.replay import Replay, RunSpec
from extender.sim.scenario import PodGroup, Scenario, scenario_nodes, scenario_pods
from extender.sim.workload import GpuAsk, SimPod

DAY = 24 * 60
STRATEGIES = ("static-peak", "static-average", "rightsize")


@dataclass(frozen=True)
class Service:
    group: PodGroup
    cls: str
    memory: int
    demand: list[float]  # req/s per minute over the warm-up day and the measured day
    ladder: Ladder

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def day(self) -> list[float]:
        return self.demand[DAY:]


@dataclass
class Timeline:
    """(minute of the measured day, fleet, target req/s per pod) per change; the first at minute 0."""

    steps: list[tuple[int, Fleet, float]] = field(default_factory=list)
    # right-sizing only: the need it sized for at each minute, and its last change before the day (seconds
    # from the day's start, negative) — what `repack_hold` asks of the fleet
    need: list[float] = field(default_factory=list)
    changed_before: float | None = None

    def last_change(self, minute: int) -> float | None:
        """Seconds into the day of the last change in force at `minute` (the first step is none)."""
        return next((m * 60.0 for m, _, _ in reversed(self.steps[1:]) if m <= minute), self.changed_before)


def sim_ladder(policy: Policy, profile: str, cls: str, memory: int) -> Ladder:
    """The slices the SLA-sizing rule (the one the replay's engine places with) gives."""
    return sla_ladder(policy, profile, memory, cls)  # type: ignore[arg-type]


def services(scenario: Scenario, policy: Policy, seed: int) -> list[Service]:
    out = []
    for i, g in enumerate(scenario.pods):
        if g.demand is None:
            continue
        assert g.profile is not None and g.targetRps is not None
        profile = policy.profiles[g.profile]
        cls = g.workloadClass or profile.workloadClass
        memory = max(g.memory or 0, profile.minMemory)
        peak = g.demand.peakRps or g.replicas * g.targetRps
        out.append(Service(g, cls, memory, per_minute(g.demand, peak, 2 * DAY, seed * 1000 + i),
                           sim_ladder(policy, g.profile, cls, memory)))
    return out


def static_timeline(policy: Policy, svc: Service, need: float) -> Timeline:
    rs = policy.rightsizing
    replicas, cus = plan_fleet(svc.ladder, need * (1 + rs.headroom), rs.minReplicas, rs.maxReplicas)
    return Timeline([(0, Fleet(replicas, cus, svc.memory), float(svc.ladder.target_text(cus)))])


def rightsize_timeline(policy: Policy, svc: Service) -> Timeline:
    """The controller's decisions, minute by minute; the first day warms its windows up."""
    rs = policy.rightsizing
    first = static_timeline(policy, svc, max(svc.demand[:60])).steps[0][1]
    fleet, last, samples, tl = first, None, [], Timeline()
    for m, value in enumerate(svc.demand):
        now = m * 60.0
        samples.append((now, value))
        obs = Observation(window_peak(samples, now, rs.windowSeconds),
                          window_peak(samples, now, rs.downWindowSeconds, full=True))
        d = decide(rs, svc.ladder, fleet, obs, now, last, svc.memory, svc.memory)
        if m >= DAY:
            tl.need.append(d.need_rps)
        if d.changed:
            fleet, last = d.next, now
            if m >= DAY:
                tl.steps.append((m - DAY + 1, fleet, float(d.target_text)))  # in force from the next minute
        if m == DAY - 1:
            tl.steps.append((0, fleet, float(svc.ladder.target_text(fleet.cus))))
            tl.changed_before = None if last is None else last - DAY * 60.0
    return tl


def reactive_timeline(policy: Policy, svc: Service) -> Timeline:
    """The rule with no anti-flapping at all: each minute, the fleet `plan_fleet` gives (keeping the slice
    it has when that is no more GPU share) for the previous minute's demand x (1 + headroom) — no window,
    no hysteresis, no minimum interval, no maximum step. No reactive controller on this rule follows closer;
    what it costs placed, with the day's rollouts, says what following closer would buy."""
    rs = policy.rightsizing
    tl, prev = Timeline(), None
    for m in range(DAY):
        replicas, cus = plan_fleet(svc.ladder, svc.demand[DAY + m - 1] * (1 + rs.headroom), rs.minReplicas,
                                   rs.maxReplicas, keep=None if prev is None else prev.cus)
        fleet = Fleet(replicas, cus, svc.memory)
        if fleet != prev:
            tl.steps.append((m, fleet, float(svc.ladder.target_text(cus))))
            prev = fleet
    return tl


PLACE, READY, REMOVE = 0, 1, 2  # at one minute: new pods are placed, then serve, then old ones go


def schedule(svc: Service, timeline: Timeline, first_pod: int, rollout: int) -> tuple[list[int], list[tuple]]:
    """The pods a service's timeline creates (as pod indices from `first_pod`) and its actions
    (minute, kind, pod). A slice change is a rolling update with maxSurge 1 and maxUnavailable 0: one new
    pod at a time, serving `rollout` minutes after it is placed, when one old pod goes (once the pods
    serving number the new replica count)."""
    created: list[int] = []
    actions: list[tuple[int, int, int]] = []
    serving: list[int] = []
    prev: Fleet | None = None
    for minute, fleet, _ in timeline.steps:
        if prev is None or prev.cus != fleet.cus:
            new = list(range(first_pod + len(created), first_pod + len(created) + fleet.replicas))
            created += new
            if prev is None:
                actions += [(minute, PLACE, i) for i in new] + [(minute, READY, i) for i in new]
            else:
                for k, i in enumerate(new):
                    actions += [(minute + k * rollout, PLACE, i), (minute + (k + 1) * rollout, READY, i)]
                # maxUnavailable 0: an old pod goes only when the ready pods left still number the new
                # replica count — a fleet growing by `extra` pods keeps all its old ones until `extra` serve
                extra = max(0, len(new) - len(serving))
                actions += [(minute + min(k + extra + 1, len(new)) * rollout, REMOVE, i)
                            for k, i in enumerate(serving)]
            serving = new
        elif fleet.replicas > prev.replicas:
            new = list(range(first_pod + len(created), first_pod + len(created) + fleet.replicas - prev.replicas))
            created += new
            actions += [(minute, PLACE, i) for i in new] + [(minute + rollout, READY, i) for i in new]
            serving = serving + new
        else:
            actions += [(minute, REMOVE, i) for i in serving[fleet.replicas:]]
            serving = serving[: fleet.replicas]
        prev = fleet
    return created, actions


class DayReplay(Replay):
    """The event replay driven minute by minute: pods placed and removed as the timelines say."""

    def place(self, i: int) -> bool:
        o = self.outcomes[i]
        if o.view is not None:
            self.cluster.add_pod(o.view)
        return self.attempt(i)

    def remove(self, i: int) -> None:
        self._depart(self.outcomes[i])

    def consolidate(self, pods: list[int]) -> int:
        """Re-place each of `pods` that is alone on its GPU(s) (`repack`), without the controller's
        conditions (`repack_hold`) or its one move per fleet and interval: a what-if — how much of the day's
        placement history is pods left alone by scale-downs and rollouts. Returns how many moved beside
        other tenants."""
        return sum(self.repack(i) for i in pods if self.co_tenants(i) == 0)

    def co_tenants(self, i: int) -> int:
        """Other tenants on the GPUs of placed pod `i` (-1 when it is not placed)."""
        return co_tenants(self.engine.ledger, self.outcomes[i].uid) if self.outcomes[i].node else -1

    def repack(self, i: int) -> bool:
        """Delete pod `i`, alone on its GPU, and place its replacement (as `gpuslice rightsize` does when
        `core.rightsizing.repack_hold` allows it); True when the replacement lands beside other tenants.
        The controller asks the extender beforehand (`engine.repack`) and leaves the pod alone when it
        would land alone again; here the replacement's placement is that answer, and a pod that lands
        alone again counts as never deleted (it holds a GPU of its own either way)."""
        self.remove(i)
        if not self.place(i):
            raise InputError("pod", self.outcomes[i].pod.name, "its own GPU no longer takes it")
        return self.co_tenants(i) > 0

    def gpus_used(self) -> tuple[int, float]:
        """(GPUs with a tenant, GPUs' worth of guaranteed CUs)."""
        gpus = [g for n in self.engine.ledger.nodes() for g in n.gpus if g.slices]
        return len(gpus), sum(len(g.guaranteed) / g.info.computeUnits for g in gpus)

    def capacity(self, pods: set[int]) -> float:
        """Modelled req/s of the placed pods, each with the co-tenants it has now."""
        total = 0.0
        for i in pods:
            o = self.outcomes[i]
            entry = self.engine.ledger.entry(o.uid) if o.node else None
            state = self.engine.ledger.node(o.node or "")
            if entry is None or state is None or o.pod.gpu is None or o.pod.gpu.profile is None:
                continue
            gpus = [g for ga in entry.assignment.gpus if (g := state.gpu(ga.index)) is not None]
            if gpus:
                total += predict(self.policy, o.pod.gpu.profile, 0.0, gpus, o.uid).predicted_rps or 0.0
        return total


def victim(rs: set[int], serving: set[int], pending: list[int]) -> int:
    """The pod of ReplicaSet `rs` its controller deletes first when scaling it down (kube-controller-manager's
    ranking, `controller.ActivePodsWithRanks`): unscheduled before scheduled, not ready before ready, then the
    newest. Pod deletion costs (none are set) and the node-level "doubled up" rank are not modelled."""
    return min(rs, key=lambda i: (i not in pending, i in serving, -i))


def replay_day(scenario: Scenario, policy: Policy, spec: RunSpec, svcs: list[Service],
               timelines: dict[str, Timeline], rollout: int, host_score: str = "least",
               extender_weight: float = 5.0, seed: int = 1, without: frozenset[str] = frozenset(),
               consolidate_every: int = 0, repack: bool = False) -> dict[str, object]:
    """One strategy's day; the services named in `without` are left out altogether. `consolidate_every`
    minutes (0: never) the followed pods alone on a GPU are re-placed (`DayReplay.consolidate`)."""
    static = [p for p in scenario_pods(scenario) if p.service not in timelines and p.service not in without]
    pods: list[SimPod] = list(static)
    actions: dict[int, list[tuple[int, int, str]]] = defaultdict(list)  # minute -> (kind, pod, service)
    changes = 0
    generation: dict[int, tuple[str, int]] = {}  # pod -> (service, the timeline step that created it)
    for svc in svcs:
        tl = timelines[svc.name]
        created, acts = schedule(svc, tl, len(pods), rollout)
        births = _births(tl, created)
        for i in created:
            target, step = births[i]
            generation[i] = (svc.name, step)
            ask = GpuAsk(count=1, memory_bytes=svc.memory, workload_class=svc.cls, profile=svc.group.profile,
                         target_rps=target)
            pods.append(SimPod(f"{svc.name}-{i}", 0.0, None, svc.group.cpu, svc.group.hostMemory, ask, 0.0,
                               service=svc.name))
        for minute, kind, i in acts:
            actions[minute].append((kind, i, svc.name))
        changes += len(tl.steps) - 1
    replay = DayReplay(scenario_nodes(scenario), pods, spec, host_score, extender_weight, seed)
    replay.attempts = 0
    for i in range(len(static)):
        replay.place(i)
    serving: dict[str, set[int]] = {svc.name: set() for svc in svcs}
    alive: dict[tuple[str, int], set[int]] = defaultdict(set)  # created and not yet deleted, per ReplicaSet
    pending: list[int] = []
    moves = repacks = 0
    last_repack: dict[str, float] = {}
    gpu_minutes, slice_minutes, series = 0, 0.0, []
    missed = {svc.name: 0 for svc in svcs}
    for minute in range(DAY + max([m for m in actions] + [0])):
        todo = sorted(actions.get(minute, []))
        for kind, i, _ in todo:
            if kind == PLACE:
                alive[generation[i]].add(i)
                if not replay.place(i):
                    pending.append(i)
        used, share = replay.gpus_used()  # new pods and the old ones they replace: the surge counts
        for kind, i, name in todo:
            if kind == READY and i in alive[generation[i]]:
                serving[name].add(i)
            elif kind == REMOVE:  # one pod of i's ReplicaSet goes: the one its controller ranks first
                i = victim(alive[generation[i]], serving[name], pending)
                alive[generation[i]].discard(i)
                serving[name].discard(i)
                if i in pending:
                    pending.remove(i)
                else:
                    replay.remove(i)
        if pending:
            pending = [i for i in pending if not replay.attempt(i)]
        if repack and minute < DAY:  # what `gpuslice rightsize --apply` does between resizes
            for svc in svcs:
                i = _repack_one(replay, policy, svc, timelines[svc.name], minute, alive, serving[svc.name],
                                pending, last_repack.get(svc.name))
                if i is not None:
                    if len(serving[svc.name]) > 1:  # evicted: serves again once its replacement starts
                        serving[svc.name].discard(i)
                        actions[minute + rollout].append((READY, i, svc.name))
                    last_repack[svc.name] = minute * 60.0
                    repacks += 1
        if consolidate_every and minute % consolidate_every == 0:
            moves += replay.consolidate([i for i in range(len(static), len(pods))
                                         if replay.outcomes[i].node and i not in pending])
        if minute >= DAY:
            continue
        gpu_minutes += used
        slice_minutes += share
        for svc in svcs:
            if replay.capacity(serving[svc.name]) + 1e-9 < svc.day[minute]:
                missed[svc.name] += 1
        if minute % 15 == 0:
            series.append(used)
    return {"gpuHours": round(gpu_minutes / 60, 1), "sliceGpuHours": round(slice_minutes / 60, 1),
            "slaMinutesMissed": sum(missed.values()),
            "slaMinutesMissedByService": missed, "changes": changes, "podsCreated": len(pods) - len(static),
            "gpusMin": min(series), "gpusMax": max(series), "gpusEvery15Min": series,
            "podsNeverPlaced": len(pending), "consolidationMoves": moves, "repacks": repacks}


def _repack_one(replay: DayReplay, policy: Policy, svc: Service, tl: Timeline, minute: int,
                alive: dict[tuple[str, int], set[int]], serving: set[int], pending: list[int],
                last_repack: float | None) -> int | None:
    """The pod of `svc` the controller moves this minute beside other tenants, once moved, or None. Only a
    fleet at rest (one ReplicaSet, every pod placed and serving: the controller waits out rollouts) that
    `repack_hold` allows, and only a pod alone on its GPU. A one-pod fleet is restarted (its rolling update
    surges): modelled as the move itself, the old pod serving until then and its GPU freed at once (the
    2 minutes both hold a GPU are not counted)."""
    if not tl.need or any(m == minute + 1 for m, _, _ in tl.steps):  # a resize decided now goes first
        return None
    sets = [pods for (name, _), pods in alive.items() if name == svc.name and pods]
    if len(sets) != 1 or sets[0] != serving or any(i in pending for i in serving):
        return None
    record = Record(tl.last_change(minute), (), last_repack)
    fleet = fleet_at(tl, minute)  # rollouts here surge (maxSurge 1, maxUnavailable 0): one pod is restarted
    if repack_hold(policy.rightsizing, svc.ladder, fleet, tl.need[minute], minute * 60.0, record, fleet.replicas == 1):
        return None
    for i in sorted(serving):
        if replay.co_tenants(i) == 0 and replay.repack(i):
            return i
    return None


def fleet_at(tl: Timeline, minute: int) -> Fleet:
    """The fleet a timeline has in force at `minute` of the measured day."""
    return [f for m, f, _ in tl.steps if m <= minute][-1]


FRESH_EVERY = 15  # minutes between the fresh packings `packed_fresh` samples


def packed_fresh(scenario: Scenario, policy: Policy, spec: RunSpec, svcs: list[Service],
                 fleet: Callable[[Service, int], Fleet], host_score: str = "least", extender_weight: float = 5.0,
                 seed: int = 1, memo: dict[tuple[Fleet, ...], int] | None = None) -> float:
    """GPU-hours of the GPUs with a tenant when the pods without a demand curve, then each service's
    `fleet(service, minute)`, are placed from scratch through the same engine, every FRESH_EVERY minutes:
    the fleets without the day's history (where rollouts and scale-downs left pods). Placed minus this
    is what that history costs. `memo` keeps the GPUs of each set of fleets already packed."""
    memo = {} if memo is None else memo
    total = 0
    for minute in range(0, DAY, FRESH_EVERY):
        fleets = tuple(fleet(svc, minute) for svc in svcs)
        if fleets not in memo:
            memo[fleets] = _pack(scenario, spec, svcs, fleets, host_score, extender_weight, seed)
        total += memo[fleets] * FRESH_EVERY
    return round(total / 60, 1)


def _pack(scenario: Scenario, spec: RunSpec, svcs: list[Service], fleets: tuple[Fleet, ...], host_score: str,
          extender_weight: float, seed: int) -> int:
    """GPUs with a tenant after placing the pods without a curve, then `fleets` (one per service), afresh."""
    pods = [p for p in scenario_pods(scenario) if p.service not in {s.name for s in svcs}]
    for svc, f in zip(svcs, fleets, strict=True):
        ask = GpuAsk(count=1, memory_bytes=svc.memory, workload_class=svc.cls, profile=svc.group.profile,
                     target_rps=float(svc.ladder.target_text(f.cus)))
        pods += [SimPod(f"{svc.name}-{k}", 0.0, None, svc.group.cpu, svc.group.hostMemory, ask, 0.0,
                        service=svc.name) for k in range(f.replicas)]
    replay = DayReplay(scenario_nodes(scenario), pods, spec, host_score, extender_weight, seed)
    replay.attempts = 0
    for i in range(len(pods)):
        replay.place(i)
    return replay.gpus_used()[0]


def floor_of(scenario: Scenario, policy: Policy, spec: RunSpec, svcs: list[Service], host_score: str = "least",
             extender_weight: float = 5.0, seed: int = 1, pinned: bool = False) -> GpuFloor:
    """The fewest-GPUs floor (`sim.gpu_floor`) of the followed services beside the pods without a curve,
    whose slices (and, with `pinned`, GPUs) are those the engine gives them placed alone."""
    pods = [p for p in scenario_pods(scenario) if p.service not in {s.name for s in svcs}]
    replay = DayReplay(scenario_nodes(scenario), pods, spec, host_score, extender_weight, seed)
    replay.attempts = 0
    for i in range(len(pods)):
        replay.place(i)
    models = {policy.profiles[s.group.profile or ""].gpuModel for s in svcs}
    rules = Rules.from_policy(policy)
    gpus = [g for n in replay.engine.ledger.nodes() for g in n.gpus if g.info.model in models]
    empty = next((g.room(policy.overcommit.memory, rules) for g in gpus if not g.slices), None)
    if len(models) != 1 or empty is None:
        raise InputError("scenario", scenario.name, "the floor needs one GPU model for every followed "
                         "service, with an empty GPU of it beside the pods without a curve")
    held = [tuple(Tenant(s.workload_class, len(s.cus), s.memory, s.memory_limit) for s in g.slices)
            for g in gpus if g.slices]
    followed = [Followed(s.name, s.cls, s.memory, s.group.profile or "", tuple(st.cus for st in s.ladder.steps))
                for s in svcs]
    return GpuFloor(policy, empty, [t for h in held for t in h], followed, len(gpus), held if pinned else None)


def floors(scenario: Scenario, policy: Policy, spec: RunSpec, svcs: list[Service], host_score: str = "least",
           extender_weight: float = 5.0, seed: int = 1) -> dict[str, float]:
    """GPU-hours of the fewest GPUs that carry each minute's demand (`sim.gpu_floor`), exactly and with
    the headroom: every pod packed afresh (`floor*`: no sizer and no placement does better), and the
    pods without a curve kept on the GPUs the engine gives them (`floorPinned*`)."""
    out = {}
    for pinned, key in ((False, "floor"), (True, "floorPinned")):
        f = floor_of(scenario, policy, spec, svcs, host_score, extender_weight, seed, pinned)
        out[key + "Demand"] = f.day([s.day for s in svcs])
        out[key + "WithHeadroom"] = f.day([[d * (1 + policy.rightsizing.headroom) for d in s.day] for s in svcs])
    return out


def breakdown(policy: Policy, svcs: list[Service], plans: dict[str, dict[str, Timeline]],
              runs: dict[str, dict[str, object]], fixed_alone: float,
              pack: Callable[[Callable[[Service, int], Fleet]], float] | None = None) -> dict[str, dict[str, float]]:
    """Where a strategy's GPU-hours go. `fleet`: the GPU share (`core.sizing.gpu_share`, the least GPUs
    the slices can fill under the per-GPU rules) of the followed services' pods, summed per minute. For
    right-sizing it is built up one cause at a time: the demand followed minute by minute (the rule
    alone, no headroom), + the headroom, + the sliding window's peak, + the controller's bounds
    (hysteresis, longer down-window, minimum interval, maximum step) = the fleets it ran. Then what
    placement makes of it: `placed` (GPUs with a tenant), and `addedByServices` = placed less the GPUs
    the pods without a demand curve fill on their own (`fixed_alone`, a replay of them alone). With
    `pack` (`packed_fresh`), the same causes in GPUs with a tenant, each stage's fleets placed from
    scratch with the pods without a curve (`packed*`), and `history` = placed less `packedFleet`: what
    the day's rollouts and scale-downs, which leave pods where they were placed, cost.
    """
    rs = policy.rightsizing
    window = max(1, rs.windowSeconds // 60)

    def planned(svc: Service, need: float) -> Fleet:
        replicas, cus = plan_fleet(svc.ladder, need, rs.minReplicas, rs.maxReplicas)
        return Fleet(replicas, cus, svc.memory)

    def day(f: Callable[[Service, int], float]) -> float:
        return round(sum(f(s, m) for s in svcs for m in range(DAY)) / 60, 1)

    stages: dict[str, Callable[[Service, int], Fleet]] = {
        "demandFollowed": lambda s, m: planned(s, s.day[m]),
        "withHeadroom": lambda s, m: planned(s, s.day[m] * (1 + rs.headroom)),
        "withWindow": lambda s, m: planned(s, max(s.demand[DAY + m - window + 1:DAY + m + 1]) * (1 + rs.headroom)),
    }
    hours: dict[str, dict[str, float]] = {}
    for name, plan in plans.items():
        out: dict[str, float] = {}
        mine = {**(stages if name == "rightsize" else {}), "fleet": _running(plan)}
        for key, fleets in mine.items():
            out[key] = day(lambda s, m, fleets=fleets: fleets(s, m).gpus(s.ladder))  # type: ignore[misc]
        out["fixedAlone"] = fixed_alone
        out["placed"] = float(runs[name]["gpuHours"])  # type: ignore[arg-type]
        out["addedByServices"] = round(out["placed"] - fixed_alone, 1)
        if pack is not None:
            for key, fleets in mine.items():
                out["packed" + key[0].upper() + key[1:]] = pack(fleets)
            out["history"] = round(out["placed"] - out["packedFleet"], 1)
        hours[name] = out
    return hours


def _running(plan: dict[str, Timeline]) -> Callable[[Service, int], Fleet]:
    return lambda s, m: fleet_at(plan[s.name], m)


def _births(tl: Timeline, created: list[int]) -> dict[int, tuple[float, int]]:
    """Each created pod's target req/s and ReplicaSet: the target of the timeline step that created it, and
    the index of the last slice change at or before that step (added replicas join the running set)."""
    out, k, rs = {}, 0, 0
    prev: Fleet | None = None
    for n_step, (_, fleet, target) in enumerate(tl.steps):
        if prev is None or prev.cus != fleet.cus:
            rs, n = n_step, fleet.replicas
        else:
            n = max(0, fleet.replicas - prev.replicas)
        for i in created[k:k + n]:
            out[i] = (target, rs)
        k += n
        prev = fleet
    return out


def compare(scenario: Scenario, policy: Policy, spec: RunSpec, seed: int = 1, rollout: int = 2,
            host_score: str = "least", extender_weight: float = 5.0) -> dict[str, object]:
    """The three strategies over the same day of demand; savings against static peak sizing."""
    svcs = services(scenario, policy, seed)
    if not svcs:
        raise InputError("scenario", scenario.name, "no pod group with a demand: curve to replay (add "
                         "`demand: {swing: 4, peakHour: 14}` to a group with a profile and targetRps)")
    plans = {
        "static-peak": {s.name: static_timeline(policy, s, max(s.day)) for s in svcs},
        "static-average": {s.name: static_timeline(policy, s, sum(s.day) / len(s.day)) for s in svcs},
        "rightsize": {s.name: rightsize_timeline(policy, s) for s in svcs},
    }
    runs = {name: replay_day(scenario, policy, spec, svcs, plan, rollout, host_score, extender_weight, seed,
                             repack=name == "rightsize" and policy.rightsizing.repack)
            for name, plan in plans.items()}
    alone = replay_day(scenario, policy, spec, [], {}, rollout, host_score, extender_weight, seed,
                       without=frozenset(s.name for s in svcs))
    memo: dict[tuple[Fleet, ...], int] = {}
    split = breakdown(policy, svcs, plans, runs, float(alone["gpuHours"]),  # type: ignore[arg-type]
                      lambda f: packed_fresh(scenario, policy, spec, svcs, f, host_score, extender_weight, seed, memo))
    split["rightsize"].update(floors(scenario, policy, spec, svcs, host_score, extender_weight, seed))
    reactive = {s.name: reactive_timeline(policy, s) for s in svcs}
    bare = replay_day(scenario, policy, spec, svcs, reactive, rollout, host_score, extender_weight, seed)
    split["rightsize"].update({
        "reactivePlaced": float(bare["gpuHours"]),  # type: ignore[arg-type]
        "reactivePacked": packed_fresh(scenario, policy, spec, svcs, _running(reactive), host_score,
                                       extender_weight, seed, memo),
        "reactiveSlaMinutesMissed": float(bare["slaMinutesMissed"]),  # type: ignore[arg-type]
        "reactiveChanges": float(bare["changes"])})  # type: ignore[arg-type]
    moved = replay_day(scenario, policy, spec, svcs, plans["rightsize"], rollout, host_score, extender_weight, seed,
                       consolidate_every=FRESH_EVERY)
    split["rightsize"].update({"consolidatedPlaced": float(moved["gpuHours"]),  # type: ignore[arg-type]
                               "consolidationMoves": float(moved["consolidationMoves"]),  # type: ignore[arg-type]
                               "consolidatedSlaMinutesMissed": float(moved["slaMinutesMissed"])})  # type: ignore[arg-type]
    base = runs["static-peak"]
    for r in runs.values():
        for key, out in (("gpuHours", "savingsVsStaticPeakPct"), ("sliceGpuHours", "sliceSavingsVsStaticPeakPct")):
            r[out] = round(100 * (1 - r[key] / base[key]), 1) if base[key] else None  # type: ignore[operator]
    demand = {s.name: {"peakRps": round(max(s.day), 2), "meanRps": round(sum(s.day) / len(s.day), 2),
                       "troughRps": round(min(s.day), 2)} for s in svcs}
    return {"scenario": scenario.name, "minutes": DAY, "rolloutMinutes": rollout, "demand": demand,
            "headroom": policy.rightsizing.headroom, "runs": runs, "gpuHoursBreakdown": split,
            "fleets": {name: {s: [(m, f.replicas, f.cus) for m, f, _ in tl.steps] for s, tl in plan.items()}
                       for name, plan in plans.items()}}
