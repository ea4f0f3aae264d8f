"""A CU set stored as one integer bit mask, read as a `frozenset[int]`.

A frozenset keeps a hash-table entry per CU (about 4 KiB for a 38-CU slice, 32 KiB for a whole
304-CU GPU); the ledger holds several per GPU and two per tenant, which at 100,000 tenants is
gigabytes. The same set as a mask is one small int, and union, intersection and difference are
one machine-word operation per 30 bits instead of a loop over entries.

`CuSet` answers every question a reader asks of a frozenset of non-negative ints the same way:
membership, iteration (ascending), len, the operators and their named methods, comparisons, and
equality and hash with frozensets (a CuSet and the equal frozenset are the same dict key). Only
sets of non-negative ints have a mask; `compact` leaves anything else as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


def _bits_of(items: Iterable[Any]) -> int | None:
    """The mask of `items` if they are all non-negative ints (bool excluded), else None."""
    if isinstance(items, CuSet):
        return items.bits
    bits = 0
    for b in items:
        if type(b) is not int or b < 0:
            return None
        bits |= 1 << b
    return bits


_SHARED: dict[int, CuSet] = {}
_SHARED_LIMIT = 100_000


class CuSet:
    """A frozen set of non-negative ints as a bit mask (see the module doc)."""

    __slots__ = ("bits", "_hash", "_runs")
    bits: int

    def __init__(self, items: Iterable[int] = ()) -> None:
        bits = _bits_of(items)
        if bits is None:
            raise ValueError("a CuSet holds non-negative ints only")
        self.bits = bits
        self._hash: int | None = None
        self._runs: tuple[tuple[int, int], ...] | None = None

    @classmethod
    def from_bits(cls, bits: int) -> CuSet:
        if bits < 0:
            raise ValueError("a CU mask is non-negative")
        out = cls.__new__(cls)
        out.bits = bits
        out._hash = None
        out._runs = None
        return out

    @classmethod
    def shared(cls, bits: int) -> CuSet:
        """The one CuSet of these bits that is kept for long (ledger states, assignments): a cluster's
        hundreds of thousands of CU sets take few distinct values (35 over 409,564 in
        bench/memory_bench.py), so equal sets share one object. Bounded: past the limit the table
        starts over, which only loses sharing."""
        out = _SHARED.get(bits)
        if out is None:
            if len(_SHARED) >= _SHARED_LIMIT:
                _SHARED.clear()
            out = _SHARED.setdefault(bits, cls.from_bits(bits))
        return out

    @classmethod
    def span(cls, start: int, stop: int) -> CuSet:
        """range(start, stop) as a set."""
        return cls.from_bits(((1 << (stop - start)) - 1) << start if stop > start else 0)

    # --- the set protocol ---------------------------------------------------------------------
    def __len__(self) -> int:
        return self.bits.bit_count()

    def __bool__(self) -> bool:
        return self.bits != 0

    def __contains__(self, item: object) -> bool:
        return type(item) is int and item >= 0 and bool(self.bits >> item & 1)

    def __iter__(self) -> Iterator[int]:
        # the binary text, lowest bit first: one C-level pass, several times faster than bit tricks
        return iter([i for i, digit in enumerate(bin(self.bits)[:1:-1]) if digit == "1"])

    def runs(self) -> list[tuple[int, int]]:
        """Maximal runs of consecutive members as (start, length), ascending."""
        out: list[tuple[int, int]] = []
        bits, base = self.bits, 0
        while bits:
            skip = (bits & -bits).bit_length() - 1
            bits >>= skip
            base += skip
            length = (~bits & (bits + 1)).bit_length() - 1  # trailing ones
            out.append((base, length))
            bits >>= length
            base += length
        return out

    def run_tuple(self) -> tuple[tuple[int, int], ...]:
        """runs() as a tuple, worked out once and kept on the set: every holder of a shared set
        (CuSet.shared; e.g. the free CUs of 40,000 GPU states, a few dozen distinct) shares it."""
        runs = self._runs
        if runs is None:
            runs = self._runs = tuple(self.runs())
        return runs

    def __repr__(self) -> str:
        return f"CuSet({sorted(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (CuSet.from_bits, (self.bits,))

    # --- equality and hashing agree with frozenset --------------------------------------------
    def __eq__(self, other: object) -> bool:
        if isinstance(other, CuSet):
            return self.bits == other.bits
        if isinstance(other, (set, frozenset)):
            return len(other) == len(self) and _bits_of(other) == self.bits
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = self._hash = hash(frozenset(self))
        return h

    # --- operators ----------------------------------------------------------------------------
    def _other(self, other: object) -> int | None:
        """Another operand's mask; None for a non-set (the operator then says NotImplemented), and
        for a set with members a mask cannot hold (the answer is then a frozenset's)."""
        if isinstance(other, CuSet):
            return other.bits
        if isinstance(other, (set, frozenset)):
            return _bits_of(other)
        return None

    def _fallback(self, other: object, op: str) -> Any:
        if isinstance(other, (set, frozenset)):
            return getattr(frozenset(self), op)(other)
        return NotImplemented

    def __and__(self, other: object) -> Any:
        bits = self._other(other)
        return CuSet.from_bits(self.bits & bits) if bits is not None else self._fallback(other, "__and__")

    def __or__(self, other: object) -> Any:
        bits = self._other(other)
        return CuSet.from_bits(self.bits | bits) if bits is not None else self._fallback(other, "__or__")

    def __xor__(self, other: object) -> Any:
        bits = self._other(other)
        return CuSet.from_bits(self.bits ^ bits) if bits is not None else self._fallback(other, "__xor__")

    def __sub__(self, other: object) -> Any:
        bits = self._other(other)
        return CuSet.from_bits(self.bits & ~bits) if bits is not None else self._fallback(other, "__sub__")

    def __rsub__(self, other: object) -> Any:
        bits = self._other(other)
        return CuSet.from_bits(bits & ~self.bits) if bits is not None else self._fallback(other, "__rsub__")

    __rand__ = __and__
    __ror__ = __or__
    __rxor__ = __xor__

    def __le__(self, other: object) -> bool:
        bits = self._other(other)
        return self.bits & ~bits == 0 if bits is not None else self._fallback(other, "__le__")

    def __ge__(self, other: object) -> bool:
        bits = self._other(other)
        return bits & ~self.bits == 0 if bits is not None else self._fallback(other, "__ge__")

    def __lt__(self, other: object) -> bool:
        bits = self._other(other)
        return self.bits != bits and self.bits & ~bits == 0 if bits is not None else self._fallback(other, "__lt__")

    def __gt__(self, other: object) -> bool:
        bits = self._other(other)
        return self.bits != bits and bits & ~self.bits == 0 if bits is not None else self._fallback(other, "__gt__")

    # --- frozenset's named methods (they take any iterables) ----------------------------------
    def _named(self, op: str, others: tuple[Iterable[Any], ...], combine: Any) -> Any:
        out: Any = self
        for o in others:
            items = o if isinstance(o, (set, frozenset, CuSet)) else list(o)  # an iterator is read once
            bits = _bits_of(items)
            out = CuSet.from_bits(combine(out.bits, bits)) if bits is not None and isinstance(out, CuSet) \
                else getattr(frozenset(out), op)(items)
        return out

    def union(self, *others: Iterable[Any]) -> Any:
        return self._named("union", others, int.__or__)

    def intersection(self, *others: Iterable[Any]) -> Any:
        return self._named("intersection", others, int.__and__)

    def difference(self, *others: Iterable[Any]) -> Any:
        return self._named("difference", others, lambda a, b: a & ~b)

    def symmetric_difference(self, other: Iterable[Any]) -> Any:
        return self._named("symmetric_difference", (other,), int.__xor__)

    def isdisjoint(self, other: Iterable[Any]) -> bool:
        items = other if isinstance(other, (set, frozenset, CuSet)) else list(other)
        bits = _bits_of(items)
        return self.bits & bits == 0 if bits is not None else frozenset(self).isdisjoint(items)

    def issubset(self, other: Iterable[Any]) -> bool:
        items = other if isinstance(other, (set, frozenset, CuSet)) else list(other)
        bits = _bits_of(items)
        return self.bits & ~bits == 0 if bits is not None else frozenset(self).issubset(items)

    def issuperset(self, other: Iterable[Any]) -> bool:
        items = other if isinstance(other, (set, frozenset, CuSet)) else list(other)
        bits = _bits_of(items)
        return bits & ~self.bits == 0 if bits is not None else frozenset(self).issuperset(items)

    def copy(self) -> CuSet:
        return self


def mask(cus: Iterable[int]) -> int:
    """The bit mask of a CU set (a CuSet's own; a frozenset's computed). ValueError for a negative id."""
    return cus.bits if isinstance(cus, CuSet) else CuSet(cus).bits


def compact(cus: Any) -> Any:
    """`cus` as a shared CuSet when it is a set of non-negative ints, else unchanged (a malformed set stays
    as it came, for whoever validates it to refuse with its own reason)."""
    if isinstance(cus, CuSet):
        return CuSet.shared(cus.bits)
    if not isinstance(cus, (set, frozenset)):
        return cus
    bits = _bits_of(cus)
    return cus if bits is None else CuSet.shared(bits)


__all__ = ["CuSet", "compact", "mask"]
