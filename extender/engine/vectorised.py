"""Filter's and prioritize's per-GPU rules as numpy operations over the ledger's GPU index, so that a
request is answered for thousands of nodes without a Python loop per node.

The rules are those of `placement.check` and `placement.rank` (same integer tests, same float
operations in the same order). Only a node the vectors cannot vouch for is worked out by those
functions: a node that fails (for its words), a GPU whose free CUs lie in more runs than the index
keeps, or whose slice no single run holds.
"""

from __future__ import annotations

import numpy as np

from extender.core.gpuindex import RUNS, GpuIndex, Table
from extender.core.policy import Policy
from extender.core.requests import SliceRequest
from extender.engine.placement import COMPUTE_BOUND, MEMORY_BOUND, _min_slice_for, _place, _shared


class Columns:
    """One request's per-GPU answers over a snapshot of the index."""

    def __init__(self, req: SliceRequest, policy: Policy, index: GpuIndex) -> None:
        self.req, self.policy = req, policy
        self.table: Table = index.table
        t = self.table
        c = t.cols
        keys = list(index.model_keys)
        need_by_model = np.array([req.guaranteed_cus(policy, policy.model_for(m), cu) for m, cu in keys] or [0],
                                 np.int64)
        self.need = need = np.take(need_by_model, c["model"], mode="clip")
        self.keys = keys
        total, slices = c["total"], c["slices"]
        self.whole = whole = (need >= total) & (slices == 0)
        free = np.where(whole, total, c["free"])
        ok = c["valid"] & c["healthy"] & (need <= free) & (req.memory_bytes <= c["mem_free"])
        ok &= c["limit_used"] + req.memory_limit_bytes <= c["mem_bytes"] * policy.overcommit.memory
        rules = policy.classes
        cls = req.workload_class
        if cls == MEMORY_BOUND and rules.maxMemoryBoundPerGpu is not None:
            ok &= c["mem_bound"] < rules.maxMemoryBoundPerGpu
        if cls == COMPUTE_BOUND and rules.maxComputeBoundPerGpu is not None:
            ok &= c["compute_bound"] < rules.maxComputeBoundPerGpu
        if rules.bandwidthBudget is not None:
            share = rules.bandwidthShare
            used = c["mem_bound"] * share.get(MEMORY_BOUND, 0.0) + c["compute_bound"] * share.get(COMPUTE_BOUND, 0.0)
            ok &= used + share.get(cls, 0.0) <= rules.bandwidthBudget + 1e-9
        self.ok = ok

    def slots(self, names: list[str]) -> np.ndarray:
        get = self.table.slots.get
        return np.fromiter((get(n, -1) for n in names), np.int64, len(names))

    def node_fits(self, slots: np.ndarray) -> np.ndarray:
        """Per candidate: at least req.count GPUs fit (False for nodes not in the index)."""
        counts = self.ok.sum(axis=1)
        return (slots >= 0) & (np.take(counts, slots, mode="clip") >= self.req.count)

    def gpu_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """Per GPU: `rank`'s score for the slice on it (NaN where it does not fit), and a mask of fitting
        GPUs whose score needs the exact path (free CUs in more runs than kept, or in no run big enough)."""
        req, policy, c, t = self.req, self.policy, self.table.cols, self.table
        need = self.need
        usable = c["total"] - c["shared"]
        with np.errstate(divide="ignore", invalid="ignore"):
            after = np.where(usable > 0, np.minimum(1.0, (c["used"] + need) / usable), 1.0)
            binpack = policy.scoring.strategy == "binpack"
            pack = after if binpack else 1.0 - after
            mem_after = (c["mem_used"] + req.memory_bytes) / c["mem_bytes"]
            pack = 0.7 * pack + 0.3 * (mem_after if binpack else 1.0 - mem_after)
            slices = c["slices"]
            same = c["mem_bound"] if req.workload_class == MEMORY_BOUND else c["compute_bound"]
            same_weight = 0.6 if req.workload_class == COMPUTE_BOUND else 0.0
            comp = np.where(slices > 0, ((slices - same) * 1.0 + same * same_weight) / slices, 0.5)
            frag, exact = self._fragmentation()
            w = policy.scoring.weights
            total_w = w.packing + w.complementarity + w.fragmentation
            if total_w == 0:
                score = np.full(need.shape, 0.5)
            else:
                score = (w.packing * pack + w.complementarity * comp + w.fragmentation * (1.0 - frag)) / total_w
        del t
        return np.where(self.ok, score, np.nan), exact & self.ok

    def _fragmentation(self) -> tuple[np.ndarray, np.ndarray]:
        """`fragmentation_after_cut` of the best-fit run, per GPU, for the spread layout."""
        t, c, need = self.table, self.table.cols, self.need
        mins = np.array([_min_slice_for(m, self.policy) for m, _ in self.keys] or [1], np.int64)
        min_slice = np.take(mins, c["model"], mode="clip")[..., None]
        lengths, starts = t.run_len.astype(np.int64), t.run_start.astype(np.int64)
        holds = lengths >= need[..., None]
        key = np.where(holds, lengths * 1_000_000 + starts, np.iinfo(np.int64).max)
        best = key.argmin(axis=-1)
        any_run = holds.any(axis=-1)
        cut = lengths - np.where(np.arange(RUNS) == best[..., None], need[..., None], 0)
        total = cut.sum(axis=-1)
        stranded = np.where((cut > 0) & (cut < min_slice), cut, 0).sum(axis=-1)
        frag = np.where(total > 0, stranded / np.where(total > 0, total, 1), 0.0)
        frag = np.where(self.whole, 0.0, frag)
        exact = ~self.whole & ((c["nruns"] > RUNS) | ~any_run)
        if self.policy.layout.mode != "spread":
            exact = ~self.whole
        return frag, exact


def exact_gpu_score(req: SliceRequest, policy: Policy, gpu: object) -> float | None:
    """`rank`'s per-GPU score the slow way (None: does not fit)."""
    entry = _place(_shared(req, policy), gpu)  # type: ignore[arg-type]
    return None if entry is None else entry[3]
