"""Remembered GPU scores (engine/score_memo.py) are the scores worked out again: after any sequence of
binds, departures, node changes, policy changes and resyncs, the memo's scores for a request over any subset of
nodes equal, bit for bit, `Columns.gpu_scores` worked out afresh from every node's row; and a node
keeps its scores until its row changes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.policy import parse_policy
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.placement import fit_key
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.engine.vectorised import Columns
from tests.engine.churn import play, steps_of

NODES = [f"n{i}" for i in range(6)]


def engine_of() -> Engine:
    cluster = MemoryCluster()
    for i, name in enumerate(NODES):
        gpus = 4 if i % 3 else 2
        cluster.add_node(NodeView(name, allocatable={"amd.com/gpu": str(gpus), "cpu": "16", "memory": "64Gi"}))
    engine = Engine(cluster, PolicyStore(parse_policy({}, "test")))
    engine.sync()
    return engine


def pod_of(uid: str, millis: int, count: int, gib: int, cls: str) -> PodView:
    ann = {"gpuslice.io/compute": f"{millis}m", "gpuslice.io/memory": f"{gib}Gi", "gpuslice.io/class": cls}
    if count > 1:
        ann["gpuslice.io/count"] = str(count)
    return PodView(uid, "default", uid, annotations=ann)


def check(engine: Engine, pod: PodView, names: list[str]) -> None:
    policy = engine.policies.current
    req = engine.request_of(pod, policy)[0]
    assert req is not None
    cols = engine._columns(req, policy, "check|" + fit_key(req, policy))
    slots = cols.slots(names).slots
    got = engine.score_memo.gpu_scores(cols, fit_key(req, policy), slots)
    fresh = Columns(req, policy, engine.ledger.gpu_index)
    want = fresh.gpu_scores(fresh.slots(names).slots)
    assert got[0].tobytes() == want[0].tobytes() and got[1].tobytes() == want[1].tobytes(), (names, got, want)


shapes = st.tuples(st.sampled_from([125, 250, 375, 500, 1000]), st.sampled_from([1, 1, 1, 2, 3]),
                   st.sampled_from([1, 8, 40, 100]), st.sampled_from(["compute-bound", "memory-bound"]))
steps = steps_of(shapes, NODES, st.tuples(st.just("node"), st.sampled_from(NODES), st.sampled_from([0, 2, 4])),
                 st.tuples(st.just("policy"), st.sampled_from(["binpack", "spread"])), st.tuples(st.just("resync")))


@settings(max_examples=80, deadline=None)
@given(steps)
def test_remembered_scores_are_the_scores_worked_out_afresh(plan: list[tuple]) -> None:
    engine = engine_of()
    cluster: MemoryCluster = engine.cluster  # type: ignore[assignment]

    def own(i: int, op: str, args: tuple) -> None:
        if op == "node":  # a node's GPUs change (or go): its row changes, or its slot empties
            view = NodeView(args[0], allocatable={"amd.com/gpu": str(args[1]), "cpu": "16", "memory": "64Gi"})
            cluster.add_node(view)
            engine.observe_node(view)
        elif op == "policy":
            engine.policies.update_text(f"scoring: {{strategy: {args[0]}}}\n", f"test-{i}")
        elif op == "resync":  # a new ledger, and a new GPU index whose stamps start afresh
            engine.sync()
        elif op == "ask":
            check(engine, pod_of(f"a{i}", *args[0]), args[1])
        # every step also asks about all nodes for one request: what is remembered is asked again later
        check(engine, pod_of(f"q{i}", 250, 1, 8, "compute-bound"), NODES)

    play(engine, plan, pod_of, NODES, own)


def test_a_node_keeps_its_scores_until_its_row_changes() -> None:
    engine = engine_of()
    policy = engine.policies.current
    worked: list[int] = []
    real = Columns.slot_scores

    def counted(self: Columns, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        worked.append(len(slots))
        return real(self, slots)

    Columns.slot_scores = counted  # type: ignore[method-assign]
    try:
        pod = pod_of("a", 250, 1, 8, "compute-bound")
        req = engine.request_of(pod, policy)[0]
        assert req is not None
        first = engine._column_scores(pod, req, policy, NODES, fit_key(req, policy))
        again = engine._column_scores(pod, req, policy, NODES, fit_key(req, policy))
        assert worked == [len(NODES)] and again.tobytes() == first.tobytes()
        other = pod_of("b", 250, 1, 8, "compute-bound")
        engine.cluster.add_pod(other)  # type: ignore[attr-defined]
        assert engine.bind("default", "b", "b", "n1") == ""
        engine._column_scores(pod, req, policy, NODES, fit_key(req, policy))
        assert worked == [len(NODES), 1]  # only the node the bind changed
    finally:
        Columns.slot_scores = real  # type: ignore[method-assign]
