"""`HSA_CU_MASK` text: emitted from a slice's CU sets and parsed back strictly.

Grammar (ROCm "Setting the number of CUs", and ROCr's Flag::parse_masks)::

    ID          = [0-9][0-9]*
    ID_list     = (ID | ID-ID)[, (ID | ID-ID)]*
    GPU_list    = ID_list
    CU_list     = 0x[0-F]* | ID_list
    CU_Set      = GPU_list : CU_list
    HSA_CU_MASK = CU_Set [; CU_Set]*

GPU ids count after `ROCR_VISIBLE_DEVICES` remapping. ROCr stops at the first set with a syntax
error and silently ignores it and every later set, so a mask it half-accepts is worse than none.
`parse_cu_mask` is therefore stricter than ROCr: it rejects everything ROCr rejects (a repeated GPU
or CU id, a `0x0` mask, an inverted range, a set without exactly one `:`) and also the leniencies
ROCr tolerates but that hide mistakes (whitespace, empty items, ids past the GPU's CU count, which
ROCr drops without a word). The emitter only writes the canonical form.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from extender.core.errors import InputError
from extender.core.rangelist import format_ranges

ENV_CU_MASK = "HSA_CU_MASK"
_ID = re.compile(r"[0-9]+\Z")
_HEX = re.compile(r"0[xX][0-9A-Fa-f]+\Z")


class CuMaskError(InputError):
    """An `HSA_CU_MASK` text or a CU set that cannot become one."""


def format_cu_list(cus: frozenset[int]) -> str:
    """The shorter of the range list ("0-31,64-79") and the hex mask ("0xffffffff"); ranges on a tie."""
    if not cus:
        raise CuMaskError(ENV_CU_MASK, "", "an empty CU set is a 0x0 mask, which ROCr rejects")
    if min(cus) < 0:
        raise CuMaskError(ENV_CU_MASK, sorted(cus)[:3], "CU ids are non-negative")
    ranges = format_ranges(cus)
    bits = 0
    for b in cus:
        bits |= 1 << b
    hexmask = f"0x{bits:x}"
    return hexmask if len(hexmask) < len(ranges) else ranges


def format_cu_mask(masks: Mapping[int, frozenset[int]] | Sequence[frozenset[int]]) -> str:
    """`masks[i]` is the CU set of visible GPU i (post `ROCR_VISIBLE_DEVICES`); a mapping may leave
    GPUs out (they keep every CU). GPUs with equal sets share one CU_Set, so no GPU id repeats and
    the text stays short."""
    items = masks.items() if isinstance(masks, Mapping) else enumerate(masks)
    groups: dict[frozenset[int], list[int]] = {}
    for gpu, cus in sorted(items, key=lambda kv: kv[0]):
        if gpu < 0:
            raise CuMaskError(f"{ENV_CU_MASK}[gpu {gpu}]", gpu, "GPU ids are non-negative")
        if not cus:
            raise CuMaskError(f"{ENV_CU_MASK}[gpu {gpu}]", "", "an empty CU set is a 0x0 mask, which ROCr rejects")
        groups.setdefault(frozenset(cus), []).append(gpu)
    if not groups:
        raise CuMaskError(ENV_CU_MASK, "", "no GPU to mask")
    ordered = sorted(groups.items(), key=lambda kv: kv[1][0])
    return ";".join(f"{format_ranges(gpus)}:{format_cu_list(cus)}" for cus, gpus in ordered)


def _id_list(text: str, what: str, limit: int | None) -> list[int]:
    ids: list[int] = []
    seen: set[int] = set()
    for item in text.split(","):
        lo_text, sep, hi_text = item.partition("-")
        if not _ID.match(lo_text) or (sep and not _ID.match(hi_text)):
            raise CuMaskError(ENV_CU_MASK, text, f"bad {what} item {item!r}: expected ID or ID-ID (base 10)")
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
        if hi < lo:
            raise CuMaskError(ENV_CU_MASK, text, f"inverted {what} range {item!r}")
        if limit is not None and hi >= limit:
            raise CuMaskError(ENV_CU_MASK, text, f"{what} id {hi} is past the last one ({limit - 1})")
        span = range(lo, hi + 1)
        if seen.intersection(span):
            raise CuMaskError(ENV_CU_MASK, text, f"{what} id repeats in {item!r}")
        seen.update(span)
        ids.extend(span)
    return ids


def _cu_list(text: str, limit: int | None) -> frozenset[int]:
    if text[1:2] in ("x", "X"):
        if not _HEX.match(text):
            raise CuMaskError(ENV_CU_MASK, text, "bad hex CU mask: expected 0x followed by hex digits")
        bits = int(text, 16)
        if bits == 0:
            raise CuMaskError(ENV_CU_MASK, text, "a 0x0 mask enables no CU")
        if limit is not None and bits >> limit:
            raise CuMaskError(ENV_CU_MASK, text, f"mask sets CU bits past the last CU ({limit - 1})")
        return frozenset(i for i in range(bits.bit_length()) if bits >> i & 1)
    return frozenset(_id_list(text, "CU", limit))


def parse_cu_mask(text: str, gpu_count: int | None = None,
                  cus_per_gpu: Mapping[int, int] | None = None) -> dict[int, frozenset[int]]:
    """Parse `HSA_CU_MASK` text into {visible GPU id: CU set}. With `gpu_count` / `cus_per_gpu`, ids
    past the visible GPUs or past a GPU's CUs are errors too. Raises CuMaskError on the first fault."""
    if not isinstance(text, str) or text == "":
        raise CuMaskError(ENV_CU_MASK, text, "empty mask")
    out: dict[int, frozenset[int]] = {}
    for cu_set in text.split(";"):
        parts = cu_set.split(":")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise CuMaskError(ENV_CU_MASK, cu_set, "a CU_Set is GPU_list:CU_list")
        gpus = _id_list(parts[0], "GPU", gpu_count)
        for gpu in gpus:
            if gpu in out:
                raise CuMaskError(ENV_CU_MASK, cu_set, f"GPU {gpu} appears in two CU_Sets")
        limits = {cus_per_gpu[g] for g in gpus if cus_per_gpu and g in cus_per_gpu}
        cus = _cu_list(parts[1], min(limits) if limits else None)
        for gpu in gpus:
            out[gpu] = cus
    return out
