"""Filter's and prioritize's per-GPU rules as numpy operations over the ledger's GPU index, so that a
request is answered for thousands of nodes without a Python loop per node.

The rules are those of `placement.check` and `placement.rank` (same integer tests, same float
operations in the same order), and a failing node's reason has `check`'s words. Only what the vectors
cannot vouch for is worked out by those functions: a node with no GPUs in its row, a GPU whose free CUs
lie in more runs than the index keeps, or whose slice no single run holds.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from extender.core.fit import COMPUTE_BOUND, MEMORY_BOUND, Verdict
from extender.core.gpuindex import FIELDS, RUN_LENGTHS, RUNS, GpuIndex, Slots, Table
from extender.core.layout import is_full
from extender.core.policy import Policy
from extender.core.requests import SliceRequest
from extender.engine.placement import (
    _min_slice_for,
    _place,
    _shared,
    empty_complementarity,
    reject_message,
    reject_words,
    rules_of,
)

FIELD = {name: i for i, name in enumerate(FIELDS)}
CATEGORIES = ("", "unhealthy", "compute", "memory", "memory-limit", "class-rule", "bandwidth")
SHOWN = 3  # rejected GPUs a reason names (reject_message)


class Columns:
    """One request's per-GPU answers over a snapshot of the index."""

    def __init__(self, req: SliceRequest, policy: Policy, index: GpuIndex) -> None:
        self.req, self.policy = req, policy
        self.index = index
        self.writes = index.writes  # see quiet()
        self.table: Table = index.table
        # Slots past `used` are empty: left out of every operation (capped: the table may be an older, smaller one).
        self.used = used = min(index.used, self.table.data.shape[1])
        self.data = self.table.data[:, :used]
        self.cols = c = {name: self.data[i] for i, name in enumerate(FIELDS)}
        keys = list(index.model_keys)
        need_by_model = np.array([req.guaranteed_cus(policy, policy.model_for(m), cu, x) for m, cu, x in keys]
                                 or [0], np.int64)
        self.need = need = np.take(need_by_model, c["model"], mode="clip")
        self.keys = keys
        total, slices = c["total"], c["slices"]
        self.whole = whole = (need >= total) & (slices == 0)
        # The fit rule (core/fit.py) as column operations, rule by rule in its order (tests/core/test_fit_rule.py
        # holds the two to the same verdicts).
        self.free = free = np.where(whole, total, c["atom_free"])
        self.rules = rules = rules_of(policy)
        cls = req.workload_class
        limit = rules.class_limit(cls)
        self.same = same = c["mem_bound"] if cls == MEMORY_BOUND else c["compute_bound"]
        self.limit_room = (np.floor(c["mem_bytes"] * policy.overcommit.memory).astype(np.int64) - c["limit_used"])
        # gpu_reject_reason's rules in its order, each with its index into CATEGORIES.
        fails = [(1, c["healthy"] == 0), (2, need > free), (3, req.memory_bytes > c["mem_free"]),
                 (4, req.memory_limit_bytes > self.limit_room)]
        if limit is not None:
            fails.append((5, same >= limit))
        budget = rules.budget_units
        if budget is not None:
            fails.append((6, self.bandwidth + rules.share_units(cls) > budget))
        # Which rule rejects each GPU first (0: it fits): rules written last to first, so the first that
        # fails is the one left (cheaper than np.select).
        self.code = np.zeros(need.shape, np.int8)
        for code, failing in reversed(fails):
            np.putmask(self.code, failing, code)
        self.ok = (c["valid"] != 0) & (self.code == 0)
        self._last_rejections: tuple[tuple[str, bytes], tuple[list[str], np.ndarray, np.ndarray]] | None = None

    @cached_property
    def bandwidth(self) -> np.ndarray:
        """Per GPU: the bandwidth units its tenants take (read only by a bandwidth budget and its words)."""
        c, rules = self.cols, rules_of(self.policy)
        return c["mem_bound"] * rules.share_units(MEMORY_BOUND) + c["compute_bound"] * rules.share_units(COMPUTE_BOUND)

    def quiet(self) -> bool:
        """No write to the index since these columns were read: node states read since then match them."""
        return self.writes % 2 == 0 and self.index.writes == self.writes

    def slots(self, names: list[str]) -> Slots:
        """Each name's slot in these columns (-1: none), and the index layout it was looked up in."""
        found = self.index.slots_of(names)
        slots = found.slots
        if len(slots) and slots.max() >= self.used:  # added after these columns were read
            slots = np.where(slots < self.used, slots, -1)
        return Slots(slots, found.layout)

    def node_fits(self, slots: np.ndarray) -> np.ndarray:
        """Per candidate: at least req.count GPUs fit (False for nodes not in the index)."""
        counts = self.ok.sum(axis=1)
        return (slots >= 0) & (np.take(counts, slots, mode="clip") >= self.req.count)

    def rejections(self, slots: np.ndarray, prefix: str = "") -> tuple[list[str], np.ndarray, np.ndarray]:
        """`check`'s reason (after `prefix`) and category (an index into CATEGORIES, 0: "no-gpus") for each
        of these failing nodes, from their rows, and which of them a row cannot word (a node with no GPUs:
        the per-node path words that; its reason here is "")."""
        n = len(slots)
        if not n:
            return [], np.zeros(0, np.int64), np.zeros(0, np.bool_)
        c = self.cols
        idx = np.asarray(slots, np.intp)
        # A pod kube-scheduler retries asks again about the same rows (these columns are reused only while
        # no write came between): the last answer is kept, and shared (callers do not change it).
        asked = (prefix, idx.tobytes())
        last = self._last_rejections
        if last is not None and last[0] == asked:
            return last[1]
        valid = c["valid"][idx] != 0
        codes = np.where(valid, self.code[idx], 0).astype(np.int64)
        bad = codes != 0
        gpus = valid.sum(axis=1)
        nbad = bad.sum(axis=1)
        # reject_message shows the first three rejected GPUs, then "…" if there are more (nbad says so).
        first = np.argsort(~bad, axis=1, kind="stable")[:, :SHOWN]
        rows = idx[:, None]
        shown = np.take_along_axis(bad, first, axis=1)
        code = np.where(shown, np.take_along_axis(codes, first, axis=1), 0)
        # Each rule's words show at most two numbers besides the GPU index; only those go into a node's
        # signature, so nodes whose rejected GPUs differ in numbers the words do not show share one message
        # (thousands of failing nodes have a few hundred distinct messages), worded once.
        a = np.select([code == 2, code == 3, code == 4, code == 5, code == 6],
                      [self.need[rows, first], c["mem_free"][rows, first], self.limit_room[rows, first],
                       self.same[rows, first], self.bandwidth[rows, first]], np.int64(0))
        b = np.where(code == 2, self.free[rows, first], 0)
        gpu = np.where(shown, c["gpu"][rows, first], -1)
        key = np.concatenate([np.stack([code, gpu, a, b], axis=2).reshape(n, -1), gpus[:, None], nbad[:, None]],
                             axis=1).astype(np.int64)
        signatures = np.ascontiguousarray(key).view(f"V{key.shape[1] * 8}").ravel().tolist()
        texts: dict[bytes, str] = {}
        words_of: dict[tuple[int, int, int, int], str] = {}
        for sig, r in dict(zip(signatures, range(n), strict=True)).items():  # one node per signature
            count = int(gpus[r])
            if not count:
                texts[sig] = ""
                continue
            words: list[str] = []
            for shown_code, index, x, y in key[r, :-2].reshape(-1, 4).tolist():
                if not shown_code:
                    break
                facts = (shown_code, index, x, y)
                text = words_of.get(facts)
                if text is None:
                    text = words_of[facts] = self._words(shown_code, index, x, y)
                words.append(text)
            shown_bad = int(nbad[r])
            if shown_bad > len(words):  # the ellipsis of a fourth rejected GPU
                words.append("")
            texts[sig] = prefix + reject_message(self.req, count, words, count - shown_bad)
        out = (list(map(texts.__getitem__, signatures)), code[:, 0] if code.shape[1] else np.zeros(n, np.int64),
               gpus == 0)
        self._last_rejections = (asked, out)
        return out

    def _words(self, code: int, index: int, x: int, y: int) -> str:
        """reject_words for one GPU from the numbers its rule (CATEGORIES[code]) shows: x and y as
        `rejections` keeps them."""
        category = CATEGORIES[code]
        req, policy = self.req, self.policy
        if category == "compute":
            v = Verdict(category, need=x, free=y)
        elif category in ("memory", "memory-limit"):
            v = Verdict(category, free=x)
        elif category == "class-rule":
            v = Verdict(category, have=x, limit=self.rules.class_limit(req.workload_class) or 0)
        elif category == "bandwidth":
            v = Verdict(category, used_units=x)
        else:
            v = Verdict(category)
        return reject_words(v, index, req, policy)

    def gpu_scores(self, slots: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per GPU: `rank`'s score for the slice on it (NaN where it does not fit), and a mask of fitting
        GPUs whose score needs the exact path (free CUs in more runs than kept, or in no run big enough).
        Worked out on the fitting GPUs only, and only those of these `slots` when given (-1s are skipped)."""
        shape = self.need.shape
        if slots is None:
            return self.slot_scores(np.arange(shape[0]))
        asked = np.unique(slots[slots >= 0])
        scores, slow = np.full(shape, np.nan), np.zeros(shape, np.bool_)
        scores[asked], slow[asked] = self.slot_scores(asked)
        return scores, slow

    def slot_scores(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`gpu_scores` of these slots' GPUs only (slots in the index), each slot's row of it: [slot, GPU]."""
        width = self.need.shape[1]
        gpus = (slots[:, None] * width + np.arange(width)).ravel()
        fits = self.ok.ravel()[gpus]
        score, exact = self._scores_of(gpus[fits])
        scores = np.full(len(gpus), np.nan)
        scores[fits] = score
        slow = np.zeros(len(gpus), np.bool_)
        slow[fits] = exact
        return scores.reshape(len(slots), width), slow.reshape(len(slots), width)

    def _scores_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The score and the exact-path flag of these GPUs (flat indices into [slot, GPU], fitting ones):
        each GPU's from its own row alone."""
        req, policy = self.req, self.policy
        flat = self.data.reshape(self.data.shape[0], -1)
        same_field = "mem_bound" if req.workload_class == MEMORY_BOUND else "compute_bound"
        # Only the fields the score reads, each gathered on its own (faster than one 2-D gather).
        total, shared, used, mem_used, mem_bytes, slices, same, model, nruns, free = (
            flat[FIELD[n]].take(rows) for n in ("total", "shared", "used", "mem_used", "mem_bytes", "slices",
                                                same_field, "model", "nruns", "free"))
        lengths = flat[RUN_LENGTHS:RUN_LENGTHS + RUNS].take(rows, axis=1)  # [run, GPU]
        need, whole = self.need.ravel().take(rows), self.whole.ravel().take(rows)
        usable = total - shared
        with np.errstate(divide="ignore", invalid="ignore"):
            after = np.where(usable > 0, np.minimum(1.0, (used + need) / usable), 1.0)
            binpack = policy.scoring.strategy == "binpack"
            pack = after if binpack else 1.0 - after
            mem_after = (mem_used + req.memory_bytes) / mem_bytes
            pack = 0.7 * pack + 0.3 * (mem_after if binpack else 1.0 - mem_after)
            same_weight = 0.6 if req.workload_class == COMPUTE_BOUND else 0.0
            comp = np.where(slices > 0, ((slices - same) * 1.0 + same * same_weight) / slices,
                            empty_complementarity(policy.scoring.strategy))
            frag, exact = self._fragmentation(lengths, free, model, nruns, need, whole, binpack)
            w = policy.scoring.weights
            total_w = w.packing + w.complementarity + w.fragmentation
            if total_w == 0:
                score = np.full(len(rows), 0.5)
            else:
                score = (w.packing * pack + w.complementarity * comp + w.fragmentation * (1.0 - frag)) / total_w
        return score, exact

    def _fragmentation(self, lengths: np.ndarray, free: np.ndarray, model: np.ndarray, nruns: np.ndarray,
                       need: np.ndarray, whole: np.ndarray, binpack: bool) -> tuple[np.ndarray, np.ndarray]:
        """`fragmentation_after_cut` of the best-fit run for GPUs with these free run `lengths` [run, GPU]
        and `free` CUs (spread layout), and which of them the kept runs cannot answer for; 0 under binpack
        where less than a slice is left (core/layout.is_full: a full GPU is not fragmented)."""
        mins = np.array([_min_slice_for(m, self.policy) for m, *_ in self.keys] or [1], np.int64)
        min_slice = np.take(mins, model, mode="clip")
        # best_fit_run cuts the shortest run that holds the slice. Which of equally short runs it picks
        # does not change the lengths left, so its length is enough: the cut changes only that run's
        # part of the total and of the stranded CUs (runs shorter than a minimum slice).
        best = np.where(lengths >= need, lengths, np.iinfo(np.int64).max).min(axis=0)
        holds = best != np.iinfo(np.int64).max
        left = best - need

        def stranded_part(x: np.ndarray) -> np.ndarray:
            return np.where((x > 0) & (x < min_slice), x, 0)

        stranded = (np.where((lengths > 0) & (lengths < min_slice), lengths, 0).sum(axis=0)
                    - stranded_part(best) + stranded_part(left))
        total = free - need  # the runs hold every free CU when there are no more than RUNS of them
        frag = np.where(whole | (total <= 0) | (binpack & is_full(total, min_slice)), 0.0,
                        stranded / np.where(total > 0, total, 1))
        exact = ~whole & ((nruns > RUNS) | ~holds)
        return frag, exact


def node_scores(cols: Columns, scores: np.ndarray) -> np.ndarray:
    """Per slot, `rank`'s node score from its GPUs' scores (NaN: fewer than req.count GPUs fit): the best
    GPU for one GPU, else `_pick`'s choice (a topology group that holds them all, else the best GPUs) and
    its topology blend, with sums taken in the same order."""
    count = cols.req.count
    if count == 1:
        with np.errstate(invalid="ignore"):
            return np.fmax.reduce(scores, axis=1)
    c = cols.cols
    out = np.full(len(scores), np.nan)
    rows = np.flatnonzero((~np.isnan(scores)).sum(axis=1) >= count)
    scores, topo, index = scores[rows], c["topo"][rows], c["gpu"][rows]
    fit = ~np.isnan(scores)
    neg = np.where(fit, -scores, np.inf)
    # Groups: a node's fitting GPUs that share a topology key (hive, else NUMA). Sorted by key, best
    # score first, a group's best `count` GPUs are the `count` places from where its key starts.
    by_group = np.lexsort((neg, topo), axis=-1)
    ranked, keys = np.take_along_axis(neg, by_group, axis=1), np.take_along_axis(topo, by_group, axis=1)
    starts = np.ones(keys.shape, np.bool_)
    starts[:, 1:] = keys[:, 1:] != keys[:, :-1]
    whole_group = starts & (keys >= 0)
    group_sums = np.zeros(keys.shape)
    width = keys.shape[1]
    with np.errstate(invalid="ignore"):
        for k in range(count):  # added in rank order, as rank's sum() does
            later = np.full(keys.shape, np.inf)
            later[:, :width - k] = ranked[:, k:]
            later_keys = np.full(keys.shape, -1)
            later_keys[:, :width - k] = keys[:, k:]
            whole_group &= (later_keys == keys) & np.isfinite(later)
            group_sums = group_sums + -later
    best_group = np.where(whole_group, group_sums, -np.inf).max(axis=1)
    grouped = np.isfinite(best_group)
    order = np.lexsort((index, neg), axis=-1)[:, :count]  # ranked: best score, then lowest GPU index
    chosen = np.take_along_axis(scores, order, axis=1)
    keys = np.take_along_axis(topo, order, axis=1)
    same = (keys[:, :, None] == keys[:, None, :]).sum(axis=2).max(axis=1)
    spread_topo = np.where(keys[:, 0] < 0, 0, same) / count
    score = np.where(grouped, best_group, _ordered_sum(chosen)) / count
    topology = np.where(grouped, 1.0, spread_topo)
    w = cols.policy.scoring.weights
    if (w.packing + w.complementarity + w.fragmentation + w.topology) > 0:
        base = w.packing + w.complementarity + w.fragmentation
        score = (score * base + w.topology * topology) / (base + w.topology)
    out[rows] = score
    return out


def _ordered_sum(columns: np.ndarray) -> np.ndarray:
    """Sums over the last axis added left to right, as Python's sum() does (numpy's pairwise sum may
    round differently)."""
    total = np.zeros(columns.shape[:-1])
    for k in range(columns.shape[-1]):
        total = total + columns[..., k]
    return total


def exact_gpu_score(req: SliceRequest, policy: Policy, gpu: object) -> float | None:
    """`rank`'s per-GPU score the slow way (None: does not fit)."""
    entry = _place(_shared(req, policy), gpu)  # type: ignore[arg-type]
    return None if entry is None else entry[3]
