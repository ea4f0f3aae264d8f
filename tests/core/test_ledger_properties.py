"""Ledger invariants (DESIGN "Ledger semantics"), proven over random inventories and random sequences of
reserve / commit / release / expire, with assignments from the engine's placement and hand-made
adversarial ones:

(a) guaranteed CU sets of different tenants never overlap, and a guaranteed CU is in no other tenant's burst;
(b) no GPU is over CU or memory capacity (guarantees <= memory, limits <= memory x overcommit);
(c) release restores the exact previous state;
(d) rebuilding from the annotations equals the incrementally built state;
(e) concurrent filter+bind through the Engine never double-allocates, and the cluster matches the ledger.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, GpuAssignment, parse_assignment
from extender.core.errors import LedgerConflict
from extender.core.inventory import INVENTORY_ANNOTATION, GpuInfo, format_inventory
from extender.core.ledger import GpuState, Ledger, NodeState, PodRef, rebuild
from extender.core.policy import Policy, parse_policy
from extender.core.requests import SliceRequest
from extender.engine.cluster import BindError, MemoryCluster, NodeView, PodView
from extender.engine.placement import build_assignment, evaluate
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.engine.solver_placer import SolverPlacer

GI = 2**30
CLASSES = ("memory-bound", "compute-bound")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- invariants shared by every test -------------------------------------------------------------

def check_gpu(node: str, gpu: GpuState, overcommit: float) -> None:
    total = gpu.info.computeUnits
    where = f"{node} gpu {gpu.info.index}"
    for i, s in enumerate(gpu.slices):
        assert all(0 <= c < total for c in s.cus | s.burst), f"{where}: CU beyond the GPU"
        assert not (s.cus & s.burst), f"{where}: {s.pod.uid} bursts into its own guarantee"
        for t in gpu.slices[i + 1:]:
            assert s.pod.uid != t.pod.uid, f"{where}: {s.pod.uid} holds two slices"
            assert not (s.cus & t.cus), f"{where}: {s.pod.uid} and {t.pod.uid} share guaranteed CUs"
            assert not (s.cus & t.burst), f"{where}: {s.pod.uid}'s guarantee is in {t.pod.uid}'s burst"
            assert not (t.cus & s.burst), f"{where}: {t.pod.uid}'s guarantee is in {s.pod.uid}'s burst"
    assert len(gpu.guaranteed) == sum(len(s.cus) for s in gpu.slices) <= total
    assert 0 <= gpu.memory_used <= gpu.info.memoryBytes, f"{where}: memory over capacity"
    assert gpu.memory_limit_used <= gpu.info.memoryBytes * overcommit, f"{where}: limits over overcommit"


def check_node(state: NodeState, overcommit: float) -> None:
    for gpu in state.gpus:
        check_gpu(state.name, gpu, overcommit)
    # Every tenant slice belongs to a pod entry of this node, and every entry's GPUs hold its slice.
    slices = {(s.pod.uid, g.info.index) for g in state.gpus for s in g.slices}
    entries = {(uid, ga.index) for uid, e in state.pods.items() for ga in e.assignment.gpus}
    assert slices == entries
    for uid, e in state.pods.items():
        assert e.assignment.node == state.name
        for ga in e.assignment.gpus:
            (s,) = [s for s in state.gpu(ga.index).slices if s.pod.uid == uid]
            assert (s.cus, s.burst, s.memory, s.memory_limit) == (ga.cus, ga.burstCus, ga.memoryBytes,
                                                                  ga.memoryLimitBytes)


def check_ledger(ledger: Ledger) -> None:
    seen: dict[str, str] = {}
    for state in ledger.nodes():
        check_node(state, ledger.overcommit)
        for uid in state.pods:
            assert uid not in seen, f"pod {uid} on {seen[uid]} and {state.name}"
            seen[uid] = state.name
            assert ledger.entry(uid) is state.pods[uid]


def gpu_view(gpu: GpuState) -> tuple:
    """A GPU's state independent of the order tenants arrived in."""
    return gpu.info, gpu.shared, sorted(((s.pod, s.workload_class, sorted(s.cus), sorted(s.burst), s.memory,
                                          s.memory_limit) for s in gpu.slices), key=lambda t: t[0].uid)


