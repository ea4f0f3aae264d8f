"""CU sets as range lists in mask-bit order: {0..31, 64..79} <-> "0-31,64-79"."""

from __future__ import annotations

import re
from collections.abc import Iterable

from extender.core.bounds import MAX_CUS, OutOfBounds, check_text
from extender.core.cuset import CuSet

# ASCII decimal without leading zeros: str.isdigit() would also take "²" or "١", which int() misreads or rejects.
_NUMBER = re.compile(r"0|[1-9][0-9]*")


def format_ranges(bits: Iterable[int]) -> str:
    """Collapse a set of non-negative ints to "a-b,c,d-e" (sorted, no repeats). Empty set -> ""."""
    if isinstance(bits, CuSet):  # its runs come from the mask
        return ",".join(str(s) if n == 1 else f"{s}-{s + n - 1}" for s, n in bits.runs())
    ordered = sorted(set(bits))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        start = ordered[i]
        while i + 1 < len(ordered) and ordered[i + 1] == ordered[i] + 1:
            i += 1
        end = ordered[i]
        parts.append(str(start) if start == end else f"{start}-{end}")
        i += 1
    return ",".join(parts)


def parse_ranges(text: str, limit: int = MAX_CUS) -> CuSet:
    """Strict inverse of format_ranges: rejects repeats, descending ranges, blanks, signs, leading zeros.
    Every id must be below `limit` (a GPU's CU count), checked before a range is expanded. The set is a
    CuSet (a bit mask read as a frozenset[int])."""
    if not isinstance(text, str):
        raise ValueError("expected a string of ranges like '0-31,64-79'")
    if text == "":
        return CuSet()
    check_text(text, 8 * limit, "the range list")  # "1234," per id at most, and ids do not repeat
    bits = 0
    for part in text.split(","):
        lo_text, sep, hi_text = part.partition("-")
        if not _NUMBER.fullmatch(lo_text) or (sep and not _NUMBER.fullmatch(hi_text)):
            raise ValueError(f"bad range {part!r}")
        if len(lo_text) > 9 or len(hi_text) > 9:
            raise OutOfBounds(f"range {part[:24]!r} goes beyond id {limit - 1}")
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
        if hi < lo:
            raise ValueError(f"descending range {part!r}")
        if hi >= limit:
            raise OutOfBounds(f"range {part!r} goes beyond id {limit - 1}")
        span = ((1 << (hi - lo + 1)) - 1) << lo
        if bits & span:
            raise ValueError(f"range {part!r} repeats an id")
        bits |= span
    return CuSet.shared(bits)
