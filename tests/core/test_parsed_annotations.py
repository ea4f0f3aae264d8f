"""A watched pod's annotations hold its assignment parsed (ParsedAnnotations): read like the plain
annotations, and the ledger records that very object (the slice is held once, issue 14 point 3)."""

from __future__ import annotations

import copy
import json

from extender.core.assignment import (
    ASSIGNMENT_ANNOTATION,
    Assignment,
    ParsedAnnotations,
    assignment_in,
    parse_assignment,
)
from extender.kube.views import pod_view
from tests.core.test_assignment import sample
from tests.kube.test_watch_events import bound_pod, setup


def test_reads_like_the_plain_annotations() -> None:
    text = sample().to_json()
    plain = {"gpuslice.io/compute": "250m", ASSIGNMENT_ANNOTATION: text, "other": "x"}
    held = ParsedAnnotations.of(plain)
    assert isinstance(held, ParsedAnnotations)
    assert held == plain and dict(held) == plain and len(held) == 3
    assert held[ASSIGNMENT_ANNOTATION] == text and held.get("other") == "x" and "missing" not in held
    assert ASSIGNMENT_ANNOTATION in held and sorted(held) == sorted(plain)
    assert assignment_in(held) is held.assignment and assignment_in(plain) == held.assignment


def test_without_a_parsable_assignment_the_annotations_stay_as_they_are() -> None:
    for plain in ({"a": "b"}, {ASSIGNMENT_ANNOTATION: "{not json"}, {ASSIGNMENT_ANNOTATION: '{"node": ""}'}):
        assert ParsedAnnotations.of(plain) is plain


def test_a_non_canonical_text_reads_back_as_the_same_assignment() -> None:
    a = sample()
    spaced = json.dumps(json.loads(a.to_json()), indent=2)
    held = ParsedAnnotations.of({ASSIGNMENT_ANNOTATION: spaced})
    assert parse_assignment(held[ASSIGNMENT_ANNOTATION]) == a == held.assignment  # type: ignore[attr-defined]


def test_the_ledger_records_the_watched_pods_own_assignment_object() -> None:
    api, engine, watch, _ = setup()
    pod = bound_pod(api, engine, watch, "p")
    view = pod_view(copy.deepcopy(pod))
    assert isinstance(view.annotations, ParsedAnnotations)
    engine.forget_pod(view.uid)  # as if first seen bound (after a restart): recorded from the view
    engine.observe_pod(view)
    entry = engine.ledger.entry(view.uid)
    assert entry is not None and entry.assignment is view.annotations.assignment
    engine.sync()  # a relist records the cached views' objects too
    cached = engine.cluster.get_pod("default", "p")
    assert cached is not None and engine.ledger.entry(view.uid).assignment is cached.annotations.assignment


def test_watched_pods_with_the_same_labels_and_keys_share_one_map_each() -> None:
    def wire(uid: str, node: str) -> dict:
        a = sample()
        text = Assignment(node=node, gpus=a.gpus, workload_class=a.workload_class, policy=a.policy,
                          assignedAt=a.assignedAt).to_json()
        return {"metadata": {"uid": uid, "namespace": "ns", "name": uid, "labels": {"app": "llm", "hash": "7f"},
                             "annotations": {"gpuslice.io/compute": "250m", ASSIGNMENT_ANNOTATION: text}},
                "spec": {"nodeName": node}}

    one, two = pod_view(wire("u1", "node-a")), pod_view(wire("u2", "node-b"))
    assert one.labels == two.labels == {"app": "llm", "hash": "7f"} and one.labels is two.labels
    assert isinstance(one.annotations, ParsedAnnotations) and isinstance(two.annotations, ParsedAnnotations)
    assert one.annotations._others is two.annotations._others  # the slices differ, the rest is shared
    assert one.annotations.assignment.node == "node-a" and two.annotations.assignment.node == "node-b"
    other = pod_view({**wire("u3", "node-a"), "metadata": {"uid": "u3", "labels": {"app": "other"}}})
    assert other.labels == {"app": "other"} and other.annotations == {}


def test_a_bound_pods_watched_view_holds_the_ledgers_assignment_object() -> None:
    """The bind records its slice before the watch shows the pod bound: the view the watch then caches
    holds the ledger's object, not an equal second copy (there was a second one per pod bound since the
    extender started, which grew RSS under churn)."""
    api, engine, watch, _ = setup()
    bound_pod(api, engine, watch, "p")
    cached = engine.cluster.get_pod("default", "p")
    assert cached is not None and isinstance(cached.annotations, ParsedAnnotations)
    entry = engine.ledger.entry(cached.uid)
    assert entry is not None and not entry.reserved
    assert cached.annotations.assignment is entry.assignment
    assert cached.annotations[ASSIGNMENT_ANNOTATION] == entry.assignment.to_json()