def assert_rebuild_equal(ledger: Ledger, inventories: Mapping[str, list[GpuInfo]]) -> None:
    """(d): a ledger rebuilt from the assignment annotations equals the incremental one."""
    bound = []
    for state in ledger.nodes():
        for e in state.pods.values():
            parsed = parse_assignment(e.assignment.to_json())
            assert parsed == e.assignment
            bound.append((e.pod, parsed, e.compute_millis))
    rebuilt, problems = rebuild(inventories, bound, ledger.shared_fraction, ledger.overcommit)
    assert problems == []
    assert sorted(rebuilt.node_names()) == sorted(ledger.node_names())
    for name in ledger.node_names():
        a, b = ledger.node(name), rebuilt.node(name)
        assert [gpu_view(g) for g in a.gpus] == [gpu_view(g) for g in b.gpus]
        assert {u: (e.assignment, e.compute_millis) for u, e in a.pods.items()} == {
            u: (e.assignment, e.compute_millis) for u, e in b.pods.items()}
    for ns in {e.pod.namespace for s in ledger.nodes() for e in s.pods.values()}:
        assert rebuilt.usage(ns) == ledger.usage(ns)


# --- strategies ----------------------------------------------------------------------------------

@st.composite
def gpu_infos(draw: st.DrawFn, node: str, count: int) -> list[GpuInfo]:
    out = []
    for i in range(count):
        model = draw(st.sampled_from(["MI300X", "MI250X"]))
        xcds = draw(st.sampled_from([1, 2, 4, 8]))
        cus = draw(st.sampled_from([32, 40, 64, 80, 110, 304]))
        mem = draw(st.sampled_from([8, 16, 64, 192])) * GI
        healthy = draw(st.integers(0, 9)) > 0  # mostly healthy
        out.append(GpuInfo(index=i, id=f"{node}-{i:x}", model=model, computeUnits=cus, xcds=xcds,
                           shaderEngines=4 * xcds, memoryBytes=mem, healthy=healthy))
    return out


policies = st.builds(
    lambda frac, rounding, over, maxmb, budget: parse_policy({
        "burst": {"sharedFraction": frac}, "rounding": {"mode": rounding},
        "overcommit": {"memory": over},
        "classes": {"maxMemoryBoundPerGpu": maxmb, "bandwidthBudget": budget}}),
    st.sampled_from([0.0, 0.125, 0.25, 0.5]),
    st.sampled_from(["exact", "balanced", "powerOfTwo"]), st.sampled_from([1.0, 1.5]),
    st.sampled_from([None, 1, 2]), st.sampled_from([None, 1.0]))


@st.composite
def slice_requests(draw: st.DrawFn, max_count: int = 2) -> SliceRequest:
    millis = draw(st.one_of(st.sampled_from([10, 50, 100, 125, 250, 333, 500]), st.integers(1, 1000)))
    limit = draw(st.integers(min_value=millis, max_value=1000))
    mem = draw(st.integers(min_value=1, max_value=24)) * GI // 2
    mem_limit = mem + draw(st.sampled_from([0, 0, GI, 8 * GI]))
    return SliceRequest(vendor="amd", compute_millis=millis, compute_limit_millis=limit, memory_bytes=mem,
                        memory_limit_bytes=mem_limit, count=draw(st.integers(min_value=1, max_value=max_count)),
                        workload_class=draw(st.sampled_from(CLASSES)))


UIDS = [f"u{i}" for i in range(8)]
NODES = ["n0", "n1"]


@dataclass
class Expected:
    pod: PodRef
    assignment: Assignment
    expires_at: float | None


