"""A column store of every GPU in the ledger, for questions asked of thousands of nodes at once.

Each node owns one slot: a row of width `width` (GPUs in index order, the rest invalid) in every
column. The ledger writes a node's row whenever it replaces that node's state, under that node's
lock; readers take `table` once and never lock. A reader may see a row half-written (a stale
answer, which bind re-checks under the node lock), but never arrays that change size: growing
builds a new table and swaps the reference.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from extender.core.ledger import GpuState, NodeState

MEMORY_BOUND_CLASS = "memory-bound"
COMPUTE_BOUND_CLASS = "compute-bound"

RUNS = 8  # free CU runs kept per GPU; a GPU with more is flagged and answered the slow way
SLOT_LISTS = 8  # name lists whose slots are remembered (see GpuIndex.slots_of)
SLOT_LIST_BYTES = 16 * 2**20  # and the most name text they may hold together (request bodies are anyone's)

# One int64 per field per GPU (booleans as 0/1), then RUNS run lengths and RUNS run starts.
FIELDS = ("valid", "healthy", "gpu", "free", "total", "used", "shared", "slices", "mem_bound", "compute_bound",
          "model", "topo", "nruns", "mem_free", "mem_bytes", "mem_used", "limit_used", "atom_free")
RUN_LENGTHS = len(FIELDS)  # where the run lengths start in a GPU's row
_WIDTH = len(FIELDS) + 2 * RUNS


@dataclass
class Table:
    width: int
    slots: dict[str, int]
    data: np.ndarray  # [field, slot, gpu]: each field contiguous, for the readers' column operations
    # [slot]: the index's `writes` when the slot's row last changed (after the row), so that a reader that read
    # a stamp before the rows can keep what it works out from them until the stamp moves.
    stamps: np.ndarray

    @property
    def cols(self) -> dict[str, np.ndarray]:
        return {name: self.data[i] for i, name in enumerate(FIELDS)}


class Slots(NamedTuple):
    slots: np.ndarray  # per name: its slot, -1 for a name not in the index; read-only (shared between callers)
    layout: int  # GpuIndex.layout when the names were looked up (for remember_slots)


def _empty(capacity: int, width: int) -> Table:
    return Table(width, {}, np.zeros((_WIDTH, capacity, width), np.int64), np.zeros(capacity, np.int64))


class GpuIndex:
    """Per-GPU columns of the current state of every node (see the module doc)."""

    def __init__(self, capacity: int = 64, width: int = 8) -> None:
        self.table = _empty(capacity, width)
        self.models: dict[tuple[str, int, int], int] = {}  # (model name, CUs, XCDs) -> id
        self.model_keys: list[tuple[str, int, int]] = []
        self.topos: dict[object, int] = {}  # topology key (hive id, else NUMA node) -> id; None -> -1
        self._free_slots: list[int] = []
        self._rows: dict[int, tuple[GpuState, ...]] = {}  # slot -> the GPU states written there
        self._next = 0
        self._lock = threading.RLock()
        # Odd while a write is under way; a reader that sees the same even value before and after its
        # reads read rows that match the node states of that moment.
        self.writes = 0
        # Bumped after every change of which name holds which slot (growing the table keeps them): slot
        # lists remembered under an older value are not used.
        self.layout = 0
        self._slot_lists: OrderedDict[tuple[str, ...], tuple[int, np.ndarray]] = OrderedDict()
        self._slot_list_bytes = 0
        self._slot_lists_lock = threading.Lock()
        self._name_ranks: tuple[int, np.ndarray] | None = None  # (layout, per slot: rank of its name)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the index while a node's state and its rows change together."""
        with self._lock:
            self.writes += 1
            try:
                yield
            finally:
                self.writes += 1

    def put(self, state: NodeState) -> None:
        with self.writing():
            t = self.table
            if len(state.gpus) > t.width or (state.name not in t.slots and not self._free_slots
                                            and self._next >= t.data.shape[1]):
                t = self._grow(max(t.width, len(state.gpus)))
            slot = t.slots.get(state.name)
            if slot is None:
                slot = self._free_slots.pop() if self._free_slots else self._take()
                self._rows.pop(slot, None)
            self._write(t, slot, state.gpus)
            if state.name not in t.slots:
                t.slots[state.name] = slot
                self.layout += 1  # after the change: a reader that looked names up before it keeps nothing

    def remove(self, name: str) -> None:
        with self.writing():
            t = self.table
            slot = t.slots.pop(name, None)
            if slot is not None:
                t.data[0, slot, :] = 0
                t.stamps[slot] = self.writes
                self._rows.pop(slot, None)
                self._free_slots.append(slot)
                self.layout += 1

    def slots_of(self, names: Sequence[str]) -> Slots:
        """Each name's slot. The answers for the last few name lists are remembered: kube-scheduler asks
        about the same list more than once (prioritize gets the list filter passed, see remember_slots)."""
        key = tuple(names)
        layout, table = self.layout, self.table  # the layout first: a change after it makes the answer unused
        with self._slot_lists_lock:
            known = self._slot_lists.get(key)
            if known is not None and known[0] == layout:
                self._slot_lists.move_to_end(key)
                return Slots(known[1], layout)
        slots = np.fromiter(map(table.slots.get, key, repeat(-1)), np.int64, len(key))
        self._keep(key, slots, layout)
        return Slots(slots, layout)

    def remember_slots(self, names: Sequence[str], slots: np.ndarray, layout: int) -> None:
        """Remember `slots` as the slots of `names`, looked up (via slots_of) when the layout was `layout`."""
        self._keep(tuple(names), np.array(slots, np.int64), layout)

    def name_ranks(self, layout: int) -> np.ndarray | None:
        """Per slot, the rank of its node's name among all names in the index (-1: no node), for the
        layout `layout` (None when the layout has changed since): ordering nodes by it orders them by
        name without comparing strings. Worked out once per layout."""
        with self._slot_lists_lock:
            known = self._name_ranks
            if known is not None and known[0] == layout == self.layout:
                return known[1]
            items = sorted(self.table.slots.items())  # read after the layout, as slots_of reads
            if layout != self.layout:
                return None
            ranks = np.full(max((slot for _, slot in items), default=-1) + 1, -1, np.int64)
            ranks[[slot for _, slot in items]] = np.arange(len(items))
            ranks.flags.writeable = False
            self._name_ranks = (layout, ranks)
            return ranks

    def _keep(self, key: tuple[str, ...], slots: np.ndarray, layout: int) -> None:
        slots.flags.writeable = False
        size = _names_bytes(key)
        if size > SLOT_LIST_BYTES:
            return
        with self._slot_lists_lock:
            if layout != self.layout:  # the names moved meanwhile
                return
            if key in self._slot_lists:
                self._slot_list_bytes -= size
            self._slot_lists[key] = (layout, slots)
            self._slot_list_bytes += size
            self._slot_lists.move_to_end(key)
            while len(self._slot_lists) > SLOT_LISTS or self._slot_list_bytes > SLOT_LIST_BYTES:
                old, _ = self._slot_lists.popitem(last=False)
                self._slot_list_bytes -= _names_bytes(old)

    @property
    def kept_bytes(self) -> int:
        """Name text held by the remembered slot lists."""
        return self._slot_list_bytes

    @property
    def used(self) -> int:
        """Slots below this may hold a node; the rest are empty."""
        return self._next

    def _take(self) -> int:
        self._next += 1
        return self._next - 1

    def _grow(self, width: int) -> Table:
        old = self.table
        capacity = old.data.shape[1]
        if self._next >= capacity:
            capacity *= 2
        new = _empty(capacity, width)
        new.data[:, :old.data.shape[1], :old.width] = old.data
        new.stamps[:len(old.stamps)] = old.stamps
        new.slots = dict(old.slots)
        self.table = new
        return new

    def _write(self, t: Table, slot: int, gpus: tuple[GpuState, ...]) -> None:
        """Rewrite the slot's GPUs that changed (states are immutable: an unchanged GPU is the same object)."""
        data = t.data
        prev = self._rows.get(slot, ())
        for pos, g in enumerate(gpus):
            if pos < len(prev) and prev[pos] is g:
                continue
            info = g.info
            counts = g.class_counts
            rs = g.free_runs[:RUNS]
            pad = [0] * (RUNS - len(rs))
            data[:, slot, pos] = [
                1, info.healthy, info.index, len(g.free_cus), info.computeUnits, g.used_cus, len(g.shared),
                len(g.slices), counts.get(MEMORY_BOUND_CLASS, 0), counts.get(COMPUTE_BOUND_CLASS, 0),
                self._model(info.model, info.computeUnits, info.xcds),
                self._topo(info.hiveId if info.hiveId is not None else info.numaNode), len(g.free_runs),
                g.memory_free, info.memoryBytes, g.memory_used, g.memory_limit_used, g.free_atom_cus,
                *(length for _, length in rs), *pad, *(start for start, _ in rs), *pad]
        data[0, slot, len(gpus):] = 0
        t.stamps[slot] = self.writes
        self._rows[slot] = gpus

    def _model(self, model: str, cus: int, xcds: int) -> int:
        key = (model, cus, xcds)
        mid = self.models.get(key)
        if mid is None:
            mid = self.models[key] = len(self.model_keys)
            self.model_keys.append(key)
        return mid

    def _topo(self, key: object) -> int:
        if key is None:
            return -1
        tid = self.topos.get(key)
        if tid is None:
            tid = self.topos[key] = len(self.topos)
        return tid


def _names_bytes(names: tuple[str, ...]) -> int:
    """About what a kept name list costs: its text, and a tuple slot and str header per name."""
    return sum(map(len, names)) + 64 * len(names)
