"""A watched pod's annotations hold its assignment parsed (ParsedAnnotations): read like the plain
annotations, and the ledger records that very object (the slice is held once, issue 14 point 3)."""

from __future__ import annotations

import copy
import json

from extender.core.assignment import ASSIGNMENT_ANNOTATION, ParsedAnnotations, assignment_in, parse_assignment
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
