"""Remembered rises (engine/fragmentation.py `_Remembered`) are the rises worked out again: after any
sequence of binds, departures, host-room changes and observed pods, the engine's rises for a request over
any subset of nodes equal, bit for bit, those worked out afresh from every node's row."""

from __future__ import annotations

from unittest.mock import patch

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.requests import SliceRequest
from extender.engine import fragmentation
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.fragmentation import (
    INFINITE,
    MixTable,
    Rows,
    _free_gpus,
    best_placements,
    deltas,
    host_delta,
    joint_delta,
    node_basis,
    rows_from_columns,
)
from extender.engine.placement import fit_key
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import PASS_THROUGH, Engine
from extender.engine.vectorised import Columns
from tests.engine.churn import play, steps_of
from tests.engine.test_fragmentation import _policy

GIB = 2**30
NODES = [f"n{i}" for i in range(6)]


def engine_of(remainders: str = "fgd") -> Engine:
    cluster = MemoryCluster()
    for i, name in enumerate(NODES):
        gpus = 4 if i % 3 else 2
        cluster.add_node(NodeView(name, allocatable={"amd.com/gpu": str(gpus), "cpu": "16", "memory": "64Gi"}))
    engine = Engine(cluster, PolicyStore(_policy(candidates={"enabled": True},
                                                 fragmentation={"enabled": True, "remainders": remainders})))
    engine.sync()
    return engine


def pod_of(uid: str, millis: int, count: int, gib: int, cpu: int) -> PodView:
    ann = {"gpuslice.io/compute": f"{millis}m", "gpuslice.io/memory": f"{gib}Gi"}
    if count > 1:
        ann["gpuslice.io/count"] = str(count)
    return PodView(uid, "default", uid, annotations=ann, cpu_millis=cpu, memory_bytes=gib * GIB)


def afresh(engine: Engine, pod: PodView, req: SliceRequest, names: list[str]) -> np.ndarray:
    """The rises the long way: every named node worked out at once, nothing remembered."""
    policy = engine.policies.current
    cols = Columns(req, policy, engine.ledger.gpu_index)
    slots = cols.slots(names).slots
    cpu, mem = engine.cluster.host_free(names)  # type: ignore[attr-defined]
    out = np.full(len(names), np.nan)
    have = slots >= 0
    table = engine.fragmentation.mix.table(policy, list(cols.keys))
    rows, need, whole, ok = rows_from_columns(cols, slots[have], (cpu[have], mem[have]))
    if need.shape[1] < req.count:
        out[have] = INFINITE
        return out
    value, _ = best_placements(table, rows, need, whole, ok, req.count, req.memory_bytes, pod.cpu_millis,
                               pod.memory_bytes)
    out[have] = value + policy.scoring.fragmentation.packTieBreak * _free_gpus(rows)
    return out


def afresh_host(engine: Engine, pod: PodView, names: list[str]) -> np.ndarray:
    """A pod without GPUs: the rise of its host share the long way (every node with free GPUs at once)."""
    policy = engine.policies.current
    cols = Columns(PASS_THROUGH, policy, engine.ledger.gpu_index)
    slots = cols.slots(names).slots
    cpu, mem = engine.cluster.host_free(names)  # type: ignore[attr-defined]
    out = np.where(slots >= 0, 0.0, np.nan)
    some = (slots >= 0) & ((cols.cols["valid"][slots] != 0) & (cols.cols["free"][slots] > 0)).any(axis=1)
    table = engine.fragmentation.mix.table(policy, list(cols.keys))
    if some.any():
        rows, _, _, _ = rows_from_columns(cols, slots[some], (cpu[some], mem[some]))
        tie = policy.scoring.fragmentation.packTieBreak * _free_gpus(rows)
        out[some] = host_delta(table, rows, pod.cpu_millis, pod.memory_bytes) + tie
    return out


shapes = st.tuples(st.sampled_from([125, 250, 375, 500, 1000]), st.sampled_from([1, 1, 1, 2, 3]),
                   st.sampled_from([1, 8, 40, 100]), st.sampled_from([0, 1000, 6000]))
steps = steps_of(shapes, NODES, st.tuples(st.just("observe"), shapes),
                 st.tuples(st.just("host"), st.sampled_from(NODES), st.sampled_from([500, 4000])))


