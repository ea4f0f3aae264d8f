from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.layout import runs


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(min_value=0, max_value=303)))
def test_runs_of_a_frozenset_equal_runs_of_the_same_bits(bits: set[int]) -> None:
    fs = frozenset(bits)
    assert runs(fs) == runs(sorted(bits)) == runs(fs)
    got = runs(fs)
    got.append((999, 1))  # callers get their own list, never shared state
    assert runs(fs) == runs(sorted(bits))
