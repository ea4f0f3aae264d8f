"""A column store of every GPU in the ledger, for questions asked of thousands of nodes at once.

Each node owns one slot: a row of width `width` (GPUs in index order, the rest invalid) in every
column. The ledger writes a node's row whenever it replaces that node's state, under that node's
lock; readers take `table` once and never lock. A reader may see a row half-written (a stale
answer, which bind re-checks under the node lock), but never arrays that change size: growing
builds a new table and swaps the reference.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from extender.core.ledger import GpuState, NodeState

MEMORY_BOUND_CLASS = "memory-bound"
COMPUTE_BOUND_CLASS = "compute-bound"

RUNS = 16  # free CU runs kept per GPU; a GPU with more is flagged and answered the slow way

_INT = ("free", "total", "used", "shared", "slices", "mem_bound", "compute_bound", "model", "topo", "nruns")
_BIG = ("mem_free", "mem_bytes", "mem_used", "limit_used")
_BOOL = ("valid", "healthy")


@dataclass
class Table:
    width: int
    slots: dict[str, int]
    cols: dict[str, np.ndarray]
    run_len: np.ndarray  # [slot, gpu, RUNS]
    run_start: np.ndarray


def _empty(capacity: int, width: int) -> Table:
    cols: dict[str, np.ndarray] = {}
    for name in _INT:
        cols[name] = np.zeros((capacity, width), np.int32)
    for name in _BIG:
        cols[name] = np.zeros((capacity, width), np.int64)
    for name in _BOOL:
        cols[name] = np.zeros((capacity, width), np.bool_)
    return Table(width, {}, cols, np.zeros((capacity, width, RUNS), np.int32),
                 np.zeros((capacity, width, RUNS), np.int32))


class GpuIndex:
    """Per-GPU columns of the current state of every node (see the module doc)."""

    def __init__(self, capacity: int = 64, width: int = 8) -> None:
        self.table = _empty(capacity, width)
        self.models: dict[tuple[str, int], int] = {}  # (model name, CUs) -> id
        self.model_keys: list[tuple[str, int]] = []
        self.topos: dict[object, int] = {}  # topology key (hive id, else NUMA node) -> id; None -> -1
        self._free_slots: list[int] = []
        self._next = 0
        self._lock = threading.Lock()

    def put(self, state: NodeState) -> None:
        with self._lock:
            t = self.table
            if len(state.gpus) > t.width or (state.name not in t.slots and not self._free_slots
                                            and self._next >= len(t.cols["valid"])):
                t = self._grow(max(t.width, len(state.gpus)))
            slot = t.slots.get(state.name)
            if slot is None:
                slot = self._free_slots.pop() if self._free_slots else self._take()
            self._write(t, slot, state.gpus)
            t.slots[state.name] = slot

    def remove(self, name: str) -> None:
        with self._lock:
            t = self.table
            slot = t.slots.pop(name, None)
            if slot is not None:
                t.cols["valid"][slot] = False
                self._free_slots.append(slot)

    def _take(self) -> int:
        self._next += 1
        return self._next - 1

    def _grow(self, width: int) -> Table:
        old = self.table
        capacity = len(old.cols["valid"])
        if self._next >= capacity:
            capacity *= 2
        new = _empty(capacity, width)
        n, w = len(old.cols["valid"]), old.width
        for name, col in old.cols.items():
            new.cols[name][:n, :w] = col
        new.run_len[:n, :w] = old.run_len
        new.run_start[:n, :w] = old.run_start
        new.slots = dict(old.slots)
        self.table = new
        return new

    def _write(self, t: Table, slot: int, gpus: Iterable[GpuState]) -> None:
        c = t.cols
        c["valid"][slot] = False
        gpus = list(gpus)
        for pos, g in enumerate(gpus):
            info = g.info
            counts = g.class_counts
            rs = g.free_runs
            c["healthy"][slot, pos] = info.healthy
            c["free"][slot, pos] = len(g.free_cus)
            c["total"][slot, pos] = info.computeUnits
            c["used"][slot, pos] = g.used_cus
            c["shared"][slot, pos] = len(g.shared)
            c["slices"][slot, pos] = len(g.slices)
            c["mem_bound"][slot, pos] = counts.get(MEMORY_BOUND_CLASS, 0)
            c["compute_bound"][slot, pos] = counts.get(COMPUTE_BOUND_CLASS, 0)
            c["model"][slot, pos] = self._model(info.model, info.computeUnits)
            c["topo"][slot, pos] = self._topo(info.hiveId if info.hiveId is not None else info.numaNode)
            c["mem_free"][slot, pos] = g.memory_free
            c["mem_bytes"][slot, pos] = info.memoryBytes
            c["mem_used"][slot, pos] = g.memory_used
            c["limit_used"][slot, pos] = g.memory_limit_used
            c["nruns"][slot, pos] = len(rs)
            t.run_len[slot, pos] = 0
            for r, (start, length) in enumerate(rs[:RUNS]):
                t.run_start[slot, pos, r] = start
                t.run_len[slot, pos, r] = length
        c["valid"][slot, :len(gpus)] = True

    def _model(self, model: str, cus: int) -> int:
        key = (model, cus)
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