class LedgerMachine(RuleBasedStateMachine):
    """Random operations on one Ledger, checked against a plain model of what it must hold."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.model: dict[str, Expected] = {}
        self.fresh = 0
        self.solver = SolverPlacer()

    @initialize(data=st.data(), policy=policies)
    def setup(self, data: st.DataObject, policy: Policy) -> None:
        self.policy = policy
        self.ledger = Ledger(policy.burst.sharedFraction, policy.overcommit.memory, self.clock)
        self.inventories = {n: data.draw(gpu_infos(n, data.draw(st.integers(1, 3)))) for n in NODES}
        for name, gpus in self.inventories.items():
            self.ledger.set_node(name, gpus)

    # --- helpers ---
    def states(self) -> dict[str, NodeState]:
        return {n: self.ledger.node(n) for n in NODES}

    def reserve(self, uid: str, a: Assignment, cls: str, millis: int, ttl: float | None) -> None:
        pod = PodRef(uid, "ns-" + uid[-1:] if uid[-1:] in "01" else "ns-x", uid)
        self.ledger.reserve(pod, a, cls, millis, ttl)
        self.model[uid] = Expected(pod, a, None if ttl is None else self.clock() + ttl)

    # --- rules ---
    @rule(uid=st.sampled_from(UIDS), node=st.sampled_from(NODES), req=slice_requests(),
          ttl=st.sampled_from([None, 5.0, 30.0]), solver=st.booleans())
    def place(self, uid: str, node: str, req: SliceRequest, ttl: float | None, solver: bool) -> None:
        """An assignment from the engine's placement (greedy, or the CP-SAT bind placer) always fits
        the ledger it was computed on."""
        placer = self.solver if solver else evaluate
        fit = placer(req, self.ledger.node(node).without(uid), self.policy)
        event(f"place: {'fits' if fit.ok else fit.category}")
        if not fit.ok:
            assert fit.reason and fit.category
            return
        assert len(fit.choices) == req.count
        a = build_assignment(req, node, fit.choices, self.policy)
        self.reserve(uid, a, req.workload_class, req.compute_millis, ttl)

    @rule(uid=st.sampled_from(UIDS), node=st.sampled_from(NODES), data=st.data())
    def adversarial(self, uid: str, node: str, data: st.DataObject) -> None:
        """Hand-made assignments: overlapping CUs, stolen burst CUs, over-capacity memory, wrong GPUs.
        The ledger either takes one whole (and the invariants still hold) or changes nothing."""
        state = self.ledger.node(node)
        gpus = []
        for gpu in data.draw(st.lists(st.sampled_from(state.gpus), min_size=1, max_size=2, unique_by=id)):
            total = gpu.info.computeUnits
            others = [s for g in state.gpus for s in g.slices if s.pod.uid != uid]
            pool = [frozenset(range(total))] + [s.cus for s in others] + [s.burst for s in others if s.burst]
            source = sorted(data.draw(st.sampled_from(pool)) | {data.draw(st.integers(0, total + 2))})
            cus = frozenset(data.draw(st.lists(st.sampled_from(source), min_size=1, max_size=40)))
            burst = frozenset(data.draw(st.lists(st.sampled_from(sorted(gpu.shared | {0, total - 1})),
                                                 max_size=8))) - cus
            mem = data.draw(st.sampled_from([1, GI, gpu.memory_free, gpu.memory_free + 1, gpu.info.memoryBytes]))
            mem = max(mem, 1)
            limit = mem + data.draw(st.sampled_from([0, GI, gpu.info.memoryBytes]))
            gid = data.draw(st.sampled_from([gpu.info.id] * 5 + ["0xbogus"]))
            index = data.draw(st.sampled_from([gpu.info.index] * 5 + [7]))
            gpus.append(GpuAssignment(index, gid, cus, burst, mem, limit))
        assume(len({g.index for g in gpus}) == len(gpus))
        a = Assignment(node, tuple(gpus), data.draw(st.sampled_from(CLASSES)), "hand-made")
        before = self.states()
        model = dict(self.model)
        try:
            self.reserve(uid, a, a.workload_class, 100, data.draw(st.sampled_from([None, 10.0])))
            event("adversarial: accepted")
        except LedgerConflict as exc:
            event(f"adversarial: rejected ({str(exc).split(': ', 1)[-1][:24]})")
            assert self.states() == before and self.model == model
            for n in NODES:
                assert self.ledger.node(n).to_dict() == before[n].to_dict()

    @rule(node=st.sampled_from(NODES), req=slice_requests(), ttl=st.sampled_from([None, 5.0]))
    def reserve_then_release(self, node: str, req: SliceRequest, ttl: float | None) -> None:
        """(c) on a pod the ledger has never seen: release gives back exactly the state before."""
        self.fresh += 1
        uid = f"fresh-{self.fresh}"
        fit = evaluate(req, self.ledger.node(node), self.policy)
        if not fit.ok:
            return
        before = self.states()
        usage = self.ledger.usage("ns-x")
        self.reserve(uid, build_assignment(req, node, fit.choices, self.policy), req.workload_class,
                     req.compute_millis, ttl)
        assert self.ledger.node(node) != before[node]
        assert self.ledger.release(uid)
        del self.model[uid]
        after = self.states()
        assert after == before
        for n in NODES:
            assert after[n].gpus == before[n].gpus and after[n].to_dict() == before[n].to_dict()
        assert self.ledger.usage("ns-x") == usage
        assert self.ledger.entry(uid) is None

    @rule(uid=st.sampled_from(UIDS))
    def release(self, uid: str) -> None:
        """(c) for any tenant: the state afterwards is the state before without that pod."""
        expected = {n: s.without(uid) for n, s in self.states().items()}
        assert self.ledger.release(uid) == (uid in self.model)
        self.model.pop(uid, None)
        for n, s in self.states().items():
            assert s == expected[n] and s.to_dict() == expected[n].to_dict()

    @rule(uid=st.sampled_from(UIDS))
    def commit(self, uid: str) -> None:
        assert self.ledger.commit(uid) == (uid in self.model)
        if uid in self.model:
            self.model[uid].expires_at = None

    @rule(dt=st.sampled_from([0.0, 1.0, 5.0, 10.0, 31.0]))
    def tick_and_expire(self, dt: float) -> None:
        self.clock.now += dt
        due = [u for u, e in self.model.items() if e.expires_at is not None and e.expires_at <= self.clock.now]
        total = self.ledger.expired_total
        assert self.ledger.expire() == len(due)
        assert self.ledger.expired_total == total + len(due)
        for u in due:
            del self.model[u]
            assert self.ledger.entry(u) is None

    @rule(fraction=st.sampled_from([0.0, 0.125, 0.25, 0.5]))
    def policy_changes_the_burst_region(self, fraction: float) -> None:
        """Tenants keep their CUs; later placements must avoid bursts that now lie outside the region."""
        self.policy = self.policy.model_copy(update={"burst": self.policy.burst.model_copy(
            update={"sharedFraction": fraction})})
        before = {n: [g.slices for g in s.gpus] for n, s in self.states().items()}
        self.ledger.set_burst_fraction(fraction)
        assert {n: [g.slices for g in s.gpus] for n, s in self.states().items()} == before

    @rule(node=st.sampled_from(NODES), data=st.data())
    def gpu_health_changes(self, node: str, data: st.DataObject) -> None:
        gpus = self.inventories[node]
        i = data.draw(st.integers(0, len(gpus) - 1))
        gpus[i] = replace(gpus[i], healthy=not gpus[i].healthy)
        before = [g.slices for g in self.ledger.node(node).gpus]
        self.ledger.set_node(node, gpus)
        assert [g.slices for g in self.ledger.node(node).gpus] == before
        assert self.ledger.node(node).gpu(i).info.healthy == gpus[i].healthy

    @rule()
    def rebuild_equals_incremental(self) -> None:
        assert_rebuild_equal(self.ledger, self.inventories)

    # --- invariants ---
    @invariant()
    def invariants_hold(self) -> None:
        if not hasattr(self, "ledger"):
            return
        check_ledger(self.ledger)
        held = {uid: e for s in self.ledger.nodes() for uid, e in s.pods.items()}
        assert set(held) == set(self.model)
        for uid, exp in self.model.items():
            assert held[uid].assignment == exp.assignment and held[uid].expires_at == exp.expires_at
        usage: dict[str, list[int]] = {}
        for exp in self.model.values():
            u = usage.setdefault(exp.pod.namespace, [0, 0])
            u[0] += sum(g.memoryBytes for g in exp.assignment.gpus)
            u[1] += 1
        for ns in ("ns-0", "ns-1", "ns-x"):
            got = self.ledger.usage(ns)
            assert [got.memory, got.tenants] == usage.get(ns, [0, 0])


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=120, stateful_step_count=30, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# --- reservations: replacement and expiry ---------------------------------------------------------

def mi300x(node: str, n: int = 2) -> list[GpuInfo]:
    return [GpuInfo(i, f"{node}-gpu{i}", "MI300X", 304, 8, 32, 192 * GI, True) for i in range(n)]


def one_gpu_assignment(node: str, cus: range, mem: int = 8 * GI, index: int = 0) -> Assignment:
    return Assignment(node, (GpuAssignment(index, f"{node}-gpu{index}", frozenset(cus), frozenset(), mem, mem),),
                      "memory-bound", "test")


@pytest.fixture
def two_nodes() -> tuple[Ledger, FakeClock]:
    clock = FakeClock()
    ledger = Ledger(0.125, 1.0, clock)
    ledger.set_node("a", mi300x("a"))
    ledger.set_node("b", mi300x("b"))
    return ledger, clock


def test_a_repeated_reserve_on_the_same_node_replaces_the_earlier_one(two_nodes: tuple[Ledger, FakeClock]) -> None:
    ledger, _ = two_nodes
    pod = PodRef("u1", "ns", "p1")
    ledger.reserve(pod, one_gpu_assignment("a", range(0, 32)), "memory-bound", 100, ttl=30)
    # Overlapping its own earlier CUs is fine: the earlier entry is gone first.
    ledger.reserve(pod, one_gpu_assignment("a", range(16, 80), 4 * GI), "memory-bound", 200, ttl=30)
    gpu = ledger.node("a").gpu(0)
    assert gpu.guaranteed == frozenset(range(16, 80)) and gpu.memory_used == 4 * GI
    assert ledger.usage("ns").tenants == 1 and ledger.usage("ns").memory == 4 * GI
    assert ledger.usage("ns").compute_millis == 200
    check_ledger(ledger)


def test_a_repeated_reserve_on_another_node_moves_the_pod(two_nodes: tuple[Ledger, FakeClock]) -> None:
    ledger, _ = two_nodes
    pod = PodRef("u1", "ns", "p1")
    empty_a = ledger.node("a")
    ledger.reserve(pod, one_gpu_assignment("a", range(0, 32)), "memory-bound", 100, ttl=30)
    ledger.reserve(pod, one_gpu_assignment("b", range(0, 32)), "memory-bound", 100, ttl=30)
    assert ledger.node("a") == empty_a
    assert ledger.entry("u1").assignment.node == "b"
    assert ledger.usage("ns").tenants == 1
    check_ledger(ledger)
    assert ledger.release("u1") and not ledger.release("u1")
    assert ledger.usage("ns").tenants == 0


def test_a_failed_repeated_reserve_keeps_the_earlier_one(two_nodes: tuple[Ledger, FakeClock]) -> None:
    ledger, _ = two_nodes
    ledger.reserve(PodRef("other", "ns", "o"), one_gpu_assignment("b", range(0, 64)), "memory-bound", 100, None)
    pod = PodRef("u1", "ns", "p1")
    ledger.reserve(pod, one_gpu_assignment("a", range(0, 32)), "memory-bound", 100, ttl=30)
    with pytest.raises(LedgerConflict):
        ledger.reserve(pod, one_gpu_assignment("b", range(32, 96)), "memory-bound", 100, ttl=30)
    assert ledger.entry("u1").assignment.node == "a"
    assert ledger.usage("ns").tenants == 2 and ledger.conflicts_total == 1


def test_a_reservation_never_committed_expires_and_is_counted(two_nodes: tuple[Ledger, FakeClock]) -> None:
    ledger, clock = two_nodes
    empty = ledger.node("a")
    ledger.reserve(PodRef("u1", "ns", "p1"), one_gpu_assignment("a", range(0, 32)), "memory-bound", 100, ttl=30)
    ledger.reserve(PodRef("u2", "ns", "p2"), one_gpu_assignment("a", range(32, 64)), "memory-bound", 100, ttl=30)
    assert ledger.node("a").to_dict()["reservations"] == ["ns/p1", "ns/p2"]
    assert ledger.commit("u2")
    clock.now += 29.9
    assert ledger.expire() == 0
    clock.now += 0.1
    assert ledger.expire() == 1 and ledger.expired_total == 1
    assert ledger.entry("u1") is None and ledger.entry("u2") is not None
    assert ledger.snapshot()["expiredReservations"] == 1
    assert ledger.release("u2") and ledger.node("a") == empty
    clock.now += 1000
    assert ledger.expire() == 0 and ledger.expired_total == 1
    assert not ledger.commit("u1")


def test_the_engine_expires_stale_reservations_on_its_own_clock() -> None:
    clock = FakeClock()
    cluster = MemoryCluster()
    cluster.add_node(NodeView("a", annotations={INVENTORY_ANNOTATION: format_inventory(mi300x("a", 1))}))
    engine = Engine(cluster, PolicyStore(parse_policy({"reservations": {"ttlSeconds": 5}})), clock=clock)
    engine.sync()
    engine.ledger.reserve(PodRef("ghost", "ns", "g"), one_gpu_assignment("a", range(0, 256)), "memory-bound",
                          900, ttl=5)
    pod = PodView("u1", "ns", "p1", annotations={"gpuslice.io/compute": "500m", "gpuslice.io/memory": "1Gi"})
    assert engine.filter(pod, names=["a"]).passed == []  # the ghost holds the CUs
    clock.now += 6
    assert engine.filter(pod, names=["a"]).passed == ["a"]
    assert engine.ledger.expired_total == 1


# --- (e) concurrent binds through the Engine ------------------------------------------------------

class SlowCluster(MemoryCluster):
    """MemoryCluster whose bind takes a moment, so that binds overlap."""

    def bind_pod(self, pod: PodView, node: str, annotations: Mapping[str, str]) -> None:
        time.sleep(random.random() * 0.002)
        super().bind_pod(pod, node, annotations)


@contextmanager
def fast_thread_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def pod_annotations(req: SliceRequest) -> dict[str, str]:
    return {"gpuslice.io/compute": f"{req.compute_millis}m", "gpuslice.io/computeLimit": f"{req.compute_limit_millis}m",
            "gpuslice.io/memory": str(req.memory_bytes), "gpuslice.io/memoryLimit": str(req.memory_limit_bytes),
            "gpuslice.io/count": str(req.count), "gpuslice.io/class": req.workload_class}


def run_threads(n: int, work: list[list], fn) -> None:  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(items: list) -> None:
        barrier.wait()
        try:
            for item in items:
                fn(item)
        except BaseException as exc:  # surface thread failures in the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(work[i],)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors


def assert_cluster_matches_ledger(engine: Engine, cluster: MemoryCluster) -> None:
    check_ledger(engine.ledger)
    for pod in cluster.list_pods():
        entry = engine.ledger.entry(pod.uid)
        if pod.node_name:
            assert entry is not None, f"{pod.key} is bound to {pod.node_name} but the ledger forgot it"
            assert not entry.reserved
            assert parse_assignment(pod.annotations[ASSIGNMENT_ANNOTATION]) == entry.assignment
            assert entry.assignment.node == pod.node_name
        else:
            assert entry is None, f"{pod.key} is not bound but holds {entry}"
            assert ASSIGNMENT_ANNOTATION not in pod.annotations


@pytest.mark.parametrize("solver", [False, True], ids=["greedy-bind", "cp-sat-bind"])
@given(reqs=st.lists(slice_requests(max_count=2), min_size=10, max_size=40),
       n_nodes=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_concurrent_filter_and_bind_never_double_allocate(solver: bool, reqs: list[SliceRequest], n_nodes: int,
                                                          seed: int) -> None:
    rng = random.Random(seed)
    cluster = SlowCluster()
    nodes = [f"n{i}" for i in range(n_nodes)]
    for name in nodes:
        cluster.add_node(NodeView(name, annotations={INVENTORY_ANNOTATION: format_inventory(mi300x(name, 2))}))
    pods = [PodView(f"uid-{i}", f"ns{i % 3}", f"p{i}", annotations=pod_annotations(r)) for i, r in enumerate(reqs)]
    for p in pods:
        cluster.add_pod(p)
    engine = Engine(cluster, PolicyStore(parse_policy({"classes": {"maxMemoryBoundPerGpu": None}})),
                    bind_placer=SolverPlacer() if solver else None)
    engine.sync()
    results: dict[str, list[str]] = {}
    lock = threading.Lock()

    def schedule(pod: PodView) -> None:
        passed = engine.filter(pod, names=nodes).passed
        if not passed:
            return
        node = rng.choice(passed)
        err = engine.bind(pod.namespace, pod.name, pod.uid, node)
        with lock:
            results.setdefault(pod.uid, []).append(err)

    # Every pod is scheduled twice, by different threads at about the same time (a retried bind).
    work: list[list] = [[] for _ in range(8)]
    for i, p in enumerate(pods):
        work[i % 8].append(p)
        work[(i + 3) % 8].append(p)
    with fast_thread_switching():
        run_threads(8, work, schedule)
    assert_cluster_matches_ledger(engine, cluster)
    bound = [p for p in cluster.list_pods() if p.node_name]
    assert len(bound) == sum(1 for errs in results.values() if "" in errs)
    assert engine.stats.binds["ok"] >= len(bound)
    # A fresh extender rebuilt from the cluster's annotations sees the same ledger.
    fresh = Engine(cluster, PolicyStore(engine.policies.current))
    assert fresh.sync() == []
    inventories = {n: mi300x(n, 2) for n in nodes}
    assert_rebuild_equal(engine.ledger, inventories)
    for n in nodes:
        assert [gpu_view(g) for g in fresh.ledger.node(n).gpus] == [gpu_view(g) for g in engine.ledger.node(n).gpus]


def test_many_threads_binding_onto_one_gpu_share_it_exactly() -> None:
    """48 pods of 32 CUs (100m rounded to a balanced 32) race for one MI300X: exactly 8 fit in the 272 CUs
    outside the burst region; the rest fail cleanly and hold nothing."""
    cluster = SlowCluster()
    cluster.add_node(NodeView("a", annotations={INVENTORY_ANNOTATION: format_inventory(mi300x("a", 1))}))
    pods = [PodView(f"u{i}", "ns", f"p{i}", annotations={"gpuslice.io/compute": "100m",
                                                           "gpuslice.io/memory": "20Gi",
                                                           "gpuslice.io/class": "compute-bound"})
            for i in range(48)]
    for p in pods:
        cluster.add_pod(p)
    engine = Engine(cluster, PolicyStore())
    engine.sync()
    errors: list[str] = []

    def bind(pod: PodView) -> None:
        errors.append(engine.bind(pod.namespace, pod.name, pod.uid, "a"))

    with fast_thread_switching():
        run_threads(12, [pods[i::12] for i in range(12)], bind)
    assert errors.count("") == 8
    assert all("gpu 0" in e for e in errors if e)
    assert_cluster_matches_ledger(engine, cluster)
    assert len(engine.ledger.node("a").gpu(0).guaranteed) == 256


def test_a_bind_whose_reservation_expired_meanwhile_is_still_recorded() -> None:
    """The cluster is the source of truth: a bind that the API accepted after the pod's reservation
    expired must still be in the ledger, or its CUs would be handed out twice."""
    clock = FakeClock()

    class LateCluster(MemoryCluster):
        def bind_pod(self, pod: PodView, node: str, annotations: Mapping[str, str]) -> None:
            clock.now += 120  # the API call outlived the reservation's TTL
            engine.ledger.expire()
            super().bind_pod(pod, node, annotations)

    cluster = LateCluster()
    cluster.add_node(NodeView("a", annotations={INVENTORY_ANNOTATION: format_inventory(mi300x("a", 1))}))
    cluster.add_pod(PodView("u1", "ns", "p1", annotations={"gpuslice.io/compute": "500m",
                                                           "gpuslice.io/memory": "1Gi"}))
    engine = Engine(cluster, PolicyStore(), clock=clock)
    engine.sync()
    assert engine.bind("ns", "p1", "u1", "a") == ""
    assert_cluster_matches_ledger(engine, cluster)


def test_a_failed_retry_on_another_node_does_not_free_the_bound_slice() -> None:
    """kube-scheduler may retry a bind (timeout) on another node while the first is in flight. The
    loser's rollback must not free the winner's slice."""
    gate = threading.Event()
    entered = threading.Event()

    class GatedCluster(MemoryCluster):
        def bind_pod(self, pod: PodView, node: str, annotations: Mapping[str, str]) -> None:
            if node == "a":
                super().bind_pod(pod, node, annotations)  # the first bind lands in the API...
                entered.set()
                gate.wait(5)  # ...but its response is slow
                return
            super().bind_pod(pod, node, annotations)

    cluster = GatedCluster()
    for n in ("a", "b"):
        cluster.add_node(NodeView(n, annotations={INVENTORY_ANNOTATION: format_inventory(mi300x(n, 1))}))
    cluster.add_pod(PodView("u1", "ns", "p1", annotations={"gpuslice.io/compute": "500m",
                                                           "gpuslice.io/memory": "1Gi"}))
    engine = Engine(cluster, PolicyStore())
    engine.sync()
    first: list[str] = []
    t = threading.Thread(target=lambda: first.append(engine.bind("ns", "p1", "u1", "a")))
    t.start()
    assert entered.wait(5)
    second = engine.bind("ns", "p1", "u1", "b")  # the retry, while the first is in flight
    gate.set()
    t.join(5)
    assert first == [""] and "already in flight" in second
    assert_cluster_matches_ledger(engine, cluster)
    third = engine.bind("ns", "p1", "u1", "b")  # a late retry once the first has landed
    assert "already bound to a" in third
    assert engine.bind("ns", "p1", "u1", "a") == ""  # idempotent on the node it is bound to
    assert_cluster_matches_ledger(engine, cluster)
    assert engine.ledger.entry("u1").assignment == parse_assignment(
        cluster.get_pod("ns", "p1").annotations[ASSIGNMENT_ANNOTATION])


def test_commit_and_release_of_a_replaced_reservation_leave_the_newer_one(
        two_nodes: tuple[Ledger, FakeClock]) -> None:
    ledger, _ = two_nodes
    pod = PodRef("u1", "ns", "p1")
    first, second = one_gpu_assignment("a", range(0, 32)), one_gpu_assignment("b", range(0, 32))
    ledger.reserve(pod, first, "memory-bound", 100, ttl=30)
    ledger.reserve(pod, second, "memory-bound", 100, ttl=30)
    assert not ledger.commit("u1", first) and not ledger.release("u1", first)
    assert ledger.entry("u1").assignment == second and ledger.entry("u1").reserved
    assert ledger.commit("u1", second) and not ledger.entry("u1").reserved
    assert ledger.release("u1", second) and ledger.entry("u1") is None
    assert ledger.usage("ns").tenants == 0
    check_ledger(ledger)


def test_bind_errors_from_the_cluster_roll_back() -> None:
    class Refusing(MemoryCluster):
        def bind_pod(self, pod: PodView, node: str, annotations: Mapping[str, str]) -> None:
            raise BindError("conflict", temporary=True)

    cluster = Refusing()
    cluster.add_node(NodeView("a", annotations={INVENTORY_ANNOTATION: format_inventory(mi300x("a", 1))}))
    cluster.add_pod(PodView("u1", "ns", "p1", annotations={"gpuslice.io/compute": "500m",
                                                           "gpuslice.io/memory": "1Gi"}))
    engine = Engine(cluster, PolicyStore())
    engine.sync()
    before = engine.ledger.node("a")
    assert engine.bind("ns", "p1", "u1", "a") == "conflict"
    assert engine.ledger.node("a") == before and engine.ledger.entry("u1") is None
