"""HSA_CU_MASK emitter and strict parser, checked against a transliteration of ROCr's parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.cumask import CuMaskError, format_cu_list, format_cu_mask, parse_cu_mask


def rocr_parse(var: str, max_gpu: int, max_cu: int) -> dict[int, frozenset[int]]:
    """ROCr's Flag::parse_masks (runtime/hsa-runtime/core/util/flag.cpp), line for line: sets before
    the first bad one are kept, the rest silently dropped. ROCr passes the visible GPU count and the
    largest CU count as the limits (amd_topology.cpp) and silently drops ids above them."""

    def split(s: str, sep: str) -> list[str]:
        out = []
        while s:
            pos = s.find(sep)
            if pos < 0:
                out.append(s)
                break
            out.append(s[:pos])
            s = s[pos + 1:]
        return out

    def strtoul(s: str) -> tuple[int, bool]:  # (value, whole string consumed)
        digits = len(s) - len(s.lstrip("0123456789"))
        return (int(s[:digits]) if digits else 0), digits == len(s)

    def elements(s: str, max_el: int) -> list[int]:
        ret: list[int] = []
        for item in split(s, ","):
            rng = split(item, "-")
            if len(rng) > 2:
                return []
            lo, ok = strtoul(rng[0] if rng else "")
            if not ok:
                return []
            if lo <= max_el:
                ret.append(lo)
            if len(rng) == 2:
                hi, ok = strtoul(rng[1])
                if not ok or hi < lo:
                    return []
                ret.extend(range(lo + 1, min(hi, max_el) + 1))
        ret.sort()
        return [] if len(set(ret)) != len(ret) else ret

    out: dict[int, frozenset[int]] = {}
    var = "".join(c for c in var if not c.isspace()).upper()
    for cu_set in split(var, ";"):
        parts = split(cu_set, ":")
        if len(parts) != 2:
            return out
        cu = parts[1]
        if cu[1:2] == "X":
            if cu[0] != "0" or not all(c in "0123456789ABCDEF" for c in cu[2:]):
                return out
            bits = int(cu[2:] or "0", 16) & ((1 << (32 * (max_cu // 32 + 1))) - 1)
            if bits == 0:
                return out
            mask = frozenset(i for i in range(bits.bit_length()) if bits >> i & 1)
        else:
            ids = elements(cu, max_cu)
            if not ids:
                return out
            mask = frozenset(ids)
        gpus = elements(parts[0], max_gpu)
        if not gpus or any(g in out for g in gpus):
            return out
        for g in gpus:
            out[g] = mask
    return out


def test_docs_example_parses() -> None:
    assert parse_cu_mask("0,2-4,7:0-15,32-47") == {g: frozenset([*range(16), *range(32, 48)]) for g in (0, 2, 3, 4, 7)}
    assert parse_cu_mask("3-9:0x337F")[5] == frozenset(i for i in range(14) if 0x337F >> i & 1)


@pytest.mark.parametrize("text", [
    "", "0", "0:", ":0", "0:1:2", "0:0x0", "0:0x", "0:0xg1", "1x:3", "0:1,1", "0:0-3,2", "0,0:1", "0:1;0:2",
    "0:3-1", " 0:1", "0:1 ", "0:1;", ";0:1", "0:1,,2", "0:-1", "0:+1", "0:1-", "a:1", "0:1-2-3", "0-:1",
])
def test_rejects(text: str) -> None:
    with pytest.raises(CuMaskError):
        parse_cu_mask(text)


def test_limits_are_errors_not_silent_drops() -> None:
    with pytest.raises(CuMaskError, match="past the last"):
        parse_cu_mask("0:0-304", cus_per_gpu={0: 304})
    with pytest.raises(CuMaskError, match="past the last"):
        parse_cu_mask("1:0-3", gpu_count=1)
    with pytest.raises(CuMaskError, match="past the last"):
        parse_cu_mask("0:0x1ff", cus_per_gpu={0: 8})
    assert parse_cu_mask("0:0-303", gpu_count=1, cus_per_gpu={0: 304})[0] == frozenset(range(304))


def test_emitter_never_writes_empty_or_repeats() -> None:
    with pytest.raises(CuMaskError):
        format_cu_mask([frozenset()])
    with pytest.raises(CuMaskError):
        format_cu_list(frozenset())
    assert format_cu_mask([frozenset(range(32)), frozenset(range(32)), frozenset({40})]) == "0-1:0-31;2:40"
    assert format_cu_mask({1: frozenset(range(0, 304, 8))}) == "1:" + format_cu_list(frozenset(range(0, 304, 8)))
    assert format_cu_list(frozenset(range(0, 64, 8))).startswith("0x")  # a stride is shorter as hex
    assert format_cu_list(frozenset(range(64))) == "0-63"


layouts = st.lists(st.sampled_from([38, 80, 104, 110, 120, 228, 304]) | st.integers(1, 512), min_size=1, max_size=8)


@st.composite
def assignments(draw: st.DrawFn) -> tuple[list[int], dict[int, frozenset[int]]]:
    cus = draw(layouts)
    chosen = draw(st.lists(st.sampled_from(range(len(cus))), min_size=1, unique=True))
    masks = {}
    for g in chosen:
        if draw(st.booleans()):  # a contiguous slice, as `spread` lays them out
            lo = draw(st.integers(0, cus[g] - 1))
            masks[g] = frozenset(range(lo, draw(st.integers(lo, cus[g] - 1)) + 1))
        else:  # any set, e.g. `xcd` strides plus a burst region
            masks[g] = frozenset(draw(st.sets(st.integers(0, cus[g] - 1), min_size=1)))
    return cus, masks


@settings(max_examples=400, deadline=None)
@given(assignments())
def test_every_emitted_mask_round_trips_and_rocr_agrees(case: tuple[list[int], dict[int, frozenset[int]]]) -> None:
    cus, masks = case
    text = format_cu_mask(masks)
    assert parse_cu_mask(text, gpu_count=len(cus), cus_per_gpu=dict(enumerate(cus))) == masks
    assert rocr_parse(text, max_gpu=len(cus), max_cu=max(cus)) == masks
    assert " " not in text and "0x0:" not in text and not text.endswith(("0x0", ";"))


# near-miss masks: mostly well-formed, with ids and hex masks around the limits
MASKISH = r"[0-9]{1,3}(-[0-9]{1,3})?:(0x[0-9a-f]{1,80}|[0-9]{1,3}(-[0-9]{1,3})?(,[0-9]{1,3})*)(;[0-9]:[0-9,-]{1,12})?"


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="0123456789,-:;xXaF ", max_size=24) | st.from_regex(MASKISH, fullmatch=True))
def test_whatever_we_accept_rocr_accepts_identically(text: str) -> None:
    # an MI300X node in SPX: 8 visible GPUs of 304 CUs
    try:
        ours = parse_cu_mask(text, gpu_count=8, cus_per_gpu=dict.fromkeys(range(8), 304))
    except CuMaskError:
        return
    assert rocr_parse(text, max_gpu=8, max_cu=304) == ours
