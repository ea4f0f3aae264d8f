"""`scoring.candidates.maxNodes`: filter passes at most that many nodes; of nodes tied at the cut, a
stable hash of the pod's UID and the node's name chooses (engine/candidates.py). On by default with 16
nodes, so on identical empty nodes (where every node ties for best) kube-scheduler gets 16 names back,
not all of them, and different pods get different tied nodes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.policy import DEFAULT_CANDIDATES, Policy, PolicyError, parse_policy
from extender.engine.candidates import at_most, candidate_mask, tied_pick
from extender.engine.cluster import NodeView, PodView
from extender.engine.fragmentation import narrow
from extender.engine.scheduler import Engine
from tests.engine.nodes import engine_on

NAMES = [f"node-{i:03d}" for i in range(40)]


def _engine(policy: Policy, names: list[str] = NAMES) -> Engine:
    return engine_on(policy, names, 8)


def _pod(uid: str, millis: int = 100) -> PodView:
    return PodView(uid, "default", uid, annotations={"gpuslice.io/compute": f"{millis}m", "gpuslice.io/memory": "4Gi"})


def _filter(engine: Engine, uid: str) -> list[str]:
    pod = _pod(uid)
    engine.cluster.add_pod(pod)  # type: ignore[attr-defined]
    return engine.filter(pod, names=NAMES).passed


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, 10.0, math.inf]),
                          st.floats(0, 10, allow_nan=False)), min_size=0, max_size=40),
       st.sampled_from([0.0, 0.05, 0.5, 3.0]), st.integers(1, 12), st.one_of(st.none(), st.integers(1, 12)),
       st.text(min_size=1, max_size=8))
def test_the_numpy_mask_is_narrow_then_at_most(values: list[float], tolerance: float, min_nodes: int,
                                               max_nodes: int | None, uid: str) -> None:
    names = [f"n{i}" for i in range(len(values))]
    if max_nodes is not None:
        max_nodes = max(max_nodes, min_nodes)
    rule = dict(zip(names, values, strict=True))
    want = at_most(rule, narrow(rule, tolerance, min_nodes), max_nodes, uid)
    got = candidate_mask(np.array(values, np.float64), names, tolerance, min_nodes, max_nodes, uid)
    assert {n for n, keep in zip(names, got.tolist(), strict=True) if keep} == want
    # given each name's rank in name order ("n10" before "n2"), the same mask without the names
    rank_of = {n: i for i, n in enumerate(sorted(names))}
    ranks = np.array([rank_of[n] for n in names], np.int64)
    ranked = candidate_mask(np.array(values, np.float64), names, tolerance, min_nodes, max_nodes, uid, ranks)
    assert ranked.tolist() == got.tolist()


def test_at_most_keeps_the_best_then_a_run_of_the_tied_in_name_order() -> None:
    values = {"a": 0.0, "d": 1.0, "b": 1.0, "c": 1.0, "e": 2.0}
    starts = set()
    for uid in (f"pod-{i}" for i in range(12)):
        kept = at_most(values, set(values), 3, uid)
        tied = sorted(kept - {"a"})
        assert "a" in kept and len(tied) == 2 and tied in (["b", "c"], ["c", "d"], ["b", "d"])
        starts.add(tuple(tied))
    assert len(starts) == 3  # where the run starts depends on the pod
    assert at_most(values, set(values), None, "pod-1") == set(values)
    assert at_most(values, {"a", "b"}, 3, "pod-1") == {"a", "b"}


def test_the_tied_pick_does_not_depend_on_the_order_nodes_come_in() -> None:
    names = [f"n{i:02d}" for i in range(30)]
    picked = {names[i] for i in tied_pick("pod-x", names, 5)}
    shuffled = names[7:] + names[:7]
    assert {shuffled[i] for i in tied_pick("pod-x", shuffled, 5)} == picked


def test_the_index_ranks_nodes_in_name_order() -> None:
    names = [f"node-{i}" for i in (5, 12, 1, 30, 2)]  # "node-12" sorts before "node-2"
    engine = _engine(parse_policy({}, "test"), names)
    ranks = engine._name_ranks(names)
    assert ranks is not None and [names[i] for i in np.argsort(ranks)] == sorted(names)
    assert engine._name_ranks([*names, "node-unknown"]) is None  # not in the index: the cap sorts names
    engine.cluster.add_node(NodeView("node-0", allocatable={"amd.com/gpu": "8"}))  # type: ignore[attr-defined]
    engine.sync()
    ranks = engine._name_ranks([*names, "node-0"])  # a new layout, ranked again
    assert ranks is not None and [[*names, "node-0"][i] for i in np.argsort(ranks)] == sorted([*names, "node-0"])


def test_on_by_default_with_several_nodes() -> None:
    cand = parse_policy({}, "test").scoring.candidates
    assert cand.enabled and cand.minNodes == cand.maxNodes == DEFAULT_CANDIDATES > 1


def test_identical_nodes_pass_the_cap_chosen_by_pod_and_the_same_for_the_same_pod() -> None:
    engine, again = _engine(parse_policy({}, "test")), _engine(parse_policy({}, "test"))
    first = _filter(engine, "pod-a")
    assert len(first) == DEFAULT_CANDIDATES
    assert _filter(again, "pod-a") == first  # another replica, the same candidates
    others = {tuple(_filter(engine, f"pod-{i}")) for i in range(8)}
    assert len(others) > 1  # pods spread over the tied nodes


def test_the_packed_node_stays_a_candidate_and_prioritize_scores_the_candidates() -> None:
    engine = _engine(parse_policy({"scoring": {"strategy": "binpack"}}, "test"))
    pod = _pod("first")
    engine.cluster.add_pod(pod)  # type: ignore[attr-defined]
    passed = engine.filter(pod, names=NAMES).passed
    node = passed[-1]
    assert engine.bind("default", "first", "first", node) == ""
    for i in range(10):
        nxt = _pod(f"next-{i}")
        engine.cluster.add_pod(nxt)  # type: ignore[attr-defined]
        result = engine.filter(nxt, names=NAMES)
        assert node in result.passed and len(result.passed) == DEFAULT_CANDIDATES
        assert sorted(result.passed + result.not_candidates) == NAMES and not result.failed
        scores = dict(engine.prioritize(nxt, names=result.passed))
        assert scores[node] == max(scores.values())
        fresh = dict(engine.prioritize(nxt, names=NAMES))  # not from filter's memo
        assert scores == {n: fresh[n] for n in result.passed}


def test_no_cap_passes_every_tied_node() -> None:
    engine = _engine(parse_policy({"scoring": {"candidates": {"minNodes": 1, "maxNodes": None}}}, "test"))
    assert _filter(engine, "pod-a") == NAMES


def test_off_passes_every_node() -> None:
    engine = _engine(parse_policy({"scoring": {"candidates": {"enabled": False}}}, "test"))
    assert _filter(engine, "pod-a") == NAMES


def test_cap_below_floor_is_refused_and_an_unset_cap_follows_the_floor() -> None:
    with pytest.raises(PolicyError, match="maxNodes"):
        parse_policy({"scoring": {"candidates": {"minNodes": 8, "maxNodes": 4}}}, "test")
    assert parse_policy({"scoring": {"candidates": {"minNodes": 40}}}, "test").scoring.candidates.maxNodes == 40


def test_fragmentation_candidates_are_capped_and_say_why() -> None:
    policy = parse_policy({"scoring": {"fragmentation": {"enabled": True},
                                       "candidates": {"tolerance": 0.0, "minNodes": 2, "maxNodes": 3}}}, "test")
    engine = _engine(policy)
    pod = _pod("frag")
    engine.cluster.add_pod(pod)  # type: ignore[attr-defined]
    result = engine.filter(pod, names=NAMES)
    assert len(result.passed) == 3
    assert all("maxNodes" in result.failed[n] for n in NAMES if n not in result.passed)
