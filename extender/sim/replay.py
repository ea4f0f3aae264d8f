"""The event-driven replay: pods arrive, are scheduled as kube-scheduler would with the extender, and
depart; pods that found no node wait and are retried when a departure frees room.

One scheduling cycle per pod, as kube-scheduler runs it:
1. its own filters: host CPU and memory fit (NodeResourcesFit), the pod's GPU-model selector, and a
   screen of free GPUs (a necessary condition, so the extender sees fewer hopeless nodes);
2. the extender's `filter` and `prioritize` — the engine's own code, on the same ledger, wired as
   `gpuslice serve` wires it (greedy filter/prioritize, the CP-SAT solver placer at bind);
3. node choice: the highest total score, ties broken at random (seeded), where total =
   host score (LeastAllocated or MostAllocated, weight 1, plus BalancedAllocation, weight 1; each
   0..100) + extender score (0..10) x 10 x extender weight — kube-scheduler's scaling of extender
   scores. Baselines pick nodes their own way (see baselines.BASELINES);
4. the extender's `bind`.
The extender's verdict on a node is a pure function of the node's ledger state, the request and the
policy (the engine memoizes it the same way), so the replay asks the engine again only about nodes
whose ledger changed since it last asked about an identical request, and one GPU-idle node stands for
all identical ones. The outcome is the same as sending every node on every cycle, only faster.

Events at the same instant run departures first, then arrivals in trace order. Unschedulable pods
are retried after each departure, on the freed node's screen first. The replay ends when the last pod
has arrived and been tried; metrics describe that moment.
"""

from __future__ import annotations

import heapq
import random
import time
from dataclasses import dataclass, field

import numpy as np

from extender.core.errors import SliceRequestError
from extender.core.ledger import NodeState
from extender.core.policy import Policy
from extender.core.requests import SliceRequest, parse_slice_request
from extender.core.sizing import size_for_target
from extender.engine.candidates import at_most
from extender.engine.cluster import PodView
from extender.engine.fragmentation import narrow
from extender.engine.placement import NodeFit, evaluate, fit_key
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine, Placer
from extender.engine.solver_placer import SolverPlacer
from extender.sim.cluster import SimCluster
from extender.sim.workload import SimNode, SimPod

NAMESPACE = "sim"
DEPART, ARRIVE = 0, 1


@dataclass(frozen=True)
class RunSpec:
    label: str
    policy: Policy
    placer: Placer = evaluate
    chooser: str = "kube"  # kube | first | best | random
    source: str = ""
    bind: str = "solver"  # gpuslice runs: "solver" binds with the CP-SAT placer as serve does; "greedy"


@dataclass
class PodOutcome:
    pod: SimPod
    uid: str
    view: PodView | None  # None when infeasible
    demand: float
    node: str | None = None
    reason: str = ""
    infeasible: str = ""
    sized_cus: int | None = None
    departed: bool = False


@dataclass
class ReplayState:
    """What a finished replay hands to the metrics."""

    spec: RunSpec
    cluster: SimCluster
    engine: Engine
    outcomes: list[PodOutcome]
    series: list[tuple[float, float]] = field(default_factory=list)  # (present, placed) GPUs
    elapsed: float = 0.0
    attempts: int = 0


def once_per_state(placer: Placer) -> Placer:
    """The placer's answer memoized on the (immutable) node state, so filter, prioritize and bind
    share it (and a random placer gives all three the same answer)."""

    def placed(req: SliceRequest, state: NodeState, policy: Policy) -> NodeFit:
        key = ("sim-baseline", placer, fit_key(req, policy))
        fit = state.memo.get(key)
        if fit is None:
            fit = state.memo[key] = placer(req, state, policy)
        return fit  # type: ignore[return-value]

    return placed


