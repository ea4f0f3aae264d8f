"""The `gpuslice.io/assignment` annotation: round trip and strict, field-naming rejection."""

from __future__ import annotations

import json

import pytest

from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, GpuAssignment, parse_assignment
from extender.core.errors import AssignmentError

GI = 2**30


def sample() -> Assignment:
    return Assignment(node="node-a", gpus=(
        GpuAssignment(0, "0x2c1d", frozenset(range(32)), frozenset(range(272, 304)), 8 * GI, 16 * GI),
        GpuAssignment(3, "0x77aa", frozenset(range(64, 80)) | frozenset(range(96, 112)), frozenset(), GI, GI),
    ), workload_class="compute-bound", policy="abcdef012345", assignedAt="2026-11-28T19:00:00Z")


def test_wire_form_is_the_design_one() -> None:
    data = json.loads(sample().to_json())
    assert data == {"node": "node-a", "class": "compute-bound", "policy": "abcdef012345",
                    "assignedAt": "2026-11-28T19:00:00Z",
                    "gpus": [{"index": 0, "id": "0x2c1d", "cus": "0-31", "burstCus": "272-303",
                              "memoryBytes": 8 * GI, "memoryLimitBytes": 16 * GI},
                             {"index": 3, "id": "0x77aa", "cus": "64-79,96-111", "burstCus": "",
                              "memoryBytes": GI, "memoryLimitBytes": GI}]}


def test_round_trip() -> None:
    a = sample()
    assert parse_assignment(a.to_json()) == a


def test_assigned_at_defaults_to_now_in_rfc3339() -> None:
    a = Assignment(node="n", gpus=sample().gpus, workload_class="memory-bound", policy="p")
    assert len(a.assignedAt) == 20 and a.assignedAt.endswith("Z") and a.assignedAt[10] == "T"


def mutated(path: list[object], value: object) -> str:
    data = json.loads(sample().to_json())
    target = data
    for p in path[:-1]:
        target = target[p]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(data)


DELETE = object()
W = ASSIGNMENT_ANNOTATION
BAD = [
    (mutated(["node"], ""), f"{W}.node", ""),
    (mutated(["node"], DELETE), f"{W}.node", None),
    (mutated(["node"], 7), f"{W}.node", 7),
    (mutated(["class"], "auto"), f"{W}.class", "auto"),
    (mutated(["class"], DELETE), f"{W}.class", None),
    (mutated(["gpus"], []), f"{W}.gpus", []),
    (mutated(["gpus"], {"index": 0}), f"{W}.gpus", {"index": 0}),
    (mutated(["gpus", 0], "gpu0"), f"{W}.gpus[0]", "gpu0"),
    (mutated(["gpus", 0, "id"], 5), f"{W}.gpus[0].id", 5),
    (mutated(["gpus", 1, "index"], -1), f"{W}.gpus[1].index", -1),
    (mutated(["gpus", 1, "index"], "3"), f"{W}.gpus[1].index", "3"),
    (mutated(["gpus", 1, "index"], True), f"{W}.gpus[1].index", True),
    (mutated(["gpus", 1, "index"], 0), f"{W}.gpus", [0, 0]),
    (mutated(["gpus", 0, "cus"], ""), f"{W}.gpus[0].cus", ""),
    (mutated(["gpus", 0, "cus"], DELETE), f"{W}.gpus[0].cus", None),
    (mutated(["gpus", 0, "cus"], "31-0"), f"{W}.gpus[0].cus", "31-0"),
    (mutated(["gpus", 0, "cus"], "0-31,16"), f"{W}.gpus[0].cus", "0-31,16"),
    (mutated(["gpus", 0, "cus"], [0, 1]), f"{W}.gpus[0].cus", [0, 1]),
    (mutated(["gpus", 0, "burstCus"], "x"), f"{W}.gpus[0].burstCus", "x"),
    (mutated(["gpus", 0, "burstCus"], "30-40"), f"{W}.gpus[0].burstCus", "30-40"),
    (mutated(["gpus", 0, "memoryBytes"], 0), f"{W}.gpus[0].memoryBytes", 0),
    (mutated(["gpus", 0, "memoryBytes"], "8Gi"), f"{W}.gpus[0].memoryBytes", "8Gi"),
    (mutated(["gpus", 0, "memoryBytes"], 1.5), f"{W}.gpus[0].memoryBytes", 1.5),
    (mutated(["gpus", 0, "memoryLimitBytes"], GI), f"{W}.gpus[0].memoryLimitBytes", GI),
    (mutated(["gpus", 0, "memoryLimitBytes"], DELETE), f"{W}.gpus[0].memoryLimitBytes", None),
    (mutated(["policy"], 1), W, None),
    (mutated(["assignedAt"], None), W, None),
    ("{not json", W, "{not json"),
    ("[]", W, "[]"),
    ("null", W, "null"),
]


@pytest.mark.parametrize(("text", "key", "value"), BAD, ids=[f"{k}:{t[:40]}" for t, k, _ in BAD])
def test_strict_rejection_names_the_field(text: str, key: str, value: object) -> None:
    with pytest.raises(AssignmentError) as err:
        parse_assignment(text)
    assert err.value.key == key
    if value is not None:
        assert err.value.value == value
    assert err.value.reason


def test_unknown_extra_keys_are_tolerated_for_forward_compatibility() -> None:
    data = json.loads(sample().to_json())
    data["solver"] = "cp-sat"
    assert parse_assignment(json.dumps(data)) == sample()
