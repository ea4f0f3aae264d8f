"""The `gpuslice.io/assignment` pod annotation: where a pod's slice lives (the source of truth)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from extender.core.bounds import (
    MAX_ANNOTATION_BYTES,
    MAX_BYTES,
    MAX_CUS,
    MAX_GPU_INDEX,
    MAX_GPUS,
    MAX_NAME_CHARS,
    OutOfBounds,
)
from extender.core.cuset import compact
from extender.core.errors import AssignmentError
from extender.core.interning import shared_int, shared_str
from extender.core.rangelist import format_ranges, parse_ranges

ASSIGNMENT_ANNOTATION = "gpuslice.io/assignment"
CLASSES = ("memory-bound", "compute-bound")


@dataclass(frozen=True, slots=True)
class GpuAssignment:
    index: int
    id: str
    cus: frozenset[int]
    burstCus: frozenset[int]
    memoryBytes: int
    memoryLimitBytes: int

    def __post_init__(self) -> None:
        # Held for the pod's lifetime by the ledger: one bit mask each, not a frozenset (see core/cuset.py).
        object.__setattr__(self, "cus", compact(self.cus))
        object.__setattr__(self, "burstCus", compact(self.burstCus))

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "id": self.id, "cus": format_ranges(self.cus),
                "burstCus": format_ranges(self.burstCus), "memoryBytes": self.memoryBytes,
                "memoryLimitBytes": self.memoryLimitBytes}


@dataclass(frozen=True, slots=True)
class Assignment:
    node: str
    gpus: tuple[GpuAssignment, ...]
    workload_class: str
    policy: str
    assignedAt: str = field(default_factory=lambda: now_rfc3339())

    def to_dict(self) -> dict[str, object]:
        return {"node": self.node, "gpus": [g.to_dict() for g in self.gpus], "class": self.workload_class,
                "policy": self.policy, "assignedAt": self.assignedAt}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


def now_rfc3339() -> str:
    # Kept in every assignment the ledger holds: the pods of one second share one string.
    return shared_str(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def _int(obj: dict, key: str, where: str, minimum: int = 0, maximum: int = MAX_BYTES) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AssignmentError(f"{where}.{key}", value, f"must be an integer >= {minimum}")
    if value > maximum:
        raise AssignmentError(f"{where}.{key}", value, str(OutOfBounds(f"more than {maximum}")))
    return value


def _cus(obj: dict, key: str, where: str, limit: int) -> frozenset[int]:
    try:
        return parse_ranges(obj.get(key, ""), limit)
    except ValueError as exc:
        raise AssignmentError(f"{where}.{key}", obj.get(key), str(exc)) from None


def parse_assignment(text: str, cu_limit: int = MAX_CUS) -> Assignment:
    """Strictly parse an assignment annotation; AssignmentError names the bad field. CU ids must be
    below `cu_limit` (the ledger then holds them to each GPU's own count)."""
    where = ASSIGNMENT_ANNOTATION
    if isinstance(text, str) and len(text) > MAX_ANNOTATION_BYTES:
        raise AssignmentError(where, text[:64] + "...", str(OutOfBounds(f"longer than {MAX_ANNOTATION_BYTES}")))
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError, RecursionError, ValueError) as exc:
        raise AssignmentError(where, text, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AssignmentError(where, text, "must be a JSON object")
    node = data.get("node")
    if not isinstance(node, str) or not node or len(node) > MAX_NAME_CHARS:
        raise AssignmentError(f"{where}.node", node, "must be a node name")
    cls = data.get("class")
    if cls not in CLASSES:
        raise AssignmentError(f"{where}.class", cls, f"must be one of {', '.join(CLASSES)}")
    raw_gpus = data.get("gpus")
    if not isinstance(raw_gpus, list) or not raw_gpus:
        raise AssignmentError(f"{where}.gpus", raw_gpus, "must be a non-empty list")
    if len(raw_gpus) > MAX_GPUS:
        raise AssignmentError(f"{where}.gpus", len(raw_gpus), str(OutOfBounds(f"more than {MAX_GPUS} GPUs")))
    gpus = []
    for i, g in enumerate(raw_gpus):
        w = f"{where}.gpus[{i}]"
        if not isinstance(g, dict):
            raise AssignmentError(w, g, "must be an object")
        gid = g.get("id")
        if not isinstance(gid, str) or len(gid) > MAX_NAME_CHARS:
            raise AssignmentError(f"{w}.id", gid, "must be a string (a GPU id)")
        cus = _cus(g, "cus", w, cu_limit)
        if not cus:
            raise AssignmentError(f"{w}.cus", g.get("cus"), "a slice guarantees at least one CU")
        burst = _cus(g, "burstCus", w, cu_limit)
        if cus & burst:
            raise AssignmentError(f"{w}.burstCus", g.get("burstCus"), "overlaps the guaranteed cus")
        mem = _int(g, "memoryBytes", w, 1)
        limit = _int(g, "memoryLimitBytes", w, 1)
        if limit < mem:
            raise AssignmentError(f"{w}.memoryLimitBytes", limit, "less than memoryBytes")
        gpus.append(GpuAssignment(index=_int(g, "index", w, maximum=MAX_GPU_INDEX), id=sys.intern(gid),
                                  cus=cus, burstCus=burst,
                                  memoryBytes=shared_int(mem), memoryLimitBytes=shared_int(limit)))
    if len({g.index for g in gpus}) != len(gpus):
        raise AssignmentError(f"{where}.gpus", [g.index for g in gpus], "a GPU index repeats")
    policy = data.get("policy", "")
    assigned = data.get("assignedAt", "")
    if not isinstance(policy, str) or not isinstance(assigned, str):
        raise AssignmentError(where, data, "policy and assignedAt must be strings")
    # Names, ids and times repeat across the pods of a node (the ledger keeps 100,000s): one string each.
    return Assignment(node=sys.intern(node), gpus=tuple(gpus), workload_class=sys.intern(cls),
                      policy=sys.intern(policy), assignedAt=sys.intern(assigned))


class ParsedAnnotations(Mapping[str, str]):
    """A pod's annotations with its assignment held parsed instead of as text: the watch cache keeps
    every bound pod, and the ledger records the very same Assignment object, so each slice is held
    once (the text, ~400 bytes a pod, is not kept). Reading the assignment key gives its canonical
    JSON (Assignment.to_json, what bind writes), which parses back to the same Assignment."""

    __slots__ = ("_others", "assignment")

    def __init__(self, others: Mapping[str, str], assignment: Assignment) -> None:
        self._others = others  # every annotation but the assignment
        self.assignment = assignment

    @classmethod
    def of(cls, annotations: Mapping[str, str],
           share: Callable[[dict[str, str]], Mapping[str, str]] | None = None) -> Mapping[str, str]:
        """`annotations` with the assignment parsed; unchanged when there is none or it does not parse
        (the engine then reports the error when it reads it, as for any pod). `share`, if given, is
        applied to the map kept (the other annotations, or all of them)."""
        text = annotations.get(ASSIGNMENT_ANNOTATION)
        if text is not None:
            try:
                assignment = parse_assignment(text)
            except AssignmentError:
                pass
            else:
                others = {k: v for k, v in annotations.items() if k != ASSIGNMENT_ANNOTATION}
                return cls(share(others) if share else others, assignment)
        return share(annotations) if share and isinstance(annotations, dict) else annotations

    def share(self, assignment: Assignment) -> None:
        """Hold `assignment` instead of the equal one parsed: the ledger's own, recorded by the bind
        before the watch showed the pod bound, so that the slice is held once, not twice."""
        if assignment is not self.assignment and assignment == self.assignment:
            self.assignment = assignment

    def __getitem__(self, key: str) -> str:
        if key == ASSIGNMENT_ANNOTATION:
            return self.assignment.to_json()
        return self._others[key]

    def __contains__(self, key: object) -> bool:
        return key == ASSIGNMENT_ANNOTATION or key in self._others

    def __iter__(self) -> Iterator[str]:
        yield from self._others
        yield ASSIGNMENT_ANNOTATION

    def __len__(self) -> int:
        return len(self._others) + 1

    def __repr__(self) -> str:
        return f"ParsedAnnotations({dict(self)!r})"


def assignment_in(annotations: Mapping[str, str]) -> Assignment:
    """The assignment these annotations carry: the one held parsed (ParsedAnnotations), else parsed
    from the text. Raises AssignmentError (or KeyError when there is none)."""
    if isinstance(annotations, ParsedAnnotations):
        return annotations.assignment
    return parse_assignment(annotations[ASSIGNMENT_ANNOTATION])
