"""Placement by expected fragmentation for the workload mix actually arriving (the fragmentation
gradient of FGD, Weng et al., USENIX ATC'23), over the ledger's GPU index.

A node's fragmentation for one kind of pod k is the free GPU capacity on it that k cannot use: all of
it when k cannot run there at all (too few GPUs it fits on, or too little host CPU or memory), else
the free capacity of the GPUs k does not fit on. Weighted by how often each kind arrives,

    F(node) = sum_k w_k * (S - U_k * A_k)

where S is the node's free capacity (in GPUs), U_k the free capacity on the GPUs kind k fits on and
A_k whether k can run on the node. A placement is scored by how much it raises F (its gradient):
filter and prioritize rank nodes by their best placement's rise, and bind takes those GPUs.

Beyond FGD, the mix is not given to the scheduler: `WorkloadMix` learns it from the pods the extender
is asked about (each pod once, older pods fading), in whole request kinds — GPU count, CUs per model,
GPU memory, host CPU and memory — and host CPU and memory come from the cluster when it knows them.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from itertools import compress

import numpy as np

from extender.core.gpuindex import GpuIndex
from extender.core.ledger import NodeState
from extender.core.policy import Policy
from extender.core.requests import SliceRequest
from extender.engine.placement import (
    NodeFit,
    _Candidate,
    _place,
    _shared,
    evaluate,
    gpu_reject_reason,
    needed_cus,
    takes_whole,
)
from extender.engine.vectorised import Columns

INFINITE = np.inf
SEEN_UIDS = 50_000  # pods remembered so that a retried pod is counted once
DENSE_CODES = 1 << 20  # _distinct's largest dense table
FEW_GPUS = 64  # _fits_of works out fewer GPUs than this one by one


@dataclass(frozen=True)
class Kind:
    """One kind of pod in the mix: its slice request and its host requests."""

    req: SliceRequest
    cpu_millis: int
    memory_bytes: int


@dataclass(frozen=True)
class MixTable:
    """A snapshot of the mix in arrays, per GPU model of the index (`need` is indexed [model id, kind])."""

    version: int
    need: np.ndarray  # CUs each kind guarantees on one GPU of each model
    gpu_memory: np.ndarray  # per kind
    count: np.ndarray
    cpu: np.ndarray
    memory: np.ndarray
    weight: np.ndarray  # sums to 1
    cpu_per_gpu: float = 0.0  # host CPU (millis) the mix asks per GPU it asks: 0 when unknown
    stranding: float = 1.0  # weight of the GPUs the host CPU cannot feed
    waste: np.ndarray | None = None  # [model, CUs + 1]: final_waste of a remainder; None: FGD's count
    model_cus: np.ndarray | None = None  # [model]: CUs of each model (waste's row length less one)

    @property
    def empty(self) -> bool:
        return self.weight.size == 0

    def kind_ids(self) -> list[tuple[bytes, int]]:
        """Per kind, what its weight-free basis columns (fits, usable, n_fit) read of it: CUs per model, memory."""
        return [(self.need[:, k].tobytes(), int(self.gpu_memory[k])) for k in range(self.weight.size)]


class WorkloadMix:
    """The request kinds the extender has been asked to place, by how often they arrive.

    Counted once per pod UID. The snapshot the scores use changes in steps — after 1, 2, 4, ... pods
    (a cold start must not place its first pods blind), then every `window / 16` — so that a node's
    score stays a function of its own state between steps (callers cache on `version`). When the count
    passes `window`, every count is halved: a changing workload shows within a window."""

    def __init__(self, window: int = 20000, max_kinds: int = 48, weighting: str = "pods",
                 host_cpu: float = 1.0) -> None:
        self.window = window
        self.host_cpu = host_cpu
        self.weighting = weighting
        self.max_kinds = max_kinds
        self.counts: Counter[Kind] = Counter()
        self.observed = 0
        self.version = 0
        self._next = 1
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tables: dict[tuple, MixTable] = {}
        self._snapshot: list[tuple[Kind, float]] = []
        self._lock = threading.Lock()

    def configure(self, window: int, max_kinds: int, weighting: str, host_cpu: float) -> None:
        """Take a reloaded policy's settings; a change re-takes the snapshot, whose kinds and weights they set."""
        with self._lock:
            if (window, max_kinds, weighting, host_cpu) == (self.window, self.max_kinds, self.weighting,
                                                            self.host_cpu):
                return
            self.window, self.max_kinds, self.weighting, self.host_cpu = window, max_kinds, weighting, host_cpu
            if self.observed:
                self._take_snapshot()

    def observe(self, uid: str, req: SliceRequest, cpu_millis: int, memory_bytes: int) -> None:
        with self._lock:
            if uid in self._seen:
                return
            self._seen[uid] = None
            if len(self._seen) > SEEN_UIDS:
                self._seen.popitem(last=False)
            self.counts[Kind(req, cpu_millis, memory_bytes)] += 1
            self.observed += 1
            if sum(self.counts.values()) > self.window:
                self.counts = Counter({k: c / 2 for k, c in self.counts.items() if c >= 1})
            if self.observed >= self._next:
                self._next = self._next * 2 if self._next * 2 <= self.window // 16 else self._next + self.window // 16
                self._take_snapshot()

    def _take_snapshot(self) -> None:
        top = kept_kinds(self.counts, self.max_kinds)
        if self.weighting == "gpus":
            top = [(k, c * k.req.count * min(k.req.compute_millis, 1000) / 1000) for k, c in top]
        total = sum(c for _, c in top)
        self._snapshot = [(k, c / total) for k, c in top] if total else []
        self._tables.clear()
        self.version += 1

    def table(self, policy: Policy, model_keys: list[tuple[str, int, int]]) -> MixTable:
        """The snapshot in arrays for GPUs of these (model, CUs, XCDs) ids (the GPU index's model keys)."""
        key = (policy.version, tuple(model_keys))
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                return table
            snap, version = self._snapshot, self.version
        kinds = [k for k, _ in snap]
        gpus = sum(w * k.req.count * min(k.req.compute_millis, 1000) / 1000 for k, w in snap)
        rho = sum(w * k.cpu_millis for k, w in snap) / gpus if gpus else 0.0
        stranding = self.host_cpu
        need = np.zeros((max(len(model_keys), 1), len(kinds)), np.int64)
        for i, (m, cus, xcds) in enumerate(model_keys):
            need[i] = [k.req.guaranteed_cus(policy, policy.model_for(m), cus, xcds) for k in kinds]
        table = MixTable(version, need,
                         np.array([k.req.memory_bytes for k in kinds], np.int64),
                         np.array([k.req.count for k in kinds], np.int64),
                         np.array([k.cpu_millis for k in kinds], np.int64),
                         np.array([k.memory_bytes for k in kinds], np.int64),
                         np.array([w for _, w in snap], np.float64), rho, stranding)
        if policy.scoring.fragmentation.remainders == "waste" and kinds:
            cus = np.array([c for _, c, _ in model_keys] or [1], np.int64)
            table = replace(table, waste=final_waste(table, cus), model_cus=cus)
        with self._lock:
            if self.version == version:
                self._tables[key] = table
        return table