class Replay:
    def __init__(self, nodes: list[SimNode], pods: list[SimPod], spec: RunSpec, host_score: str = "least",
                 extender_weight: float = 5.0, seed: int = 0, incremental: bool = True) -> None:
        self.spec = spec
        self.incremental = incremental  # False: the reference the shortcuts must match (tests)
        self.policy = spec.policy
        self.host_score = host_score
        self.extender_weight = extender_weight
        self.rng = random.Random(seed)
        models = sorted({n.model for n in nodes if n.gpus})
        self.cluster = SimCluster(nodes, models)
        # a baseline answers filter, prioritize and bind with one placement per node state
        # gpuslice runs wire the engine as `gpuslice serve` does (greedy filter/prioritize, the CP-SAT
        # placer at bind); a baseline answers all three verbs with one placement per node state
        if spec.placer is evaluate:
            own: dict[str, Placer] = {"bind_placer": SolverPlacer()} if spec.bind == "solver" else {}
        else:
            placer = once_per_state(spec.placer)
            own = {"placer": placer, "checker": placer, "scorer": placer}
        self.engine = Engine(self.cluster, PolicyStore(self.policy), clock=lambda: 0.0, **own)
        self.engine.sync()
        for state in self.engine.ledger.nodes():
            self.cluster.refresh(state)
        self.names = [n.name for n in nodes]
        self.outcomes = [self._translate(i, p) for i, p in enumerate(pods)]
        self._screen_arrays(models)

    # --- pods as the policy sees them -----------------------------------------------------------
    def _translate(self, i: int, pod: SimPod) -> PodOutcome:
        uid = f"uid-{i}"
        ask = pod.gpu
        if ask is None:
            view = PodView(uid, NAMESPACE, pod.name, cpu_millis=pod.cpu_millis, memory_bytes=pod.memory_bytes)
            return PodOutcome(pod, uid, view, 0.0)
        p = self.policy
        key = f"{p.prefix}/"
        ann = {key + "count": str(ask.count)}
        profile = p.profiles.get(ask.profile) if ask.profile else None
        if ask.profile and profile is None:
            return PodOutcome(pod, uid, None, 0.0, infeasible=f"profile {ask.profile} is not in the policy")
        cls = ask.workload_class or (profile.workloadClass if profile else p.classes.default)
        memory = ask.memory_bytes or (profile.minMemory if profile else 0)
        demand = pod.demand
        sized = None
        if profile is not None:
            ann[key + "profile"] = ask.profile or ""
            if memory < profile.minMemory:
                memory = profile.minMemory
        if profile is not None and ask.target_rps is not None:
            ann[key + "target-rps"] = repr(ask.target_rps)  # the request parser sizes it, as the extender does
        if ask.compute_millis is not None:
            ann[key + "compute"] = f"{ask.compute_millis}m"
        else:  # the parser's sizing function, called here for the pod's demand
            assert profile is not None and ask.target_rps is not None
            try:
                s = size_for_target(p, ask.profile or "", ask.target_rps, cls)  # type: ignore[arg-type]
            except SliceRequestError as exc:
                return PodOutcome(pod, uid, None, 0.0, infeasible=exc.reason)
            demand = ask.count * s.cus / p.models[profile.gpuModel].computeUnits
            sized = s.cus
        ann[key + "memory"] = str(memory)
        ann[key + "class"] = cls
        view = PodView(uid, NAMESPACE, pod.name, annotations=ann, cpu_millis=pod.cpu_millis,
                       memory_bytes=pod.memory_bytes)
        return PodOutcome(pod, uid, view, demand, sized_cus=sized)

    def _screen_arrays(self, models: list[str]) -> None:
        """Per pod: CUs it needs on each model's GPU (-2: whole GPU), GPU memory, count, allowed models."""
        n, m = len(self.outcomes), max(len(models), 1)
        self.need = np.zeros((n, m), dtype=np.int64)
        self.gmem = np.zeros(n, dtype=np.int64)
        self.count = np.zeros(n, dtype=np.int64)
        self.allowed = np.ones((n, m), dtype=bool)
        self.cpu = np.array([o.pod.cpu_millis for o in self.outcomes], dtype=np.int64)
        self.mem = np.array([o.pod.memory_bytes for o in self.outcomes], dtype=np.int64)
        self.requests: list[SliceRequest | None] = []
        self.shape = np.zeros(n, dtype=np.int64)  # identical requests share extender answers
        shapes: dict[object, int] = {}
        # fragmentation scores also weigh the host CPU and memory a pod takes
        host_too = self.policy.scoring.fragmentation.enabled
        for i, o in enumerate(self.outcomes):
            req = None
            if o.view is not None and o.pod.gpu is not None:
                try:
                    req = parse_slice_request(o.view.labels, o.view.annotations, self.policy)
                except SliceRequestError as exc:  # the engine reports the same problem at filter time
                    o.infeasible = str(exc)
            self.requests.append(req)
            if req is None:
                continue
            shape_key = (req, o.pod.cpu_millis, o.pod.memory_bytes) if host_too else req
            self.shape[i] = shapes.setdefault(shape_key, len(shapes))
            self.gmem[i] = req.memory_bytes
            self.count[i] = req.count
            for j, name in enumerate(models):
                model = self.policy.model_for(name)
                cus = req.guaranteed_cus(self.policy, model, model.computeUnits, model.xcds)
                self.need[i, j] = -2 if cus >= model.computeUnits else cus
            if o.pod.gpu and o.pod.gpu.models:
                self.allowed[i] = [name in o.pod.gpu.models for name in models] if models else False
        nodes = len(self.names)
        self.seen = [np.full(nodes, -1, dtype=np.int64) for _ in range(max(len(shapes), 1))]
        self.ext_ok = [np.zeros(nodes, dtype=bool) for _ in range(max(len(shapes), 1))]
        self.ext_score = [np.zeros(nodes, dtype=np.int64) for _ in range(max(len(shapes), 1))]
        self.ext_rise = [np.full(nodes, np.nan) for _ in range(max(len(shapes), 1))]
        self.mix_version = -1
        self.last_reason: dict[int, str] = {}

    # --- one scheduling cycle -------------------------------------------------------------------
    def _host_screen(self, i: int, nodes: np.ndarray | None = None) -> np.ndarray:
        """kube-scheduler's own filters: host CPU and memory fit, and the GPU-model node selector."""
        c = self.cluster
        idx = np.arange(len(self.names)) if nodes is None else nodes
        ok = (c.cpu_free[idx] >= self.cpu[i]) & (c.mem_free[idx] >= self.mem[i])
        if self.requests[i] is not None:
            model = c.model[idx]
            ok &= (model >= 0) & self.allowed[i][np.maximum(model, 0)]
        return idx[ok]

    def _gpu_screen(self, i: int, idx: np.ndarray) -> np.ndarray:
        """A necessary condition of the extender's filter (enough GPUs with the CUs and memory free):
        the fit rule's (core/fit.py) health, capacity and memory tests, so nodes that fail it need not be
        asked (tests/core/test_fit_rule.py holds it to the rule)."""
        c = self.cluster
        need = self.need[i][np.maximum(c.model[idx], 0)][:, None]
        fits = np.where(need == -2, c.gpu_empty[idx], c.gpu_free[idx] >= need) & (c.gpu_mem[idx] >= self.gmem[i])
        return fits.sum(axis=1) >= self.count[i]

    def _screen(self, i: int, nodes: np.ndarray | None = None) -> np.ndarray:
        idx = self._host_screen(i, nodes)
        if self.requests[i] is None or idx.size == 0:
            return idx
        return idx[self._gpu_screen(i, idx)]

    def _extender(self, i: int, view: PodView, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """The extender's filter verdict and prioritize score for every node, as (passed mask, score
        vector, a failure reason). The engine is asked only about nodes whose ledger changed since it
        was last asked about an identical request (its answer is a pure function of the node's state,
        the request and the policy — the engine memoizes it the same way); of identical GPU-idle
        nodes, one stands for all."""
        c = self.cluster
        shape = self.shape[i]
        seen, ok, score, rise = self.seen[shape], self.ext_ok[shape], self.ext_score[shape], self.ext_rise[shape]
        frag = self.policy.scoring.fragmentation.enabled
        if frag and self.engine.fragmentation.mix.version != self.mix_version:  # every score may change
            self.mix_version = self.engine.fragmentation.mix.version
            for s in self.seen:
                s[:] = -1
        if not self.incremental:  # reference mode: every host-fit node to the engine, every cycle
            seen[:] = -1
        stale = nodes[seen[nodes] != c.version[nodes]]
        if self.incremental and stale.size:
            hopeless = stale[~self._gpu_screen(i, stale)]
            ok[hopeless], seen[hopeless] = False, c.version[hopeless]
            stale = nodes[seen[nodes] != c.version[nodes]]
        if stale.size:
            idle = c.gpu_idle()[stale] if self.incremental else np.zeros(stale.size, dtype=bool)
            busy = stale[~idle]
            kind = c.kind[stale[idle]]
            if frag:  # host room enters the score: idle nodes are alike only with the same room left
                kind = np.stack([kind, c.cpu_free[stale[idle]], c.mem_free[stale[idle]]], axis=1)
            kinds, first, inverse = np.unique(kind, return_index=True, return_inverse=True, axis=0)
            inverse = inverse.reshape(-1)
            reps = np.concatenate([busy, stale[idle][first]])
            names = [self.names[k] for k in reps]
            # candidates are narrowed below, over every node, from the rises kept per node. Without
            # fragmentation scoring the replay does not narrow (in either mode): its kube-scheduler picks
            # among every node that fits by host and extender score, where the live filter passes the
            # `candidates.maxNodes` best (README, "Candidates on by default")
            result = self.engine.filter(view, names=names, narrow_candidates=frag and not self.incremental)
            passed = set(result.passed)
            scores = dict(self.engine.prioritize(view, names=result.passed)) if passed else {}
            got_ok = np.array([n in passed for n in names], dtype=bool)
            got_score = np.array([scores.get(n, 0) for n in names], dtype=np.int64)
            ok[busy], score[busy] = got_ok[: busy.size], got_score[: busy.size]
            ok[stale[idle]] = got_ok[busy.size:][inverse]
            score[stale[idle]] = got_score[busy.size:][inverse]
            if frag:
                got_rise = np.array([result.rises.get(n, np.nan) for n in names])
                rise[busy], rise[stale[idle]] = got_rise[: busy.size], got_rise[busy.size:][inverse]
            seen[stale] = c.version[stale]
            if not passed:
                reasons = list(result.unresolvable.values()) or list(result.failed.values())
                self.last_reason[shape] = reasons[0] if reasons else ""
        cand = self.policy.scoring.candidates
        if frag and cand.enabled and self.incremental:  # the engine's narrowing, over all nodes at once
            live = nodes[ok[nodes] & ~np.isnan(rise[nodes])]
            rises = dict(zip(live.tolist(), rise[live].tolist(), strict=True))
            keep = at_most(rises, narrow(rises, cand.tolerance, cand.minNodes), cand.maxNodes, view.uid,
                           self.names.__getitem__)
            out = ok[nodes].copy()
            out[np.isin(nodes, live) & ~np.isin(nodes, np.fromiter(keep, np.int64, len(keep)))] = False
            return out, score[nodes], self.last_reason.get(shape, "")
        return ok[nodes], score[nodes], self.last_reason.get(shape, "")

    def _why_not(self, i: int) -> str:
        """Why the screen found no node, in kube-scheduler's and the extender's words."""
        c = self.cluster
        host = (c.cpu_free >= self.cpu[i]) & (c.mem_free >= self.mem[i])
        if not host.any():
            return "host CPU/memory: no node has room (Insufficient cpu or memory)"
        if self.requests[i] is None:
            return "no node passed"
        model = np.maximum(c.model, 0)
        typed = host & (c.model >= 0) & self.allowed[i][model]
        if not typed.any():
            return "GPU model: no node with room has an allowed GPU model"
        return (f"GPU capacity: no node with room has {self.count[i]} GPU(s) with enough free CUs and memory "
                f"(gpuslice filter)")

    def _host_scores(self, i: int, idx: np.ndarray) -> np.ndarray:
        c = self.cluster
        cpu_used = (c.cpu_cap[idx] - c.cpu_free[idx] + self.cpu[i]) / np.maximum(c.cpu_cap[idx], 1)
        mem_used = (c.mem_cap[idx] - c.mem_free[idx] + self.mem[i]) / np.maximum(c.mem_cap[idx], 1)
        if self.host_score == "none":
            return np.zeros(idx.size)
        fit = (cpu_used + mem_used) / 2 * 100
        if self.host_score == "least":
            fit = 100 - fit
        balanced = (1 - np.abs(cpu_used - mem_used) / 2) * 100
        return fit + balanced

    def _pick(self, i: int, nodes: np.ndarray, ext: np.ndarray) -> int:
        chooser = self.spec.chooser
        if chooser == "first":
            return int(nodes.min())
        if chooser == "random":
            return int(nodes[self.rng.randrange(nodes.size)])
        if chooser == "best":
            top = ext.max()
            return int(nodes[ext == top].min())
        total = self._host_scores(i, nodes) + ext * 10 * self.extender_weight
        tied = nodes[total >= total.max() - 1e-9]
        return int(tied[self.rng.randrange(tied.size)]) if tied.size > 1 else int(tied[0])

    def attempt(self, i: int) -> bool:
        o = self.outcomes[i]
        if o.view is None or o.infeasible:
            return False
        self.attempts += 1
        cand = self._host_screen(i)
        if cand.size == 0:
            o.reason = self._why_not(i)
            return False
        if self.requests[i] is None:  # passes gpuslice through: the extender says so for every node
            names = [self.names[k] for k in cand]
            passed = set(self.engine.filter(o.view, names=names).passed)
            scores = dict(self.engine.prioritize(o.view, names=list(passed)))
            keep = np.array([n in passed for n in names], dtype=bool)
            cand = cand[keep]
            ext = np.array([scores[self.names[k]] for k in cand], dtype=np.int64)
            reason = "no node passed the extender's filter"
        else:
            self.engine.observe_request(o.view, self.requests[i], self.policy)  # filter may not be asked
            ok, ext, reason = self._extender(i, o.view, cand)
            cand, ext = cand[ok], ext[ok]
        if cand.size == 0:
            o.reason = self._why_not(i) if not self._screen(i).size else (reason or "no node passed the extender")
            return False
        node = self.names[self._pick(i, cand, ext)]
        err = self.engine.bind(NAMESPACE, o.view.name, o.uid, node)
        if err:
            o.reason = err
            return False
        o.node, o.reason = node, ""
        state = self.engine.ledger.node(node)
        if state is not None:
            self.cluster.refresh(state)
        return True

    # --- the event loop -------------------------------------------------------------------------
    def run(self) -> ReplayState:
        started = time.perf_counter()
        self.attempts = 0
        events: list[tuple[float, int, int, int]] = []
        for i, o in enumerate(self.outcomes):
            heapq.heappush(events, (o.pod.arrival, ARRIVE, i, i))
        last_arrival = max((o.pod.arrival for o in self.outcomes), default=0.0)
        pending: list[int] = []
        arrived = placed = 0.0
        series: list[tuple[float, float]] = []  # (GPUs asked by pods present, by pods placed)
        seq = len(self.outcomes)
        while events:
            now, kind, _, i = heapq.heappop(events)
            if now > last_arrival:
                break
            o = self.outcomes[i]
            if kind == DEPART:
                node = o.node
                self._depart(o)
                placed -= o.demand
                arrived -= o.demand
                if node is not None:
                    for k in self._retry_on(node, pending):
                        if self.attempt(k):
                            pending.remove(k)
                            placed += self.outcomes[k].demand
                            seq = self._schedule_departure(events, k, now, seq)
                continue
            if o.view is not None:
                self.cluster.add_pod(o.view)
            arrived += o.demand
            if self.attempt(i):
                placed += o.demand
                seq = self._schedule_departure(events, i, now, seq)
            elif not o.infeasible and o.view is not None:
                pending.append(i)
            series.append((arrived, placed))
        state = ReplayState(self.spec, self.cluster, self.engine, self.outcomes, series,
                            time.perf_counter() - started, self.attempts)
        return state

    def _schedule_departure(self, events: list, i: int, now: float, seq: int) -> int:
        duration = self.outcomes[i].pod.duration
        if duration is not None:
            heapq.heappush(events, (now + duration, DEPART, seq, i))
            return seq + 1
        return seq

    def _depart(self, o: PodOutcome) -> None:
        self.cluster.remove_pod(o.uid)
        self.engine.forget_pod(o.uid)
        if o.node is not None:
            state = self.engine.ledger.node(o.node)
            if state is not None:
                self.cluster.refresh(state)
        o.node = None
        o.departed = True

    def _retry_on(self, node: str, pending: list[int]) -> list[int]:
        """Pending pods (in arrival order) that the freed node might now take."""
        if not pending:
            return []
        k = np.array([self.cluster.index[node]])
        return [i for i in list(pending) if self._screen(i, k).size]
