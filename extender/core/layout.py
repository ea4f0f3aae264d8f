"""Which exact CU bits a guarantee takes, in the kernel's CU-mask bit order.

On GFX 9.4.3 (MI300) mask bit b goes to XCD b % xcds, so a contiguous run of bits is spread evenly
over XCDs and engines (`spread`), while bits at a stride of `xcds` stay on one XCD (`xcd`).
"""

from __future__ import annotations

from collections.abc import Iterable

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


def choose_spread(free: frozenset[int], n: int) -> frozenset[int] | None:
    """n free bits, as contiguous as possible: the smallest run that holds all n (best fit), else the
    largest runs first, so the leftovers stay in as few pieces as possible."""
    if n <= 0 or len(free) < n:
        return None
    rs = runs(free)
    fitting = [r for r in rs if r[1] >= n]
    if fitting:
        start, _ = min(fitting, key=lambda r: (r[1], r[0]))
        return frozenset(range(start, start + n))
    chosen: set[int] = set()
    for start, length in sorted(rs, key=lambda r: (-r[1], r[0])):
        take = min(length, n - len(chosen))
        chosen.update(range(start, start + take))
        if len(chosen) == n:
            break
    return frozenset(chosen)


def best_fit_run(rs: tuple[tuple[int, int], ...] | list[tuple[int, int]], n: int) -> int | None:
    """Index of the run `choose_spread` takes n bits from when one run holds them all: the smallest
    such run, lowest start first. None when no single run is long enough."""
    best: int | None = None
    for i, (start, length) in enumerate(rs):
        if length >= n and (best is None or (length, start) < (rs[best][1], rs[best][0])):
            best = i
    return best


def fragmentation_after_cut(rs: tuple[tuple[int, int], ...] | list[tuple[int, int]], index: int, n: int,
                            min_slice: int) -> float:
    """`fragmentation(free - taken, min_slice)` when `taken` is the first n bits of run `index` of
    `free` (what `choose_spread` takes), computed from the runs alone."""
    total = stranded = 0
    for i, (_, length) in enumerate(rs):
        if i == index:
            length -= n
        total += length
        if 0 < length < min_slice:
            stranded += length
    return stranded / total if total else 0.0


def choose_xcd(free: frozenset[int], n: int, xcds: int) -> frozenset[int] | None:
    """n free bits on as few XCDs as possible: best-fit XCD when one holds them all, else whole XCDs
    with the most free bits first. Within an XCD, lowest bits first."""
    if n <= 0 or len(free) < n:
        return None
    per: dict[int, list[int]] = {x: [] for x in range(xcds)}
    for b in sorted(free):
        per[b % xcds].append(b)
    fitting = [x for x in per if len(per[x]) >= n]
    if fitting:
        x = min(fitting, key=lambda x: (len(per[x]), x))
        return frozenset(per[x][:n])
    chosen: list[int] = []
    for x in sorted(per, key=lambda x: (-len(per[x]), x)):
        chosen.extend(per[x][: n - len(chosen)])
        if len(chosen) == n:
            break
    return frozenset(chosen)


def choose_cus(free: frozenset[int], n: int, mode: str, xcds: int) -> frozenset[int] | None:
    chosen = choose_xcd(free, n, xcds) if mode == "xcd" else choose_spread(free, n)
    return compact(chosen)  # kept in placement's per-shape answers: one shared mask, not a frozenset each


def choose_burst(region: frozenset[int], extra: int) -> frozenset[int]:
    """Up to `extra` bits of the shared burst region (tenants share it; it is never guaranteed)."""
    if extra <= 0:
        return compact(frozenset())
    return compact(frozenset(sorted(region)[:extra]))


def fragmentation(free: frozenset[int], min_slice: int) -> float:
    """Share of free CUs stranded in runs shorter than the smallest useful slice (0 = none)."""
    if not free:
        return 0.0
    stranded = sum(length for _, length in runs(free) if length < min_slice)
    return stranded / len(free)


def xcd_balance(cus: Iterable[int], xcds: int) -> int:
    """Max minus min CUs per XCD (0 = perfectly balanced)."""
    counts = [0] * xcds
    for b in cus:
        counts[b % xcds] += 1
    return max(counts) - min(counts)