def kept_kinds(counts: Counter[Kind], max_kinds: int) -> list[tuple[Kind, float]]:
    """The kinds the snapshot keeps, with their counts: every slice request (GPU shape) first, by its
    most common host request, then the most common other kinds; a kind left out is counted in the kept
    kind of its shape whose host CPU is nearest. A rare shape — one whole node's GPUs, say — is thus never
    dropped because its pods ask for many different host sizes: keeping room for it is what it needs."""
    ranked = counts.most_common()
    by_shape: dict[SliceRequest, float] = Counter()
    for kind, c in ranked:
        by_shape[kind.req] += c
    first: dict[SliceRequest, Kind] = {}
    for kind, _ in ranked:
        first.setdefault(kind.req, kind)
    shapes = sorted(by_shape, key=lambda r: -by_shape[r])[:max_kinds]
    kept = [first[r] for r in shapes]
    chosen, wanted = set(kept), set(shapes)
    kept += [k for k, _ in ranked if k not in chosen and k.req in wanted][: max_kinds - len(kept)]
    out: dict[Kind, float] = {k: 0.0 for k in kept}
    of_shape: dict[SliceRequest, list[Kind]] = {}
    for k in kept:
        of_shape.setdefault(k.req, []).append(k)
    for kind, c in ranked:
        near = of_shape.get(kind.req)
        if near:
            out[min(near, key=lambda k: abs(k.cpu_millis - kind.cpu_millis))] += c
    return sorted(out.items(), key=lambda kv: -kv[1])


@dataclass(frozen=True)
class Rows:
    """The GPU index columns of some nodes ([node, GPU] arrays) and their host room."""

    valid: np.ndarray
    model: np.ndarray
    total: np.ndarray
    free: np.ndarray  # free guaranteeable CUs
    usable: np.ndarray  # CUs a GPU's tenants may be guaranteed (total less the burst region)
    empty: np.ndarray
    mem_free: np.ndarray
    cpu_free: np.ndarray | None  # [node]; None: the cluster does not say
    host_mem_free: np.ndarray | None


def _capacity(valid: np.ndarray, usable: np.ndarray, free: np.ndarray, empty: np.ndarray | bool) -> np.ndarray:
    """Free capacity in GPUs: 1 for an empty GPU, else its free CUs over those it can guarantee."""
    part = free / np.maximum(usable, 1)
    return np.where(valid, np.where(empty, 1.0, part), 0.0)


def _fits(table: MixTable, valid: np.ndarray, total: np.ndarray, need: np.ndarray, free: np.ndarray,
          empty: np.ndarray | bool, mem_free: np.ndarray) -> np.ndarray:
    """[..., kind] for GPUs [...]: kind k fits on the GPU (CUs, whole GPU, memory); `need` is [..., kind]."""
    whole = need >= total[..., None]
    cus = np.where(whole, np.asarray(empty)[..., None], need <= free[..., None])
    return valid[..., None] & cus & (table.gpu_memory <= mem_free[..., None])


def _fits_of(table: MixTable, valid: np.ndarray, model: np.ndarray, total: np.ndarray, free: np.ndarray,
             empty: np.ndarray | bool, mem_free: np.ndarray) -> np.ndarray:
    """_fits of GPUs given by their columns ([...]), worked out once per distinct GPU: what a kind's fit reads of
    a GPU — valid, model, CUs, free CUs, empty, and how many of the mix's memory sizes its free memory holds —
    takes few values (CUs go in slices), so thousands of GPUs are a few dozen distinct ones."""
    if free.size <= FEW_GPUS:  # a node or two (bind, a changed node): gathering costs more than it saves
        return _fits(table, valid, total, table.need[np.maximum(model, 0)], free, empty, mem_free)
    level = np.searchsorted(np.unique(table.gpu_memory), mem_free, side="right")
    first, inverse = _distinct(valid, np.maximum(model, 0), total, free, np.broadcast_to(empty, free.shape), level)
    flat = [np.ravel(a)[first] for a in (valid, np.maximum(model, 0), total, free,
                                         np.broadcast_to(empty, free.shape), mem_free)]
    once = _fits(table, flat[0], flat[2], table.need[flat[1]], flat[3], flat[4], flat[5])
    return np.take(once, inverse, axis=0).reshape(*free.shape, once.shape[-1])