@settings(max_examples=60, deadline=None)
@given(steps)
def test_remembered_rises_are_the_rises_worked_out_afresh(plan: list[tuple]) -> None:
    engine = engine_of()
    policy = engine.policies.current
    cluster: MemoryCluster = engine.cluster  # type: ignore[assignment]

    def own(i: int, op: str, args: tuple) -> None:
        if op == "observe":
            pod = pod_of(f"o{i}", *args[0])
            req = engine.request_of(pod, policy)[0]
            assert req is not None
            engine.observe_request(pod, req, policy)
        elif op == "host":  # a pod without GPUs takes host room: no GPU row changes
            cluster.add_pod(PodView(f"h{i}", "default", f"h{i}", node_name=args[0], phase="Running",
                                    cpu_millis=args[1], memory_bytes=GIB))
        elif op == "ask":
            pod = pod_of(f"a{i}", *args[0])
            req = engine.request_of(pod, policy)[0]
            assert req is not None
            names = args[1]
            got = engine.rises(pod, req, policy, names, fit_key(req, policy))
            want = afresh(engine, pod, req, names)
            assert got.tobytes() == want.tobytes(), (names, got, want)
            cpu_pod = PodView(f"c{i}", "default", f"c{i}", cpu_millis=args[0][3], memory_bytes=GIB)
            got = engine.rises(cpu_pod, None, policy, names, "")
            assert got.tobytes() == afresh_host(engine, cpu_pod, names).tobytes()
        # every step also asks about all nodes for one request: what is remembered is asked again later
        pod = pod_of(f"q{i}", 250, 1, 8, 1000)
        req = engine.request_of(pod, policy)[0]
        assert req is not None
        got = engine.rises(pod, req, policy, NODES, fit_key(req, policy))
        assert got.tobytes() == afresh(engine, pod, req, NODES).tobytes()

    play(engine, plan, pod_of, NODES, own)


def test_a_node_keeps_its_rise_until_its_row_changes() -> None:
    """What is remembered is used: asking again about unchanged nodes works out none of them."""
    engine = engine_of()
    policy = engine.policies.current
    pod = pod_of("a", 250, 1, 8, 1000)
    req = engine.request_of(pod, policy)[0]
    assert req is not None
    engine.observe_request(pod, req, policy)
    worked: list[int] = []
    frag = engine.fragmentation
    work = frag._worked_out

    def counted(*args: object) -> np.ndarray:
        worked.append(len(args[4]))  # type: ignore[arg-type]
        return work(*args)  # type: ignore[arg-type]

    frag._worked_out = counted  # type: ignore[method-assign]
    first = engine.rises(pod, req, policy, NODES, fit_key(req, policy))
    again = engine.rises(pod, req, policy, NODES, fit_key(req, policy))
    assert worked == [len(NODES)] and again.tobytes() == first.tobytes()
    other = pod_of("b", 250, 1, 8, 1000)
    engine.cluster.add_pod(other)  # type: ignore[attr-defined]
    assert engine.bind("default", "b", "b", "n1") == ""
    engine.rises(pod, req, policy, NODES, fit_key(req, policy))
    assert worked == [len(NODES), 1]  # only the node the bind changed


def _each_gpu(rows: Rows, need: np.ndarray, whole: np.ndarray, ok: np.ndarray) -> np.ndarray:
    return np.tile(np.arange(ok.shape[1]), (ok.shape[0], 1))


gpu_rows = st.integers(1, 5).flatmap(lambda n: st.tuples(*(st.lists(st.lists(values, min_size=4, max_size=4),
                                                                   min_size=n, max_size=n)
                                                          for values in (st.sampled_from([0, 38, 152, 266]),
                                                                         st.sampled_from([8, 100]),
                                                                         st.booleans(),
                                                                         st.sampled_from([38, 76, 304])))))


