"""`scoring.candidates` under the binpack policy (fragmentation scoring off): filter passes only the
nodes prioritize scores within the tolerance of the best, at least `minNodes` (ties included), and
prioritize answers with those same scores (computed once per pod). The nodes left out are not in the
reply at all (kube-scheduler treats a node it does not get back as not feasible)."""

from __future__ import annotations

from extender.core.policy import Policy, parse_policy
from extender.engine.cluster import PodView
from extender.engine.scheduler import Engine
from tests.engine.nodes import engine_on

NAMES = [f"n{i}" for i in range(6)]


def _policy(**candidates: object) -> Policy:
    return parse_policy({"scoring": {"strategy": "binpack", "candidates": candidates}}, "test")


def _engine(policy: Policy) -> Engine:
    return engine_on(policy, NAMES, 2)


def _pod(uid: str, millis: int = 250) -> PodView:
    return PodView(uid, "default", uid, annotations={"gpuslice.io/compute": f"{millis}m", "gpuslice.io/memory": "8Gi"})


def _fill(engine: Engine) -> None:
    """Nodes in different states: n1 with two 500m tenants, n3 with one 250m, n5 with one 750m."""
    for uid, node, millis in (("a", "n1", 500), ("b", "n1", 500), ("c", "n3", 250), ("d", "n5", 750)):
        pod = _pod(uid, millis)
        engine.cluster.add_pod(pod)  # type: ignore[attr-defined]
        assert node in engine.filter(pod, names=[node]).passed
        assert engine.bind("default", uid, uid, node) == ""


def test_filter_passes_the_best_scored_nodes_and_prioritize_gives_their_scores() -> None:
    for min_nodes in (1, 2, 4, 6):
        narrowed, wide = _engine(_policy(enabled=True, tolerance=0.0, minNodes=min_nodes)), _engine(_policy())
        _fill(narrowed)
        _fill(wide)
        pod = _pod("new")
        assert wide.filter(pod, names=NAMES).passed == NAMES  # off: every node that fits passes
        full = dict(wide.prioritize(pod, names=NAMES))
        result = narrowed.filter(pod, names=NAMES)
        assert len(result.passed) >= min_nodes and not result.failed
        assert sorted(result.passed + result.not_candidates) == NAMES
        # the passed nodes are the best scored: none left out scores above any passed one
        assert all(full[f] <= full[p] for f in result.not_candidates for p in result.passed)
        assert result.not_candidates if min_nodes == 1 else True  # the nodes do not all score alike
        assert dict(narrowed.prioritize(pod, names=result.passed)) == {n: full[n] for n in result.passed}


def test_narrowing_is_off_when_filter_is_asked_not_to() -> None:
    engine = _engine(_policy(enabled=True, tolerance=0.0, minNodes=1))
    _fill(engine)
    assert engine.filter(_pod("new"), names=NAMES, narrow_candidates=False).passed == NAMES


def test_a_wide_tolerance_passes_every_node() -> None:
    engine = _engine(_policy(enabled=True, tolerance=1.0, minNodes=1))
    _fill(engine)
    assert engine.filter(_pod("new"), names=NAMES).passed == NAMES


def test_the_reply_leaves_the_other_nodes_out() -> None:
    from extender.http.wire import ParsedArgs, filter_reply  # noqa: PLC0415

    engine = _engine(_policy(enabled=True, tolerance=0.0, minNodes=1))
    _fill(engine)
    result = engine.filter(_pod("new"), names=NAMES)
    reply = filter_reply(ParsedArgs(_pod("new"), None, NAMES, {}), result)
    assert reply["NodeNames"] == result.passed and reply["FailedNodes"] == {}
