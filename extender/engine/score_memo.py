"""`rank`'s per-GPU scores kept from one pod to the next of the same kind.

With candidate narrowing, filter scores every node that fits (engine/scheduler._narrow_by_score):
on 1,000 nodes, 8,000 GPUs of numpy per pod, most of filter's time. Between two pods of a burst only
the node the first was bound to changed. A GPU's score comes from its own row of the GPU index alone
(Columns.slot_scores), so a slot whose row did not change since it was scored (its GpuIndex stamp is
the same) keeps its scores; only the others are worked out again. The result is what
`Columns.gpu_scores` gives for the same slots (tests/engine/test_score_memo.py), as the fragmentation
scorer's memo is for its rises (engine/fragmentation._Remembered, the same stamp rule).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import numpy as np

from extender.core.gpuindex import GpuIndex
from extender.engine.vectorised import Columns

KINDS = 8  # request kinds kept (each: 9 bytes per GPU slot of the index, 72 KB per 1,000 nodes x 8 GPUs)


class _Kept:
    """One request kind's scores per index slot, and the slot's stamp when they were worked out."""

    def __init__(self, slots: int, width: int) -> None:
        self.stamp = np.full(slots, -1, np.int64)
        self.scores = np.full((slots, width), np.nan)
        self.exact = np.zeros((slots, width), np.bool_)


class ScoreMemo:
    """Per request kind (its fit key, which names the policy version): the slots' last scores."""

    def __init__(self) -> None:
        self._index: weakref.ref[GpuIndex] | None = None  # a new ledger's index starts its stamps afresh
        self._shape: tuple = ()
        self._kinds: OrderedDict[str, _Kept] = OrderedDict()
        self._lock = threading.Lock()  # the HTTP server's threads share it

    def gpu_scores(self, cols: Columns, key: str, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`cols.gpu_scores(slots)`, with the slots whose row is unchanged since they were scored kept."""
        asked = np.zeros(cols.need.shape[0], np.bool_)
        asked[slots[slots >= 0]] = True
        idx = np.flatnonzero(asked)
        stamps = cols.table.stamps[idx]  # before the rows: a write after this leaves the stamps behind
        if not cols.quiet():  # the columns' need and fit may be older than these stamps: nothing is kept
            return cols.gpu_scores(slots)
        shape = cols.need.shape
        scores, exact = np.full(shape, np.nan), np.zeros(shape, np.bool_)
        with self._lock:
            kept = self._kept(cols, key)
            stale = kept.stamp[idx] != stamps
            if stale.any():
                s = idx[stale]
                kept.scores[s, :shape[1]], kept.exact[s, :shape[1]] = cols.slot_scores(s)
                kept.stamp[s] = stamps[stale]
            scores[idx] = kept.scores[idx, :shape[1]]
            exact[idx] = kept.exact[idx, :shape[1]]
        return scores, exact

    def _kept(self, cols: Columns, key: str) -> _Kept:
        shape = (tuple(cols.keys), cols.table.width, len(cols.table.stamps))  # models, GPUs per slot, slots
        index = self._index() if self._index is not None else None
        if index is not cols.index or shape != self._shape:
            self._index, self._shape = weakref.ref(cols.index), shape
            self._kinds.clear()
        kept = self._kinds.get(key)
        if kept is None:
            kept = self._kinds[key] = _Kept(len(cols.table.stamps), cols.table.width)
            while len(self._kinds) > KINDS:
                self._kinds.popitem(last=False)
        self._kinds.move_to_end(key)
        return kept