def _rows_and_mix(gpus: tuple, kinds: list[tuple[int, int, int]], need_cus: int
                  ) -> tuple[Rows, MixTable, np.ndarray, np.ndarray]:
    """MI300X rows from drawn (free CUs, free GiB, healthy, shared CUs) per GPU, a mix of equally weighted
    (CUs, GiB, GPUs) kinds, and the request's per-GPU need and whole-GPU take."""
    free, mem, healthy, shared = (np.array(x) for x in gpus)
    total = np.full(free.shape, 304)
    rows = Rows(healthy, np.zeros(free.shape, np.int64), total, free, total - shared, free == 304, mem * GIB,
                np.full(free.shape[0], 8000), np.full(free.shape[0], 64 * GIB))
    k = len(kinds)
    table = MixTable(1, np.array([[c for c, _, _ in kinds]]), np.array([g * GIB for _, g, _ in kinds]),
                     np.array([n for _, _, n in kinds]), np.full(k, 1000), np.zeros(k, np.int64),
                     np.full(k, 1 / k), 500.0)
    need = np.full(free.shape, need_cus)
    return rows, table, need, need >= total


@settings(max_examples=80, deadline=None)
@given(gpu_rows, st.lists(st.tuples(st.sampled_from([38, 76, 152, 304]), st.sampled_from([4, 40, 120]),
                                    st.sampled_from([1, 2])), min_size=1, max_size=5),
       st.sampled_from([38, 76, 304]), st.sampled_from([4, 40]))
def test_equal_gpus_worked_out_once_rise_as_each_worked_out(gpus: tuple, kinds: list[tuple[int, int, int]],
                                                             need_cus: int, gib: int) -> None:
    """deltas works out one GPU of each group of equal GPUs of a node: the rises are those of every GPU."""
    rows, table, need, whole = _rows_and_mix(gpus, kinds, need_cus)
    free = rows.free
    ok = rows.valid & np.where(whole, free == 304, free >= need) & (rows.mem_free >= gib * GIB)
    once = deltas(table, rows, need, whole, ok, gib * GIB, 1000, GIB)
    with patch.object(fragmentation, "_first_equal", _each_gpu):
        each = deltas(table, rows, need, whole, ok, gib * GIB, 1000, GIB)
    assert once.tobytes() == each.tobytes()


@settings(max_examples=80, deadline=None)
@given(gpu_rows, st.lists(st.tuples(st.sampled_from([38, 76, 152, 304]), st.sampled_from([4, 40, 120]),
                                    st.sampled_from([1, 2])), min_size=1, max_size=5),
       st.sampled_from([38, 76, 304]), st.sampled_from([4, 40]), st.data())
def test_joint_rise_is_f_after_less_f_before(gpus: tuple, kinds: list[tuple[int, int, int]], need_cus: int,
                                             gib: int, data: st.DataObject) -> None:
    """joint_delta works out again only the chosen GPUs' fits: its rise is F of the node as it is after the
    slice (node_basis of the rows after) less F before, bit for bit."""
    rows, table, need, whole = _rows_and_mix(gpus, kinds, need_cus)
    free, healthy, total = rows.free, rows.valid, rows.total
    chosen = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=4, max_size=4), min_size=free.shape[0],
                                         max_size=free.shape[0])))
    got = joint_delta(table, rows, chosen, need, whole, gib * GIB, 1000, GIB)
    free2 = np.where(chosen, np.where(whole, 0, free - need), free)
    after = Rows(healthy, rows.model, total, free2, rows.usable, rows.empty & ~chosen,
                 np.where(chosen, rows.mem_free - gib * GIB, rows.mem_free), rows.cpu_free - 1000,
                 rows.host_mem_free - GIB)
    want = node_basis(table, after).before - node_basis(table, rows).before
    assert got.tobytes() == want.tobytes()


