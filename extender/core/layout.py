"""Which exact CU bits a guarantee takes, in the kernel's CU-mask bit order.

On GFX 9.4.3 (MI300) mask bit b goes to XCD b % xcds, so a contiguous run of whole atoms (xcds bits)
has the same number of bits on every XCD. Every set chosen here is such a set (core/atoms.py): an XCD
that gets no bit of a mask runs unmasked.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from extender.core.atoms import xcd_counts
from extender.core.cuset import CuSet, compact


def runs(bits: Iterable[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive bits as (start, length), in bit order."""
    if isinstance(bits, CuSet):  # from the mask, without iterating it
        return bits.runs()
    ordered = sorted(bits)
    out: list[tuple[int, int]] = []
    for b in ordered:
        if out and out[-1][0] + out[-1][1] == b:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out


def best_fit_run(rs: tuple[tuple[int, int], ...] | list[tuple[int, int]], n: int) -> int | None:
    """Index of the run `choose_cus` takes n bits from when one run holds them all: the smallest such
    run, lowest start first. None when no single run is long enough."""
    best: int | None = None
    for i, (start, length) in enumerate(rs):
        if length >= n and (best is None or (length, start) < (rs[best][1], rs[best][0])):
            best = i
    return best


def fragmentation_after_cut(rs: tuple[tuple[int, int], ...] | list[tuple[int, int]], index: int, n: int,
                            min_slice: int) -> float:
    """`fragmentation(free - taken, min_slice)` when `taken` is the first n bits of run `index` of
    `free` (what `choose_cus` takes), computed from the runs alone."""
    total = stranded = 0
    for i, (_, length) in enumerate(rs):
        if i == index:
            length -= n
        total += length
        if 0 < length < min_slice:
            stranded += length
    return stranded / total if total else 0.0


def choose_cus(free: frozenset[int], n: int, xcds: int) -> frozenset[int] | None:
    """n free bits holding the same number on every XCD (whole atoms, core/atoms.py), as contiguous as
    possible; None when n is not whole atoms or some XCD has fewer than n / xcds free bits.

    A contiguous run of whole atoms is complete by itself, so: the smallest single run that holds n
    (best fit); else whole-atom pieces of the largest runs first; the last atoms
    (too few contiguous bits left) come per XCD, lowest free bits first. Taking whole atoms never costs
    an XCD more than another, so this finds a set whenever every XCD has n / xcds free bits."""
    xcds = max(1, xcds)
    if n <= 0 or n % xcds or free_atoms(free, xcds) < n // xcds:
        return None
    rs = runs(free)
    fitting = best_fit_run(rs, n)
    # The chosen set is kept in placement's per-shape answers and then the ledger: one shared mask
    # (core/cuset.py), not a frozenset each.
    if fitting is not None:
        start = rs[fitting][0]
        return CuSet.shared(CuSet.span(start, start + n).bits)
    chosen: set[int] = set()
    for start, length in sorted(rs, key=lambda r: (-r[1], r[0])):
        take = min(length, n - len(chosen)) // xcds * xcds
        if take == 0:
            break
        chosen.update(range(start, start + take))
    per_xcd = (n - len(chosen)) // xcds
    if per_xcd:
        left: dict[int, list[int]] = {x: [] for x in range(xcds)}
        for b in sorted(free - chosen):
            left[b % xcds].append(b)
        for bits in left.values():
            chosen.update(bits[:per_xcd])
    return compact(frozenset(chosen))


def free_atoms(free: Iterable[int], xcds: int) -> int:
    """Whole atoms a CU set can still give: the fewest free bits of any XCD."""
    return min(xcd_counts(free, xcds))


def choose_burst(region: frozenset[int], extra: int, xcds: int) -> frozenset[int]:
    """Up to `extra` bits of the shared burst region (tenants share it; it is never guaranteed), in whole
    atoms so that guarantee and burst together stay XCC-complete: `extra` rounded down to atoms, and no
    more atoms than every XCD of the region holds. Lowest bits of each XCD first."""
    xcds = max(1, xcds)
    per_xcd = min(max(0, extra) // xcds, free_atoms(region, xcds)) if region else 0
    if per_xcd <= 0:
        return compact(frozenset())
    chosen: list[int] = []
    counts = [0] * xcds
    for b in sorted(region):
        if counts[b % xcds] < per_xcd:
            counts[b % xcds] += 1
            chosen.append(b)
    return compact(frozenset(chosen))


def is_full(left: int | np.ndarray, min_slice: int | np.ndarray) -> bool | np.ndarray:
    """A GPU left with fewer free CUs than the smallest slice takes no further guarantee: it is full.
    Under binpack, filling a GPU so is packing, not fragmentation — its few CUs are no use to any slice
    whichever GPU the newcomer takes, and the other stays empty — so neither the greedy score
    (engine/placement) nor the bind's CP-SAT objective (core/solver) counts it as stranded there. Ints,
    or numpy arrays elementwise (the vectorised score, engine/vectorised)."""
    return left < min_slice


def stranded(rs: Iterable[tuple[int, int]], min_slice: int) -> int:
    """Free CUs in runs (start, length) shorter than the smallest useful slice."""
    return sum(length for _, length in rs if length < min_slice)


def fragmentation(free: frozenset[int], min_slice: int) -> float:
    """Share of free CUs stranded in runs shorter than the smallest useful slice (0 = none)."""
    if not free:
        return 0.0
    return stranded(runs(free), min_slice) / len(free)
