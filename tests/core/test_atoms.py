"""The atom rule: equal bits on every XCD, never an empty set."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.core.atoms import AtomError, check_xcc_complete, is_xcc_complete, round_up_to_atoms, xcd_counts


@pytest.mark.parametrize("cus, xcds, ok", [
    (range(0, 8), 8, True),             # 0:0-7 -> one bit per XCC (measured: exactly 8 CUs)
    (range(8, 16), 8, True),
    (range(0, 4), 8, False),            # 0:0-3 -> XCCs 4-7 unmasked (measured: 156 CUs)
    ({0, 8, 16, 24}, 8, False),         # all on XCC 0 (measured: 270 CUs)
    ({0}, 8, False),
    (range(0, 12), 8, False),           # 1.5 atoms: uneven
    (range(3, 19), 8, True),            # any 16 consecutive bits are two atoms
    (set(), 8, False),
    ({5}, 1, True),                     # single-XCD GPUs: any non-empty set
])
def test_table(cus, xcds, ok):
    assert is_xcc_complete(cus, xcds) is ok
    if ok:
        check_xcc_complete(cus, xcds, "k")
    else:
        with pytest.raises(AtomError) as err:
            check_xcc_complete(cus, xcds, "gpuslice.io/assignment")
        assert err.value.key == "gpuslice.io/assignment"


def test_error_names_missing_xcds():
    with pytest.raises(AtomError, match=r"XCDs \[4, 5, 6, 7\] get no bit"):
        check_xcc_complete(range(4), 8, "k")


@given(st.integers(0, 400), st.sampled_from([1, 2, 4, 6, 8]))
def test_round_up(n, xcds):
    r = round_up_to_atoms(n, xcds)
    assert r % xcds == 0 and r >= max(n, xcds) and r - xcds < max(n, xcds)


@given(st.integers(0, 300), st.integers(1, 38), st.sampled_from([1, 2, 4, 8]))
def test_any_contiguous_run_of_whole_atoms_is_complete(start, atoms, xcds):
    run = range(start, start + atoms * xcds)
    assert is_xcc_complete(run, xcds)
    assert xcd_counts(run, xcds) == [atoms] * xcds
