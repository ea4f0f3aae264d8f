"""CU bit choice in the kernel's mask-bit order (bit b on XCD b % xcds): whole atoms only."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.atoms import is_xcc_complete, xcd_counts
from extender.core.layout import choose_burst, choose_cus, fragmentation, free_atoms, runs, stranded

ALL = frozenset(range(304))


def test_runs() -> None:
    assert runs([]) == []
    assert runs([5, 0, 1, 2, 7, 6]) == [(0, 3), (5, 3)]


def test_on_an_empty_gpu_a_slice_is_a_contiguous_range_of_whole_atoms() -> None:
    cus = choose_cus(ALL, 32, 8)
    assert cus == frozenset(range(32))
    assert xcd_counts(cus, 8) == [4] * 8


def test_best_fit_takes_the_smallest_run_that_holds_the_slice() -> None:
    free = frozenset(range(0, 100)) | frozenset(range(150, 182)) | frozenset(range(200, 216))
    assert choose_cus(free, 32, 8) == frozenset(range(150, 182))
    assert choose_cus(free, 16, 8) == frozenset(range(200, 216))


def test_without_a_fitting_run_whole_atoms_come_from_the_largest_runs_first() -> None:
    free = frozenset(range(0, 8)) | frozenset(range(20, 40)) | frozenset(range(50, 60))
    cus = choose_cus(free, 32, 8)
    assert cus is not None and is_xcc_complete(cus, 8) and len(cus) == 32
    assert frozenset(range(20, 36)) <= cus  # two whole atoms of the longest run


def test_short_runs_that_together_miss_xcds_are_not_taken() -> None:
    # 16 free bits, but in runs 0-3, 8-11, 16-19, 24-27: XCDs 4-7 have no free bit at all
    free = frozenset(b for start in (0, 8, 16, 24) for b in range(start, start + 4))
    assert free_atoms(free, 8) == 0
    assert choose_cus(free, 8, 8) is None


def test_a_count_that_is_not_whole_atoms_is_refused() -> None:
    assert choose_cus(ALL, 12, 8) is None
    assert choose_cus(ALL, 12, 4) == frozenset(range(12))
    assert choose_cus(ALL, 5, 1) == frozenset(range(5))


@pytest.mark.parametrize("n", [0, -1, 320])
def test_impossible_requests(n: int) -> None:
    assert choose_cus(ALL, n, 8) is None
    assert choose_cus(frozenset(), 8, 8) is None


def test_burst_takes_whole_atoms_of_the_region() -> None:
    region = frozenset(range(272, 304))
    assert choose_burst(region, 0, 8) == frozenset()
    assert choose_burst(region, -3, 8) == frozenset()
    assert choose_burst(region, 4, 8) == frozenset()  # less than an atom: the limit is a ceiling
    assert choose_burst(region, 12, 8) == frozenset(range(272, 280))
    assert choose_burst(region, 100, 8) == region
    assert choose_burst(frozenset(), 8, 8) == frozenset()
    assert choose_burst(region, 4, 1) == frozenset(range(272, 276))


def test_burst_from_a_region_an_old_policy_partly_guaranteed_stays_complete() -> None:
    region = frozenset(range(272, 304)) - {273, 290}  # XCDs 1 and 2 lost a bit
    burst = choose_burst(region, 32, 8)
    assert is_xcc_complete(burst, 8) and len(burst) == 24


def test_fragmentation() -> None:
    assert fragmentation(frozenset(), 32) == 0.0
    assert fragmentation(frozenset(range(64)), 32) == 0.0
    assert fragmentation(frozenset(range(8)) | frozenset(range(100, 132)), 32) == pytest.approx(8 / 40)
    assert fragmentation(frozenset({1, 3, 5}), 2) == 1.0
    assert stranded(runs(frozenset(range(8)) | frozenset(range(100, 132))), 32) == 8
    assert stranded([(0, 31), (40, 32), (80, 1)], 32) == 32


free_sets = st.frozensets(st.integers(min_value=0, max_value=303), max_size=304)


@given(free=free_sets, atoms=st.integers(min_value=-1, max_value=40), xcds=st.sampled_from([1, 2, 4, 8]))
@settings(max_examples=400, deadline=None)
def test_a_choice_is_whole_atoms_of_free_bits_whenever_every_xcd_has_them(free: frozenset[int], atoms: int,
                                                                           xcds: int) -> None:
    n = atoms * xcds
    cus = choose_cus(free, n, xcds)
    if n <= 0 or free_atoms(free, xcds) < atoms:
        assert cus is None
        return
    assert cus is not None and len(cus) == n and cus <= free
    assert xcd_counts(cus, xcds) == [atoms] * xcds


@given(free=free_sets, atoms=st.integers(min_value=1, max_value=8))
@settings(max_examples=300, deadline=None)
def test_a_choice_is_one_run_whenever_some_run_holds_the_slice(free: frozenset[int], atoms: int) -> None:
    cus = choose_cus(free, atoms * 8, 8)
    if any(length >= atoms * 8 for _, length in runs(free)):
        assert cus is not None and len(runs(cus)) == 1


@given(region=free_sets, extra=st.integers(min_value=-8, max_value=320), xcds=st.sampled_from([1, 4, 8]))
@settings(max_examples=300, deadline=None)
def test_burst_is_whole_atoms_within_the_limit(region: frozenset[int], extra: int, xcds: int) -> None:
    burst = choose_burst(region, extra, xcds)
    assert burst <= region and len(burst) <= max(extra, 0)
    assert not burst or is_xcc_complete(burst, xcds)
    assert len(burst) == min(max(extra, 0) // xcds, free_atoms(region, xcds)) * xcds