def _distinct(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of rows given by integer columns of a small range (all one shape): the index of one row of each distinct
    row, and each row's number among them (dense tables, no sort: the ranges are small)."""
    code, span = np.zeros(columns[0].size, np.int64), 1
    small = 4 * code.size + 1024  # a dense table about the size of the rows: renumbering is cheap
    for col in columns:
        c = np.ravel(col).astype(np.int64)
        low = int(c.min(initial=0))
        width = int(c.max(initial=0)) - low + 1
        if span > 1 and span * width > small:  # renumbered first, so that the product stays small
            code, span = _renumbered(code, span)
        code, span = code * width + (c - low), span * width
    code, span = _renumbered(code, span)
    first = np.empty(span, np.intp)
    first[code] = np.arange(code.size)
    return first, code


def _renumbered(code: np.ndarray, span: int) -> tuple[np.ndarray, int]:
    """Codes below `span` renumbered 0..distinct-1 in order, and how many are distinct."""
    if span > DENSE_CODES:  # wide values: sorted instead
        _, code = np.unique(code, return_inverse=True)
        return code.reshape(-1), int(code.max(initial=-1)) + 1
    seen = np.zeros(span, np.bool_)
    seen[code] = True
    number = np.cumsum(seen) - 1
    return number[code], int(number[-1]) + 1 if span else 0


def _over_gpus(cap: np.ndarray, fits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[node, kind]: the free capacity of the GPUs each kind fits, added GPU by GPU in index order (an order fixed
    here, not numpy's, which pairs terms for some shapes: a subset of kinds adds up as all of them), and how many
    GPUs each kind fits."""
    usable = np.where(fits[:, 0], cap[:, 0, None], 0.0)
    n_fit = fits[:, 0].astype(np.int16)
    for j in range(1, fits.shape[1]):
        usable += np.where(fits[:, j], cap[:, j, None], 0.0)  # cap * fits, without the cast
        n_fit += fits[:, j]
    return usable, n_fit


def _host_ok(table: MixTable, cpu: np.ndarray | None, mem: np.ndarray | None) -> np.ndarray | bool:
    if cpu is None or mem is None:
        return True
    return (table.cpu <= cpu[..., None]) & (table.memory <= mem[..., None])


def _stranded(table: MixTable, capacity: np.ndarray, cpu: np.ndarray | None) -> np.ndarray | float:
    """Free GPU capacity the node's free host CPU cannot feed at the mix's CPU per GPU: GPUs that stay
    idle once CPU runs out, which FGD's per-kind test sees only when the CPU is nearly gone."""
    if cpu is None or table.cpu_per_gpu <= 0 or table.stranding == 0:
        return 0.0
    return table.stranding * np.maximum(0.0, capacity - cpu / table.cpu_per_gpu)


def final_waste(table: MixTable, cus: np.ndarray) -> np.ndarray:
    """[model, i]: the GPU capacity expected to stay unused in the end on a GPU of that model with i free
    CUs (i < all of them), under the mix. Why not FGD's count (the free capacity times the share of arriving
    kinds that cannot use it): whole-GPU pods, most of a GPU trace, never use a remainder, so FGD charges
    every remainder for them and pushes each part-GPU pod into the largest remainder it fits, even when that
    leaves a sliver only rare pods fit (a 470m pod beside a lone 320m pod leaves 0.21, for the 160m pods) and
    a better partner (a 650m pod) is common. Whole-GPU pods take empty GPUs; what is lost once the cluster is
    full is what no part-GPU pod fills. A remainder of r is filled by part-GPU kind k, if k fits, at
    rho_k = w_k / C_k(r): k's weight over that of the remainders competing for it, those k fits that are no
    larger than r (k goes to the tightest; none: rho_k = 1). The remainders arise as the mix fills GPUs: a
    lone part-GPU pod j leaves 1 - s_j as often as j arrives, and a remainder u filled by k leaves u - s_k
    (_remainder_supply). With c = min(1, sum rho_k) the chance it is filled and k drawn by rho_k,
    W(r) = (1 - c) r + c * sum_k (rho_k / sum rho) W(r - s_k), worked out upwards from r = 0. Derived from
    the mix alone; no constant."""
    need, w = table.need, table.weight
    out = np.zeros((need.shape[0], int(cus.max()) + 1))
    for m, total in enumerate(cus.tolist()):
        nk = need[m]
        part = (table.count == 1) & (nk > 0) & (nk < total)
        if not part.any():
            out[m, :total] = np.arange(total) / total
            continue
        rho = _fill_rates(w, nk, part, _remainder_supply(w, nk, part, total), total)
        for i in range(total):
            r = rho[i]
            if not r.any():
                out[m, i] = i / total
                continue
            c = min(1.0, float(r.sum()))
            out[m, i] = (1.0 - c) * i / total + c * float(r @ out[m, np.maximum(i - nk, 0)]) / float(r.sum())
    return out


def _fill_rates(w: np.ndarray, nk: np.ndarray, part: np.ndarray, supply: np.ndarray, total: int) -> np.ndarray:
    """[i, kind]: rho_k of a remainder of i CUs (final_waste), given how often each remainder arises."""
    below = np.concatenate([[0.0], np.cumsum(supply)])  # below[v]: remainders of fewer than v CUs
    at = np.arange(total)[:, None]
    fit = part & (nk <= at)
    competing = below[at + 1] - below[np.minimum(nk, at + 1)]
    rate = np.divide(w, competing, out=np.ones_like(competing), where=competing > 0)
    return np.where(fit, np.minimum(1.0, rate), 0.0)


def _remainder_supply(w: np.ndarray, nk: np.ndarray, part: np.ndarray, total: int) -> np.ndarray:
    """[v]: how often a remainder of v CUs arises as the mix fills GPUs: lone part-GPU pods leave total - s_j,
    and a remainder u that kind k fills (at the rates those remainders give, _fill_rates) leaves u - s_k. The
    rates depend on the remainders: worked out again until they settle (the remainders only shrink, so each
    round adds the next generation)."""
    lone = np.zeros(total + 1)
    np.add.at(lone, total - nk[part], w[part])
    supply = lone
    for _ in range(total):
        rho = _fill_rates(w, nk, part, supply, total)
        new = lone.copy()
        for u in range(total - 1, 0, -1):
            r = rho[u]
            if new[u] <= 0 or not r.any():
                continue
            flow = new[u] * min(1.0, float(r.sum())) * r / float(r.sum())
            np.add.at(new, np.maximum(u - nk, 0)[r > 0], flow[r > 0])
        if np.allclose(new, supply, rtol=1e-6, atol=1e-9):
            return new
        supply = new
    return supply


def _remainders(table: MixTable, cap: np.ndarray, model: np.ndarray, fits: np.ndarray,
                host: np.ndarray | bool) -> np.ndarray | float:
    """[node]: what the `waste` count changes in F. FGD counts a GPU's free capacity `cap` [node, GPU] for
    the one-GPU kinds that cannot use it (their weight W1 less that of those that fit it, host included);
    the `waste` count puts, for the kinds whose host requests the node meets, their weight times the
    remainder's final_waste in its place (an empty GPU: 0), and for the others all of `cap`, as FGD does.
    Multi-GPU kinds, pods without GPUs and host CPU stranding keep FGD's terms. FGD (table.waste None): 0."""
    if table.waste is None or table.model_cus is None:
        return 0.0
    one = np.where(table.count == 1, table.weight, 0.0)
    w1 = float(one.sum())
    hosted = np.einsum("...k,k->...", host, one)[..., None] if isinstance(host, np.ndarray) else w1
    ok = fits & (host[..., None, :] if isinstance(host, np.ndarray) else host)
    p = np.einsum("...k,k->...", ok, one)
    m = np.maximum(np.broadcast_to(model, cap.shape), 0)
    cus = table.model_cus[m]
    lost = np.where(cap < 1.0, table.waste[m, np.clip(np.rint(cap * cus).astype(np.int64), 0, cus)], 0.0)
    # the kinds the node's host can take: the remainder's final waste; those it cannot: all of it, as in FGD
    return (hosted * lost + cap * (w1 - hosted) - cap * (w1 - p)).sum(axis=-1)


def _weighted(table: MixTable, x: np.ndarray) -> np.ndarray:
    """sum_k w_k x[..., k]. Each value is worked out from its own row alone, whatever the other rows (a BLAS
    product's rounding depends on how many rows it is given), so that a node's rise is a function of the node:
    remembered rises (Fragmentation) are the rises worked out again."""
    return np.einsum("...k,k->...", np.ascontiguousarray(x), table.weight)  # one layout, one order of adding


def _room(table: MixTable, cap: np.ndarray, fits: np.ndarray, host: np.ndarray | bool,
          cpu_left: np.ndarray | None, model: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """F of nodes whose GPUs have free capacity `cap` [node, GPU] and fit the kinds `fits` [node, GPU, kind],
    and its parts: the free capacity, and per kind the capacity on GPUs it fits and how many GPUs it fits."""
    usable, n_fit = _over_gpus(cap, fits)  # [node, kind]
    total = cap.sum(axis=1)
    f = _frag(table, total, usable, n_fit, host, cpu_left) + _remainders(table, cap, model, fits, host)
    return f, total, usable, n_fit


def _frag(table: MixTable, total: np.ndarray, usable: np.ndarray, n_fit: np.ndarray, host: np.ndarray | bool,
          cpu_left: np.ndarray | None) -> np.ndarray:
    """[node]: F from its parts (_room)."""
    return _weighted(table, total[:, None] - usable * ((n_fit >= table.count) & host)) + _stranded(table, total,
                                                                                                   cpu_left)


@dataclass(frozen=True)
class Basis:
    """What every rise on some nodes starts from, whatever the request: per GPU its free capacity and the
    kinds it fits, per node F and its parts (_room). A function of the nodes' rows and the mix table only."""

    cap: np.ndarray  # [node, GPU]
    fits: np.ndarray  # [node, GPU, kind]
    total: np.ndarray  # [node]: free capacity (GPUs)
    usable: np.ndarray  # [node, kind]
    n_fit: np.ndarray  # [node, kind]
    before: np.ndarray  # [node]: F

    def take(self, idx: np.ndarray) -> Basis:
        if _every(idx, len(self.before)):
            return self
        return Basis(*(np.take(a, idx, axis=0) for a in (self.cap, self.fits, self.total, self.usable, self.n_fit,
                                                         self.before)))


def _every(idx: np.ndarray, n: int) -> bool:
    """Whether idx is 0..n-1 in order (taking it is a copy of the whole)."""
    return len(idx) == n and (n == 0 or (idx[0] == 0 and idx[-1] == n - 1 and bool((np.diff(idx) == 1).all())))


def node_basis(table: MixTable, rows: Rows) -> Basis:
    fits = _fits_of(table, rows.valid, rows.model, rows.total, rows.free, rows.empty, rows.mem_free)
    cap = _capacity(rows.valid, rows.usable, rows.free, rows.empty)
    before, total, usable, n_fit = _room(table, cap, fits, _host_ok(table, rows.cpu_free, rows.host_mem_free),
                                         rows.cpu_free, rows.model)
    return Basis(cap, fits, total, usable, n_fit, before)


def _first_equal(rows: Rows, need: np.ndarray, whole: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """[node, GPU]: the GPU whose rise stands for this one's. A fitting empty GPU whose row equals that of the
    node's first fitting empty GPU has its rise (the empty GPUs of a node are most of its equal GPUs: worked
    out once); any other stands for itself."""
    nodes, width = ok.shape
    empty = ok & rows.empty
    first = empty.argmax(axis=1)[:, None]  # 0 where none: then no GPU below is empty either
    at = np.arange(nodes)[:, None]
    same = empty & (np.arange(width) > first)
    for field in (rows.valid, rows.model, rows.total, rows.free, rows.usable, rows.mem_free, need, whole):
        same &= field == field[at, first]
    return np.where(same, first, np.arange(width))


def deltas(table: MixTable, rows: Rows, need: np.ndarray, whole: np.ndarray, ok: np.ndarray, gpu_memory: int,
           cpu: int, memory: int, basis: Basis | None = None) -> np.ndarray:
    """[node, GPU]: the rise of F if one GPU of the slice (`need` CUs, or the whole GPU where `whole`)
    goes on that GPU; +inf where it does not fit (`ok` false). `basis`: node_basis(table, rows), if known."""
    if table.empty:
        return np.where(ok, 0.0, INFINITE)
    basis = node_basis(table, rows) if basis is None else basis
    src = _first_equal(rows, need, whole, ok)
    n, j = np.nonzero(ok & (src == np.arange(ok.shape[1])))
    out = np.full(ok.shape, INFINITE)
    # Only the fitting GPUs, first of their equals, as flat [GPU, kind] rows.
    valid, usable_cus, free, cap = rows.valid[n, j], rows.usable[n, j], rows.free[n, j], basis.cap[n, j]
    free2 = np.where(whole[n, j], 0, free - need[n, j])
    cap2 = _capacity(valid, usable_cus, free2, False)
    width, kinds = basis.fits.shape[1:]
    fits = np.take(basis.fits.reshape(-1, kinds), n * width + j, axis=0)  # basis.fits[n, j], faster
    fits2 = _fits_of(table, valid, rows.model[n, j], rows.total[n, j], free2, False, rows.mem_free[n, j] - gpu_memory)
    # [GPU, kind], a copy: less cap * fits, plus cap2 * fits2, in place where they fit (all >= 0: the same values)
    usable2 = np.take(basis.usable, n, axis=0)
    np.subtract(usable2, cap[:, None], out=usable2, where=fits)
    np.add(usable2, cap2[:, None], out=usable2, where=fits2)
    cpu_left = None if rows.cpu_free is None else rows.cpu_free - cpu
    host2 = _host_ok(table, cpu_left, None if rows.host_mem_free is None else rows.host_mem_free - memory)
    # kind k can run on the node after (n_fit - fits + fits2 >= count, and the host left holds it) exactly when
    # fits2 - fits reaches what the node's host and count leave wanting, worked out per node (small integers)
    wanting = np.where(host2, table.count - basis.n_fit, np.iinfo(np.int16).max).astype(np.int16)
    runs = (fits2.view(np.int8) - fits.view(np.int8)) >= np.take(wanting, n, axis=0)
    cpu_left = None if cpu_left is None else cpu_left[n]
    s2 = basis.total[n] - cap + cap2
    np.multiply(usable2, runs, out=usable2)  # in place from here: s2 - usable2 * runs
    after = _weighted(table, np.subtract(s2[:, None], usable2, out=usable2))
    if table.waste is not None:  # the node's GPUs with the host room left after, the chosen one as it is after
        mj, h = rows.model[n, j][:, None], np.take(host2, n, axis=0) if isinstance(host2, np.ndarray) else host2
        after = after + (_remainders(table, basis.cap[n], rows.model[n], basis.fits[n], h)
                         - _remainders(table, cap[:, None], mj, fits[:, None, :], h)
                         + _remainders(table, cap2[:, None], mj, fits2[:, None, :], h))
    out[n, j] = after + _stranded(table, s2, cpu_left) - basis.before[n]
    return np.where(ok, np.take_along_axis(out, src, axis=1), INFINITE)


def host_delta(table: MixTable, rows: Rows, cpu: int, memory: int, basis: Basis | None = None) -> np.ndarray:
    """[node]: the rise of F when a pod without GPUs takes `cpu` and `memory` of the node's host."""
    if table.empty or rows.cpu_free is None or rows.host_mem_free is None:
        return np.zeros(rows.free.shape[0])
    basis = node_basis(table, rows) if basis is None else basis
    cpu_left = rows.cpu_free - cpu
    host2 = _host_ok(table, cpu_left, rows.host_mem_free - memory)  # the GPUs stay as they are
    return (_frag(table, basis.total, basis.usable, basis.n_fit, host2, cpu_left)
            + _remainders(table, basis.cap, rows.model, basis.fits, host2) - basis.before)


def joint_delta(table: MixTable, rows: Rows, chosen: np.ndarray, need: np.ndarray, whole: np.ndarray,
                gpu_memory: int, cpu: int, memory: int, basis: Basis | None = None) -> np.ndarray:
    """[node]: the rise of F when every `chosen` GPU of a node takes one GPU of the slice at once."""
    if table.empty:
        return np.zeros(chosen.shape[0])
    basis = node_basis(table, rows) if basis is None else basis
    free2 = np.where(chosen, np.where(whole, 0, rows.free - need), rows.free)
    empty2 = rows.empty & ~chosen
    cpu_left = None if rows.cpu_free is None else rows.cpu_free - cpu
    host2 = _host_ok(table, cpu_left, None if rows.host_mem_free is None else rows.host_mem_free - memory)
    # the GPUs not chosen fit what they fit before (basis.fits): worked out again only for the chosen ones
    n, j = np.nonzero(chosen)
    fits2 = basis.fits.copy()
    fits2[n, j] = _fits_of(table, rows.valid[n, j], rows.model[n, j], rows.total[n, j], free2[n, j], False,
                           rows.mem_free[n, j] - gpu_memory)
    after, _, _, _ = _room(table, _capacity(rows.valid, rows.usable, free2, empty2), fits2, host2, cpu_left,
                           rows.model)
    return after - basis.before


def best_placements(table: MixTable, rows: Rows, need: np.ndarray, whole: np.ndarray, ok: np.ndarray,
                    count: int, gpu_memory: int, cpu: int, memory: int,
                    basis: Basis | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per node: the rise of F of its best placement of the slice (+inf: it does not fit) and the GPUs
    ([node, GPU] mask) that placement takes. One GPU: the GPU with the least rise (lowest index among
    equals). Several: the `count` GPUs with the least rise each, their rise taken together."""
    if basis is None and not table.empty:
        basis = node_basis(table, rows)
    d = deltas(table, rows, need, whole, ok, gpu_memory, cpu, memory, basis)
    if count == 1:
        best = np.argmin(d, axis=1)
        chosen = np.zeros(d.shape, np.bool_)
        chosen[np.arange(d.shape[0]), best] = True
        value = d[np.arange(d.shape[0]), best]
        return value, chosen & np.isfinite(value)[:, None]
    order = np.argsort(d, axis=1, kind="stable")[:, :count]
    chosen = np.zeros(d.shape, np.bool_)
    np.put_along_axis(chosen, order, True, axis=1)
    enough = np.isfinite(np.take_along_axis(d, order, axis=1)).all(axis=1) if count <= d.shape[1] else \
        np.zeros(d.shape[0], np.bool_)
    chosen &= enough[:, None]
    value = np.full(d.shape[0], INFINITE)
    some = np.flatnonzero(enough)
    if some.size:  # worked out only for the nodes that have the GPUs (each node's from its own row)
        sub = rows if _every(some, len(value)) else _take_rows(rows, some)
        value[some] = joint_delta(table, sub, chosen[some], need[some], whole[some], gpu_memory, cpu, memory,
                                  None if basis is None else basis.take(some))
    return value, chosen


def _take_rows(rows: Rows, idx: np.ndarray) -> Rows:
    return Rows(*(None if a is None else np.take(a, idx, axis=0) for a in (
        rows.valid, rows.model, rows.total, rows.free, rows.usable, rows.empty, rows.mem_free, rows.cpu_free,
        rows.host_mem_free)))


def _free_gpus(rows: Rows) -> np.ndarray:
    """[node]: free GPU capacity (in GPUs). Added to a node's rise times the policy's `packTieBreak`, so
    that of nodes the mix rates alike the fullest is preferred: whole nodes stay whole for multi-GPU pods
    the mix has not shown yet, instead of kube-scheduler's spreading deciding every tie."""
    return _capacity(rows.valid, rows.usable, rows.free, rows.empty).sum(axis=1)


def rise_scores(rises: np.ndarray) -> np.ndarray:
    """0..1 for prioritize: 0.5 for a placement that leaves F as it was, 1 for one that lowers it by
    half a GPU or more, 0 for one that raises it by half a GPU or more."""
    return np.clip(0.5 - np.asarray(rises, np.float64), 0.0, 1.0)


def candidate_mask(rises: np.ndarray, tolerance: float, min_nodes: int) -> np.ndarray:
    """Which nodes are candidates: those whose best placement raises F at most `tolerance` GPUs more than
    the best node's, and at least the `min_nodes` best (ties included). +inf (no fit) and NaN never are."""
    finite = rises[np.isfinite(rises)]
    if not finite.size:
        return np.zeros(rises.shape, np.bool_)
    cut = float(finite.min()) + tolerance + 1e-9
    if finite.size >= min_nodes:
        cut = max(cut, float(np.partition(finite, min_nodes - 1)[min_nodes - 1]) + 1e-9)
    else:
        cut = float(finite.max()) + 1e-9
    return rises <= cut


class NamedRises(Mapping[str, float]):
    """Rises by node name (NaN: no answer, left out unless `unknown`), as a dict built only when read: filter answers
    for thousands of nodes and the extender's reply reads none of them (prioritize asks about the candidates, the
    simulator reads them all)."""

    def __init__(self, names: Sequence[str], rises: np.ndarray, unknown: bool = False) -> None:
        self._names, self._rises, self._unknown = names, rises, unknown
        self._map: dict[str, float] | None = None

    def _built(self) -> dict[str, float]:
        if self._map is None:
            known = ~np.isnan(self._rises) | self._unknown
            self._map = dict(zip(compress(self._names, known.tolist()), self._rises[known].tolist(), strict=True))
        return self._map

    def __getitem__(self, name: str) -> float:
        return self._built()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())


def narrow(rises: dict[str, float], tolerance: float, min_nodes: int) -> set[str]:
    """The candidates (candidate_mask) among named nodes."""
    names = list(rises)
    keep = candidate_mask(np.fromiter(rises.values(), np.float64, len(names)), tolerance, min_nodes)
    return set(compress(names, keep.tolist()))


# --- the engine's use of it ------------------------------------------------------------------------
def rows_from_columns(cols: Columns, slots: np.ndarray,
                      host: tuple[np.ndarray, np.ndarray] | None) -> tuple[Rows, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of these index slots (all >= 0) and the request's per-GPU need, whole-GPU take and fit."""
    c = cols.cols

    def pick(a: np.ndarray) -> np.ndarray:
        return np.take(a, slots, axis=0)  # a copy of these rows, about twice as fast as a[slots]

    valid = (pick(c["valid"]) != 0) & (pick(c["healthy"]) != 0)
    total = pick(c["total"])
    rows = Rows(valid, pick(c["model"]), total, pick(c["free"]), total - pick(c["shared"]), pick(c["slices"]) == 0,
                pick(c["mem_free"]), None if host is None else host[0], None if host is None else host[1])
    return rows, pick(cols.need), pick(cols.whole), pick(cols.ok)


def rows_from_states(req: SliceRequest, states: list[NodeState], policy: Policy,
                     model_ids: dict[tuple[str, int, int], int],
                     host: tuple[np.ndarray, np.ndarray] | None) -> tuple[Rows, np.ndarray, np.ndarray, np.ndarray]:
    """The same rows as `rows_from_columns`, from node states (bind: the node as it is under its lock)."""
    width = max([len(s.gpus) for s in states] + [1])
    shape = (len(states), width)
    z = {name: np.zeros(shape, np.int64) for name in ("model", "total", "free", "usable", "mem", "need")}
    valid, empty, whole, ok = (np.zeros(shape, np.bool_) for _ in range(4))
    for i, state in enumerate(states):
        for j, gpu in enumerate(state.gpus):
            info = gpu.info
            n = needed_cus(req, gpu, policy)
            valid[i, j] = info.healthy
            z["model"][i, j] = model_ids.setdefault((info.model, info.computeUnits, info.xcds), len(model_ids))
            z["total"][i, j], z["free"][i, j] = info.computeUnits, len(gpu.free_cus)
            z["usable"][i, j], z["mem"][i, j], z["need"][i, j] = info.computeUnits - len(gpu.shared), gpu.memory_free, n
            empty[i, j], whole[i, j] = not gpu.slices, takes_whole(gpu, n)
            ok[i, j] = gpu_reject_reason(req, gpu, policy) is None
    rows = Rows(valid, z["model"], z["total"], z["free"], z["usable"], empty, z["mem"],
                None if host is None else host[0], None if host is None else host[1])
    return rows, z["need"], whole, ok


class _Remembered:
    """Per index slot: the node's basis for one mix table, and its best placement's rise per request kind, kept
    until the slot's row (GpuIndex stamps) or the node's host room changes. What is kept is what working it out
    again gives: each node's values come from its own row alone (_weighted), whichever nodes are worked out
    with it (tests/engine/test_fragmentation_memo.py)."""

    def __init__(self, index: GpuIndex, key: tuple, slots: int, table: MixTable) -> None:
        self.index = weakref.ref(index)  # a new ledger's index starts its stamps afresh
        self.key = key  # (mix version, model keys, policy version, index width and slots): a change starts afresh
        self.table = table
        self.stamp = np.full(slots, -1, np.int64)
        self.host = np.zeros((slots, 2), np.int64)
        self.version = np.zeros(slots, np.int64)  # bumped when the slot's basis is worked out again
        self.basis: Basis | None = None
        self.rises: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()  # kind -> (version, rise)
        self._next = 1

    def refresh(self, table: MixTable, cols: Columns, slots: np.ndarray, stamps: np.ndarray,
                host: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """Work out the basis of the slots whose row or host room changed; their versions."""
        room = np.stack(host, axis=1) if host is not None else np.full((len(slots), 2), NO_HOST, np.int64)
        stale = (self.stamp[slots] != stamps) | (self.host[slots] != room).any(axis=1)
        if stale.any():
            s = slots[stale]
            rows, _, _, _ = rows_from_columns(cols, s, None if host is None else (host[0][stale], host[1][stale]))
            basis = node_basis(table, rows)
            if self.basis is None:
                n = len(self.stamp)
                self.basis = Basis(*(np.zeros((n, *a.shape[1:]), a.dtype) for a in (
                    basis.cap, basis.fits, basis.total, basis.usable, basis.n_fit, basis.before)))
            for f in fields(Basis):
                getattr(self.basis, f.name)[s] = getattr(basis, f.name)
            self.stamp[s], self.host[s] = stamps[stale], room[stale]
            self.version[s] = self._next + np.arange(len(s))
            self._next += len(s)
        return self.version[slots]

    def carry(self, old: _Remembered, cols: Columns) -> None:
        """Start from the previous mix snapshot's memo when the new snapshot has no kind the old one lacks: the
        nodes whose rows are as it saw them keep their free capacity and each kind's weight-free columns (fits,
        usable, n_fit); only F is worked out again (the weights changed), with _room's terms. Each column comes
        from its own kind and row alone (_fits_of, _over_gpus), so this is node_basis of the rows, bit for bit.
        With a new kind nothing is kept: its columns need every GPU's fit worked out, and node_basis of the rows
        then costs less than working out the new columns and merging them in (measured at 5,000 nodes)."""
        slots = np.flatnonzero((old.stamp >= 0) & (old.stamp == cols.table.stamps))
        if old.basis is None or not slots.size:
            return
        ids = {kind: k for k, kind in enumerate(old.table.kind_ids())}
        src = np.array([ids.get(kind, -1) for kind in self.table.kind_ids()], np.intp)
        if (src < 0).any():
            return
        table, was = self.table, old.basis
        # np.take: row-major copies (a[:, src] is column-major, slow to read by row)
        fits, usable, n_fit = (np.take(a, src, axis=-1) for a in (was.fits, was.usable, was.n_fit))
        room = old.host[slots]
        before = np.zeros(len(was.before))
        said = room[:, 0] != NO_HOST
        for part, host in ((slots[said], (room[said, 0], room[said, 1])), (slots[~said], None)):
            if part.size:
                cpu = None if host is None else host[0]
                ok = _host_ok(table, cpu, None if host is None else host[1])
                before[part] = _frag(table, was.total[part], usable[part], n_fit[part], ok, cpu) + _remainders(
                    table, was.cap[part], np.take(cols.cols["model"], part, axis=0), fits[part], ok)
        self.basis = Basis(was.cap, fits, was.total, usable, n_fit, before)
        self.stamp[slots], self.host[slots] = old.stamp[slots], room
        self.version[slots] = self._next + np.arange(len(slots))
        self._next += len(slots)

    def rise_of(self, kind: tuple) -> tuple[np.ndarray, np.ndarray]:
        entry = self.rises.get(kind)
        if entry is None:
            entry = self.rises[kind] = (np.zeros(len(self.stamp), np.int64), np.zeros(len(self.stamp)))
            while len(self.rises) > REMEMBERED_KINDS:
                self.rises.popitem(last=False)
        self.rises.move_to_end(kind)
        return entry


NO_HOST = np.iinfo(np.int64).min  # the host room remembered for a cluster that does not say
REMEMBERED_KINDS = 32  # request kinds whose rises are kept (each: 16 bytes per index slot)


class Fragmentation:
    """The engine's fragmentation scorer: the observed mix and the per-node answers built on it."""

    def __init__(self, policy: Policy) -> None:
        frag = policy.scoring.fragmentation
        self.mix = WorkloadMix(frag.window, frag.maxKinds, frag.weighting, frag.hostCpu)
        self._memo: _Remembered | None = None
        self._memo_lock = threading.Lock()

    def observe(self, uid: str, req: SliceRequest, cpu_millis: int, memory_bytes: int, policy: Policy) -> None:
        """Count the pod in the mix, under the mix settings of the policy in force (a reload changes them)."""
        frag = policy.scoring.fragmentation
        self.mix.configure(frag.window, frag.maxKinds, frag.weighting, frag.hostCpu)
        self.mix.observe(uid, req, cpu_millis, memory_bytes)

    def rises(self, req: SliceRequest, policy: Policy, cols: Columns, slots: np.ndarray,
              host: tuple[np.ndarray, np.ndarray] | None, cpu: int, memory: int) -> np.ndarray:
        """Per slot (-1: no answer, NaN): the rise of F of the node's best placement (+inf: no fit). Nodes
        whose row and host room are as when last asked about this request keep their rise (_Remembered)."""
        out = np.full(len(slots), np.nan)
        have = slots >= 0
        if not have.any():
            return out
        table = self.mix.table(policy, list(cols.keys))
        idx = slots[have]
        room = None if host is None else (host[0][have], host[1][have])
        if cols.need.shape[1] < req.count:
            out[have] = INFINITE
            return out
        stamps = cols.table.stamps[idx]  # before the rows: a write after this leaves the stamps behind
        if not cols.quiet():  # the columns' need and fit may be older than these stamps: nothing is kept
            out[have] = self._worked_out(req, policy, table, cols, idx, room, cpu, memory, None)
            return out
        with self._memo_lock:  # the HTTP server's threads share the memo
            memo = self._memo_for(cols, table, policy)
            version = memo.refresh(table, cols, idx, stamps, room)
            known, rise = memo.rise_of((req, policy.version, cpu, memory))
            stale = known[idx] != version
            if stale.any():
                s = idx[stale]
                assert memo.basis is not None
                sub = None if room is None else (room[0][stale], room[1][stale])
                rise[s] = self._worked_out(req, policy, table, cols, s, sub, cpu, memory, memo.basis.take(s))
                known[s] = version[stale]
            out[have] = rise[idx]
        return out

    def _bases(self, table: MixTable, policy: Policy, cols: Columns, slots: np.ndarray,
               host: tuple[np.ndarray, np.ndarray] | None) -> tuple[Rows, Basis]:
        """The rows of these slots and their basis, the remembered one where the nodes did not change."""
        stamps = cols.table.stamps[slots]
        rows, _, _, _ = rows_from_columns(cols, slots, host)
        if not cols.quiet():
            return rows, node_basis(table, rows)
        with self._memo_lock:
            memo = self._memo_for(cols, table, policy)
            memo.refresh(table, cols, slots, stamps, host)
            assert memo.basis is not None
            return rows, memo.basis.take(slots)

    def _memo_for(self, cols: Columns, table: MixTable, policy: Policy) -> _Remembered:
        key = (table.version, tuple(cols.keys), policy.version, cols.table.width, len(cols.table.stamps))
        old = self._memo
        if old is None or old.key != key or old.index() is not cols.index:
            self._memo = _Remembered(cols.index, key, len(cols.table.stamps), table)
            if old is not None and old.key[1:] == key[1:] and old.index() is cols.index:
                self._memo.carry(old, cols)  # the mix's next snapshot: what does not depend on its weights
        return self._memo

    def _worked_out(self, req: SliceRequest, policy: Policy, table: MixTable, cols: Columns, slots: np.ndarray,
                    host: tuple[np.ndarray, np.ndarray] | None, cpu: int, memory: int,
                    basis: Basis | None) -> np.ndarray:
        """The rises of these slots' nodes, from their rows (and `basis`, node_basis of the same rows, if known)."""
        rows, need, whole, ok = rows_from_columns(cols, slots, host)
        if basis is None and not table.empty:
            basis = node_basis(table, rows)
        value, _ = best_placements(table, rows, need, whole, ok, req.count, req.memory_bytes, cpu, memory, basis)
        # the policy in force, not the one the engine started with: a reload changes it
        tie = policy.scoring.fragmentation.packTieBreak
        return value + tie * (_free_gpus(rows) if basis is None else basis.total)

    @staticmethod
    def packing(req: SliceRequest, cols: Columns, slots: np.ndarray) -> np.ndarray:
        """Per slot (-1: NaN): the share of the node's GPU capacity in use once the slice is placed."""
        out = np.full(len(slots), np.nan)
        have = slots >= 0
        if not have.any():
            return out
        rows, need, whole, _ = rows_from_columns(cols, slots[have], None)
        cap = _capacity(rows.valid, rows.usable, rows.free, rows.empty)
        gpus = np.maximum(rows.valid.sum(axis=1), 1)
        ask = req.count * np.where(whole, 1.0, need / np.maximum(rows.usable, 1)).max(axis=1)
        out[have] = np.clip((gpus - cap.sum(axis=1) + ask) / gpus, 0.0, 1.0)
        return out

    def host_rises(self, policy: Policy, cols: Columns, slots: np.ndarray,
                   host: tuple[np.ndarray, np.ndarray] | None, cpu: int, memory: int) -> np.ndarray:
        """Per slot (-1: NaN): the rise of F when a pod without GPUs takes this much of the node's host."""
        out = np.full(len(slots), np.nan)
        have = slots >= 0
        if host is None or not have.any():
            return out
        table = self.mix.table(policy, list(cols.keys))
        out[have] = 0.0
        c = cols.cols
        # a node without free GPU capacity has nothing to strand: its rise is 0 without working it out
        some = have.copy()
        some[have] = ((c["valid"][slots[have]] != 0) & (c["free"][slots[have]] > 0)).any(axis=1)
        if some.any():
            rows, basis = self._bases(table, policy, cols, slots[some], (host[0][some], host[1][some]))
            out[some] = (host_delta(table, rows, cpu, memory, basis)
                         + policy.scoring.fragmentation.packTieBreak * basis.total)
        return out

    def choose(self, req: SliceRequest, state: NodeState, policy: Policy, keys: list[tuple[str, int, int]],
               host: tuple[np.ndarray, np.ndarray] | None, cpu: int, memory: int) -> NodeFit:
        """Bind's answer on one node: the GPUs of its best placement, each with the CUs the per-GPU rule
        gives (placement._place_on), or `evaluate`'s rejection when the slice does not fit."""
        ids = {k: i for i, k in enumerate(keys)}
        rows, need, whole, ok = rows_from_states(req, [state], policy, ids, host)
        table = self.mix.table(policy, sorted(ids, key=ids.__getitem__))
        if need.shape[1] < req.count or ok.sum() < req.count:
            return evaluate(req, state, policy)
        _, chosen = best_placements(table, rows, need, whole, ok, req.count, req.memory_bytes, cpu, memory)
        shared = _shared(req, policy)
        choices = []
        for j in np.flatnonzero(chosen[0]).tolist():
            gpu = state.gpus[j]
            entry = _place(shared, gpu)
            if entry is None:  # cannot happen: `ok` is the same per-GPU rule
                return evaluate(req, state, policy)
            choices.append(_Candidate(gpu, *entry).choice(req))
        if len(choices) < req.count:
            return evaluate(req, state, policy)
        return NodeFit(True, choices=tuple(choices), score=sum(c.score for c in choices) / len(choices))