def _carried_basis_checked(engine: Engine, pods: list[tuple[tuple, bool]]) -> list[bool]:
    """Filter (and bind, where asked) each pod; after each, the memo's basis of the nodes it holds is node_basis of
    their rows, bit for bit. Per carry (a mix snapshot): whether it kept the previous basis."""
    policy = engine.policies.current
    frag = engine.fragmentation
    kept: list[bool] = []
    carry = fragmentation._Remembered.carry

    def counted(self: fragmentation._Remembered, old: fragmentation._Remembered, cols: Columns) -> None:
        carry(self, old, cols)
        kept.append(self.basis is not None)

    with patch.object(fragmentation._Remembered, "carry", counted):
        for i, (shape, place) in enumerate(pods):
            pod = pod_of(f"p{i}", *shape)
            engine.cluster.add_pod(pod)  # type: ignore[attr-defined]
            passed = engine.filter(pod, names=NODES).passed  # the mix snapshots after 1, 2, 4, 8 pods
            if place and passed:
                assert engine.bind("default", pod.name, pod.uid, passed[0]) == ""
            memo = frag._memo
            if memo is None or memo.basis is None:
                continue
            req = engine.request_of(pod, policy)[0]
            assert req is not None
            cols = Columns(req, policy, engine.ledger.gpu_index)
            slots = np.flatnonzero((memo.stamp >= 0) & (memo.stamp == cols.table.stamps))
            room = memo.host[slots]
            rows, _, _, _ = rows_from_columns(cols, slots, (room[:, 0], room[:, 1]))
            want, got = node_basis(memo.table, rows), memo.basis.take(slots)
            for name in ("cap", "fits", "total", "usable", "n_fit", "before"):
                assert getattr(got, name).tobytes() == getattr(want, name).tobytes(), name
    return kept


few_shapes = st.sampled_from([(250, 1, 8, 1000), (125, 1, 40, 0), (500, 2, 100, 6000)])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(few_shapes, st.booleans()), min_size=2, max_size=10))
def test_a_carried_basis_is_the_basis_worked_out_afresh(pods: list[tuple[tuple, bool]]) -> None:
    """At a mix snapshot with no new kind the memo keeps, for the nodes that did not change, the kinds' weight-free
    columns and works out only F (_Remembered.carry): what it holds is node_basis of the rows, bit for bit."""
    _carried_basis_checked(engine_of(), pods)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(few_shapes, st.booleans()), min_size=2, max_size=10))
def test_a_carried_basis_under_the_waste_count_is_the_basis_worked_out_afresh(pods: list[tuple[tuple, bool]]) -> None:
    """The same with `remainders: waste`, whose F has a term per part-used GPU (_remainders) that carry must add."""
    _carried_basis_checked(engine_of("waste"), pods)


def test_a_snapshot_without_new_kinds_keeps_the_basis_and_one_with_a_new_kind_does_not() -> None:
    one, other = (250, 1, 8, 1000), (500, 2, 100, 6000)
    kept = _carried_basis_checked(engine_of(), [(one, True), (one, False), (one, True), (one, False)])
    assert kept == [True, True]  # snapshots after 2 and 4 pods: the same kind
    kept = _carried_basis_checked(engine_of(), [(one, True), (other, False)])
    assert kept == [False]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.lists(st.tuples(st.sampled_from([0, 38, 76, 152, 304, 400]),
                                             st.sampled_from([4, 40, 120]), st.sampled_from([1, 2])),
                                   min_size=1, max_size=6), st.data())
def test_fits_worked_out_once_per_distinct_gpu_are_the_fits_of_each(gpus: int, kinds: list[tuple[int, int, int]],
                                                                    data: st.DataObject) -> None:
    """_fits_of (each distinct GPU once, then gathered) is _fits GPU by GPU, whatever the columns."""
    def column(values: st.SearchStrategy) -> np.ndarray:
        return np.array(data.draw(st.lists(values, min_size=gpus, max_size=gpus)))

    k = len(kinds)
    table = MixTable(1, np.array([[c for c, _, _ in kinds], [c // 2 for c, _, _ in kinds]]),
                     np.array([g * GIB for _, g, _ in kinds]), np.array([n for _, _, n in kinds]),
                     np.full(k, 1000), np.zeros(k, np.int64), np.full(k, 1 / k))
    valid, model = column(st.booleans()), column(st.sampled_from([-1, 0, 1]))
    total, free = column(st.sampled_from([152, 304])), column(st.integers(-40, 304))
    empty, mem = column(st.booleans()), column(st.sampled_from([-GIB, 0, 4 * GIB, 40 * GIB, 200 * GIB]))
    want = fragmentation._fits(table, valid, total, table.need[np.maximum(model, 0)], free, empty, mem)
    with patch.object(fragmentation, "FEW_GPUS", 0):  # the gathered way even for a few GPUs
        got = fragmentation._fits_of(table, valid, model, total, free, empty, mem)
    assert got.tobytes() == want.tobytes()
