"""Bounded input (issue 12): every value read from a pod, node, annotation or policy file is checked
against core/bounds.py before it is expanded or converted, refused with its key, in microseconds."""

from __future__ import annotations

import json
import time

import pytest

from extender.core.assignment import parse_assignment
from extender.core.errors import AssignmentError, InventoryError, SliceRequestError
from extender.core.inventory import inventory_for_node, parse_inventory
from extender.core.policy import PolicyError, load_policy_text, parse_policy
from extender.core.quantity import parse_bytes, parse_millis, parse_quantity
from extender.core.rangelist import parse_ranges
from extender.core.requests import parse_slice_request

REFUSED = "beyond gpuslice's bound"
POLICY = parse_policy({})


def _assignment(cus: str) -> str:
    return json.dumps({"node": "n0", "class": "memory-bound", "policy": "p", "assignedAt": "",
                       "gpus": [{"index": 0, "id": "n0/gpu0", "cus": cus, "burstCus": "",
                                 "memoryBytes": 1, "memoryLimitBytes": 1}]})


def test_cu_ranges_are_bounded_before_expansion() -> None:
    with pytest.raises(ValueError, match=REFUSED):
        parse_ranges("0-99999")
    with pytest.raises(ValueError, match=REFUSED):
        parse_ranges("0-303", limit=304 - 1)
    assert parse_ranges("0-303", limit=304) == frozenset(range(304))
    start = time.perf_counter()
    with pytest.raises(AssignmentError, match=r"gpus\[0\]\.cus.*" + REFUSED):
        parse_assignment(_assignment("0-99999999999999999999"))
    assert time.perf_counter() - start < 0.05


def test_assignment_bounds_gpus_and_memory() -> None:
    data = json.loads(_assignment("0-3"))
    data["gpus"][0]["memoryBytes"] = data["gpus"][0]["memoryLimitBytes"] = 2**64
    with pytest.raises(AssignmentError, match=REFUSED):
        parse_assignment(json.dumps(data))
    data = json.loads(_assignment("0-3"))
    data["gpus"] = [dict(data["gpus"][0], index=i, id=f"g{i}") for i in range(65)]
    with pytest.raises(AssignmentError, match=REFUSED):
        parse_assignment(json.dumps(data))


@pytest.mark.parametrize("text", ["1e300000", "1e999999", "1e1000000", "9" * 5000, "1e4300", "1e-40"])
def test_quantity_exponents_and_lengths_are_refused_fast(text: str) -> None:
    # this thread's CPU time, not wall time (a loaded machine stalls the wall clock); expanding such a
    # number instead of refusing it takes seconds to minutes, so the bound only needs to be far below that
    start = time.thread_time()
    for parse in (parse_quantity, parse_bytes, parse_millis):
        with pytest.raises(ValueError, match=REFUSED):
            parse(text)
    assert time.thread_time() - start < 0.5


def test_memory_beyond_the_bound_is_a_refused_request() -> None:
    for text in ("8Ei", "9Ei", "1e25"):
        with pytest.raises(SliceRequestError, match=r"gpuslice.io/memory.*" + REFUSED):
            parse_slice_request({}, {"gpuslice.io/compute": "100m", "gpuslice.io/memory": text}, POLICY)


def test_huge_compute_is_a_request_error_not_an_overflow() -> None:
    with pytest.raises(SliceRequestError, match="gpuslice.io/compute"):
        parse_slice_request({}, {"gpuslice.io/compute": "1e1000000", "gpuslice.io/memory": "1Gi"}, POLICY)


@pytest.mark.parametrize(("labels", "alloc", "key"), [
    ({}, {"amd.com/gpu": "100000"}, "amd.com/gpu"),
    ({"amd.com/gpu.cu-count": "3040000"}, {"amd.com/gpu": "1"}, "amd.com/gpu.cu-count"),
    ({"amd.com/gpu.cu-count": "9" * 5000}, {"amd.com/gpu": "1"}, "amd.com/gpu.cu-count"),
    ({"amd.com/gpu.vram": "1e300000"}, {"amd.com/gpu": "1"}, "amd.com/gpu.vram"),
])
def test_node_labels_are_bounded(labels: dict, alloc: dict, key: str) -> None:
    start = time.perf_counter()
    with pytest.raises(InventoryError, match=key.replace(".", r"\.") + ".*" + REFUSED):
        inventory_for_node("n0", labels, {}, alloc, POLICY)
    assert time.perf_counter() - start < 0.05


def test_inventory_annotation_is_bounded() -> None:
    gpu = {"index": 0, "id": "g", "model": "MI300X", "computeUnits": 304, "xcds": 8, "shaderEngines": 32,
           "memoryBytes": 2**30, "healthy": True}
    with pytest.raises(InventoryError, match=REFUSED):
        parse_inventory(json.dumps([dict(gpu, computeUnits=3040)] * 1 + [dict(gpu, index=1, id="h",
                                                                               computeUnits=40000)]))
    with pytest.raises(InventoryError, match=REFUSED):
        parse_inventory(json.dumps([dict(gpu, index=i, id=str(i)) for i in range(100)]))
    with pytest.raises(InventoryError, match=REFUSED):
        parse_inventory(json.dumps([dict(gpu, memoryBytes=2**64)]))


def test_error_messages_do_not_carry_the_whole_value() -> None:
    with pytest.raises(AssignmentError) as info:
        parse_assignment("x" * 100_000)
    assert len(str(info.value)) < 1000


BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"]
                 + [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefg", "bcdefgh", strict=True)])


def test_yaml_alias_bomb_is_refused_at_once_with_a_short_error() -> None:
    start = time.perf_counter()
    with pytest.raises(PolicyError) as info:
        load_policy_text(BOMB)
    assert time.perf_counter() - start < 0.5
    assert "alias" in str(info.value)
    assert len(str(info.value)) < 2000


def test_policy_text_size_is_bounded() -> None:
    with pytest.raises(PolicyError, match=REFUSED):
        load_policy_text("# " + "x" * (2 * 2**20))
