"""CuSet answers exactly like the frozenset[int] it replaces (property tests against frozenset)."""

from __future__ import annotations

import operator
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.core.cuset import CuSet, compact

CUS = st.frozensets(st.integers(0, 320), max_size=320)
OTHERS = st.one_of(CUS, st.frozensets(st.integers(-3, 40)), st.sets(st.integers(0, 320)))
OPERATORS = (operator.and_, operator.or_, operator.sub, operator.xor, operator.le, operator.lt, operator.ge,
             operator.gt, operator.eq, operator.ne)
NAMED = ("union", "intersection", "difference", "symmetric_difference", "isdisjoint", "issubset", "issuperset")


def same(got: object, want: object) -> None:
    assert got == want and want == got
    if isinstance(want, frozenset):
        assert isinstance(got, CuSet | frozenset)
        assert sorted(got) == sorted(want) and len(got) == len(want) and hash(got) == hash(want)


@given(CUS)
def test_reads_like_a_frozenset(a: frozenset[int]) -> None:
    c = CuSet(a)
    assert list(c) == sorted(a)  # ascending, as small ints iterate in a frozenset
    assert len(c) == len(a) and bool(c) == bool(a)
    assert hash(c) == hash(a) and c == a and a == c and not (c != a)
    assert {c: 1}[a] == 1 and {a: 1}[c] == 1
    assert all(b in c for b in a) and all(b not in c for b in range(-2, 330) if b not in a)
    assert "x" not in c and 1.5 not in c
    assert sorted(c) == sorted(a) and (min(c) == min(a) if a else True)
    assert pickle.loads(pickle.dumps(c)) == c
    assert c.copy() == a
    assert c.runs() == _runs(a)


@given(CUS, OTHERS)
def test_operators_agree_both_ways(a: frozenset[int], b: frozenset[int] | set[int]) -> None:
    c = CuSet(a)
    for op in OPERATORS:
        same(op(c, b), op(a, b))
        same(op(b, c), op(b, a))
        if all(x >= 0 for x in b):
            same(op(c, CuSet(b)), op(a, b))


@given(CUS, OTHERS, st.sampled_from(NAMED), st.booleans())
def test_named_methods_agree(a: frozenset[int], b: frozenset[int] | set[int], name: str, as_list: bool) -> None:
    other = iter(sorted(b)) if as_list else b  # an iterator is read once, like frozenset's methods do
    same(getattr(CuSet(a), name)(other), getattr(a, name)(b))


@given(CUS, CUS, CUS)
def test_union_of_many(a: frozenset[int], b: frozenset[int], c: frozenset[int]) -> None:
    same(CuSet(a).union(b, CuSet(c)), a.union(b, c))
    same(frozenset().union(CuSet(a), CuSet(b)), a | b)
    same(CuSet(a).difference(b, c), a.difference(b, c))


@given(st.integers(0, 400), st.integers(0, 400))
def test_span(start: int, stop: int) -> None:
    same(CuSet.span(start, stop), frozenset(range(start, stop)))


def test_compact_keeps_what_a_mask_cannot_hold() -> None:
    assert isinstance(compact(frozenset({1, 2})), CuSet)
    odd = frozenset({-1, 3})
    assert compact(odd) is odd  # the ledger refuses it with its own reason
    assert compact(frozenset({True})) == frozenset({True}) and not isinstance(compact(frozenset({True})), CuSet)
    assert compact("0-3") == "0-3"
    with pytest.raises(ValueError):
        CuSet({-1})


def _runs(bits: frozenset[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for b in sorted(bits):
        if out and out[-1][0] + out[-1][1] == b:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out


@given(CUS)
def test_range_text_is_the_same(a: frozenset[int]) -> None:
    from extender.core.rangelist import format_ranges, parse_ranges

    text = format_ranges(a)
    assert format_ranges(CuSet(a)) == text
    same(parse_ranges(text), a)


def test_sets_kept_for_long_are_shared_masks() -> None:
    """What placement chooses and the ledger keeps (whole-atom guarantees, burst sets, the burst region,
    parsed assignments) is one shared CuSet per value, not a frozenset each."""
    from extender.core.assignment import GpuAssignment
    from extender.core.inventory import GpuInfo
    from extender.core.layout import choose_burst, choose_cus
    from extender.core.ledger import burst_region

    run = choose_cus(CuSet.span(0, 304), 32, 8)  # one run holds it
    split = choose_cus(frozenset(range(0, 16)) | frozenset(range(40, 56)) | {100 + x for x in range(8)}, 40, 8)
    burst = choose_burst(CuSet.span(256, 304), 16, 8)
    region = burst_region(GpuInfo(index=0, id="g", model="MI300X", computeUnits=304, xcds=8, shaderEngines=32,
                                  memoryBytes=2**30, healthy=True), 0.25)
    parsed = GpuAssignment(index=0, id="g", cus=frozenset(range(8)), burstCus=frozenset(), memoryBytes=1,
                           memoryLimitBytes=1)
    assert run == frozenset(range(32)) and burst == frozenset(range(256, 272))
    assert split is not None and len(split) == 40
    for cus in (run, split, burst, region, parsed.cus, parsed.burstCus):
        assert type(cus) is CuSet and cus is CuSet.shared(cus.bits)
    assert choose_burst(CuSet.span(256, 304), 0, 8) is CuSet.shared(0)
