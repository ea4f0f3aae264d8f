"""The hardware rule for CU masks on multi-XCD GPUs: whole atoms of one CU per XCD.

ROCr applies `HSA_CU_MASK` per XCC, and an XCC that receives no bit of the mask runs *unmasked*,
without an error (measured on MI300X: `0:0-3` occupied 156 of 304 CUs). Mask bit b lands on XCC
b % xcds (amdgpu `mqd_symmetrically_map_cu_mask`). So a CU set is safe to hand out only when it has
the same number of bits on every XCD: a whole number of *atoms*, an atom being one CU on each XCD.
Every path that hands out or accepts a CU set checks it here.
"""

from __future__ import annotations

from collections.abc import Iterable

from extender.core.errors import InputError


class AtomError(InputError):
    """A CU set that would leave some XCD unmasked (or unevenly masked)."""


def xcd_counts(cus: Iterable[int], xcds: int) -> list[int]:
    """Bits of `cus` on each XCD, by XCD index."""
    counts = [0] * max(1, xcds)
    for b in cus:
        counts[b % len(counts)] += 1
    return counts


def is_xcc_complete(cus: Iterable[int], xcds: int) -> bool:
    """True when `cus` is a non-empty whole number of atoms: equal bits on every XCD."""
    counts = xcd_counts(cus, xcds)
    return counts[0] > 0 and min(counts) == max(counts)


def check_xcc_complete(cus: Iterable[int], xcds: int, key: str) -> None:
    """Raise AtomError naming `key` when `cus` is not XCC-complete."""
    counts = xcd_counts(cus, xcds)
    if counts[0] > 0 and min(counts) == max(counts):
        return
    if max(counts) == 0:
        raise AtomError(key, "", "an empty CU set is no mask at all")
    missing = [x for x, c in enumerate(counts) if c == 0]
    reason = (f"XCDs {missing} get no bit and would run unmasked" if missing
              else f"bits per XCD are uneven {counts}")
    raise AtomError(key, f"{sum(counts)} CUs", f"{reason}; a CU set must hold whole atoms of {len(counts)} "
                    "CUs (one per XCD)")


def round_up_to_atoms(n: int, xcds: int) -> int:
    """The smallest whole number of atoms holding at least n CUs (and at least one atom)."""
    atom = max(1, xcds)
    return max(atom, -(-n // atom) * atom)
