"""GpuIndex.slots_of remembers the slots of recent name lists; a remembered list must never outlive a
change of which name holds which slot (a node added, removed, its slot reused, the table grown)."""

from __future__ import annotations

import numpy as np
import pytest

from extender.core.ledger import Ledger
from extender.engine.demo import mi300x_inventory


def ledger_with(names: list[str]) -> Ledger:
    ledger = Ledger(0.125, 1.0)
    for name in names:
        ledger.set_node(name, mi300x_inventory(name))
    return ledger


def truth(ledger: Ledger, names: list[str]) -> list[int]:
    slots = ledger.gpu_index.table.slots
    return [slots.get(n, -1) for n in names]


def test_remembered_slots_follow_adds_removes_and_reused_slots() -> None:
    ledger = ledger_with(["a", "b", "c"])
    index = ledger.gpu_index
    names = ["c", "ghost", "a", "b"]
    first = index.slots_of(names)
    assert first.slots.tolist() == truth(ledger, names)
    assert index.slots_of(list(names)).slots is first.slots  # remembered: an equal list, not the same object
    with pytest.raises(ValueError):
        first.slots[0] = 7  # shared between callers: read-only

    ledger.set_node("ghost", mi300x_inventory("ghost"))  # a node added
    assert index.slots_of(names).slots.tolist() == truth(ledger, names) != first.slots.tolist()
    ledger.remove_node("a")  # a node removed ...
    assert index.slots_of(names).slots.tolist() == truth(ledger, names)
    assert index.slots_of(names).slots[2] == -1
    ledger.set_node("d", mi300x_inventory("d"))  # ... and its slot reused by another
    assert index.slots_of(["d", *names]).slots.tolist() == truth(ledger, ["d", *names])
    ledger.set_node("a", mi300x_inventory("a"))  # back, in a new slot
    assert index.slots_of(names).slots.tolist() == truth(ledger, names)


def test_rewriting_a_node_keeps_remembered_slots_and_growing_keeps_them_right() -> None:
    ledger = ledger_with([f"n{i}" for i in range(3)])
    index = ledger.gpu_index
    names = ["n0", "n1", "n2"]
    found = index.slots_of(names)
    ledger.set_node("n1", mi300x_inventory("n1", 4))  # same name, same slot: still remembered
    assert index.slots_of(names).slots is found.slots
    ledger.set_node("n2", mi300x_inventory("n2", 12))  # wider than the table: the table grows
    more = [f"m{i}" for i in range(100)]  # past the table's capacity: it grows again
    for name in more:
        ledger.set_node(name, mi300x_inventory(name))
    assert index.slots_of([*names, *more]).slots.tolist() == truth(ledger, [*names, *more])
    assert index.slots_of(names).slots.tolist() == truth(ledger, names)


def test_remember_slots_is_ignored_when_the_layout_moved_meanwhile() -> None:
    ledger = ledger_with(["a", "b"])
    index = ledger.gpu_index
    stale = index.slots_of(["a", "b"])
    ledger.remove_node("a")
    index.remember_slots(["b", "a"], np.array([stale.slots[1], stale.slots[0]]), stale.layout)
    assert index.slots_of(["b", "a"]).slots.tolist() == truth(ledger, ["b", "a"])
    fresh = index.slots_of(["b"])
    index.remember_slots(["b", "b"], np.array([fresh.slots[0]] * 2), fresh.layout)
    assert index.slots_of(["b", "b"]).slots.tolist() == [fresh.slots[0]] * 2
