"""CU bit choice in the kernel's mask-bit order (bit b on XCD b % xcds)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.layout import (
    choose_burst,
    choose_cus,
    choose_spread,
    choose_xcd,
    fragmentation,
    runs,
    xcd_balance,
)

ALL = frozenset(range(304))


def test_runs() -> None:
    assert runs([]) == []
    assert runs([5, 0, 1, 2, 7, 6]) == [(0, 3), (5, 3)]


def test_spread_on_an_empty_gpu_is_a_contiguous_balanced_range() -> None:
    cus = choose_spread(ALL, 32)
    assert cus == frozenset(range(32))
    assert xcd_balance(cus, 8) == 0  # 4 CUs on each of the 8 XCDs


def test_spread_best_fit_takes_the_smallest_run_that_holds_the_slice() -> None:
    free = frozenset(range(0, 100)) | frozenset(range(150, 182)) | frozenset(range(200, 210))
    assert choose_spread(free, 32) == frozenset(range(150, 182))
    assert choose_spread(free, 10) == frozenset(range(200, 210))


def test_spread_without_a_fitting_run_takes_the_largest_runs_first() -> None:
    free = frozenset(range(0, 8)) | frozenset(range(20, 40)) | frozenset(range(50, 60))
    assert choose_spread(free, 26) == frozenset(range(20, 40)) | frozenset(range(50, 56))


def test_xcd_mode_keeps_a_small_slice_on_one_xcd() -> None:
    cus = choose_xcd(ALL, 16, 8)
    assert cus == frozenset(range(0, 128, 8))
    assert {b % 8 for b in cus} == {0}


def test_xcd_mode_fills_whole_xcds_for_a_large_slice() -> None:
    cus = choose_xcd(ALL, 76, 8)  # 38 CUs per XCD: two whole XCDs
    assert {b % 8 for b in cus} == {0, 1} and len(cus) == 76


def test_xcd_mode_prefers_the_xcd_with_the_fewest_free_bits_that_fit() -> None:
    free = ALL - frozenset(range(0, 304, 8)[:30])  # XCD 0 keeps only 8 free bits
    assert {b % 8 for b in choose_xcd(free, 8, 8)} == {0}
    assert {b % 8 for b in choose_xcd(free, 9, 8)} == {1}


def test_choose_cus_dispatches_on_the_mode() -> None:
    assert choose_cus(ALL, 16, "spread", 8) == frozenset(range(16))
    assert choose_cus(ALL, 16, "xcd", 8) == choose_xcd(ALL, 16, 8)


@pytest.mark.parametrize("chooser", [choose_spread, lambda f, n: choose_xcd(f, n, 8)])
def test_impossible_requests(chooser) -> None:  # type: ignore[no-untyped-def]
    assert chooser(frozenset(range(10)), 11) is None
    assert chooser(ALL, 0) is None
    assert chooser(ALL, -1) is None
    assert chooser(frozenset(), 1) is None


def test_burst_takes_up_to_extra_bits_of_the_region() -> None:
    region = frozenset(range(272, 304))
    assert choose_burst(region, 0) == frozenset()
    assert choose_burst(region, -3) == frozenset()
    assert choose_burst(region, 4) == frozenset(range(272, 276))
    assert choose_burst(region, 100) == region
    assert choose_burst(frozenset(), 8) == frozenset()


def test_fragmentation() -> None:
    assert fragmentation(frozenset(), 32) == 0.0
    assert fragmentation(frozenset(range(64)), 32) == 0.0
    assert fragmentation(frozenset(range(8)) | frozenset(range(100, 132)), 32) == pytest.approx(8 / 40)
    assert fragmentation(frozenset({1, 3, 5}), 2) == 1.0


def test_xcd_balance() -> None:
    assert xcd_balance(range(32), 8) == 0
    assert xcd_balance(range(0, 32, 8), 8) == 4
    assert xcd_balance([], 8) == 0


free_sets = st.frozensets(st.integers(min_value=0, max_value=303), max_size=304)


@given(free=free_sets, n=st.integers(min_value=-2, max_value=320), mode=st.sampled_from(["spread", "xcd"]),
       xcds=st.sampled_from([1, 4, 8]))
@settings(max_examples=400, deadline=None)
def test_choice_is_exactly_n_free_bits_or_none(free: frozenset[int], n: int, mode: str, xcds: int) -> None:
    cus = choose_cus(free, n, mode, xcds)
    if n <= 0 or n > len(free):
        assert cus is None
        return
    assert cus is not None and len(cus) == n and cus <= free


@given(free=free_sets, n=st.integers(min_value=1, max_value=64))
@settings(max_examples=300, deadline=None)
def test_spread_is_one_run_whenever_some_run_holds_the_slice(free: frozenset[int], n: int) -> None:
    cus = choose_spread(free, n)
    if any(length >= n for _, length in runs(free)):
        assert cus is not None and len(runs(cus)) == 1


@given(free=free_sets, n=st.integers(min_value=1, max_value=38))
@settings(max_examples=300, deadline=None)
def test_xcd_stays_on_one_xcd_whenever_one_holds_the_slice(free: frozenset[int], n: int) -> None:
    cus = choose_xcd(free, n, 8)
    per = [sum(1 for b in free if b % 8 == x) for x in range(8)]
    if max(per, default=0) >= n:
        assert cus is not None and len({b % 8 for b in cus}) == 1
