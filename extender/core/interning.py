"""One object per repeating value among what the extender keeps for long.

The ledger and the caches hold a few values per GPU and per tenant (memory sizes, model names, hive
ids), at 40,000 GPUs and 100,000 tenants; the values repeat, and a separate int or str object each
costs 32 to 70 bytes apiece.
"""

from __future__ import annotations

import sys

_INTS: dict[int, int] = {}
_INTS_LIMIT = 4096  # distinct values kept; past it values are simply not shared (never cleared)


def shared_int(value: int) -> int:
    """The one int object kept for this value (sizes repeat across GPUs and pods)."""
    shared = _INTS.get(value)
    if shared is None:
        if len(_INTS) >= _INTS_LIMIT:
            return value
        shared = _INTS.setdefault(value, value)
    return shared


def shared_str(text: str) -> str:
    """The interned string (freed with its last holder)."""
    return sys.intern(text)


__all__ = ["shared_int", "shared_str"]
