"""The lock between ledger writers and the ledger swap.

A bind, a watch event or a node delete writes into "the" ledger; a relist builds a new ledger and
swaps it in. A write that lands in the old ledger after the new one was built is lost, so writers
hold the lock shared (many at once: binds on different nodes never wait for each other, the ledger's
own per-node locks order them) and the swap holds it exclusively. Waiting writers do not starve the
swap: once it asks, new writers queue behind it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class LockTimeout(Exception):
    """The lock was not had within the caller's deadline."""


class SwapLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None  # thread id of the exclusive holder
        self._depth = 0  # the exclusive holder's re-entries
        self._waiting_writers = 0
        self._mine = threading.local()  # this thread's shared holds (a re-entry never waits)

    @contextmanager
    def shared(self, timeout: float | None = None) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            held = getattr(self._mine, "n", 0)
            if self._writer == me:  # the swap itself writing into its ledger
                self._depth += 1
            elif held:
                self._readers += 1
            else:
                if not self._cond.wait_for(lambda: self._writer is None and not self._waiting_writers, timeout):
                    raise LockTimeout("the ledger is being rebuilt")
                self._readers += 1
            if self._writer != me:
                self._mine.n = held + 1
        try:
            yield
        finally:
            with self._cond:
                if self._writer == me:
                    self._depth -= 1
                else:
                    self._mine.n -= 1
                    self._readers -= 1
                    if not self._readers:
                        self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
            else:
                self._waiting_writers += 1
                try:
                    self._cond.wait_for(lambda: self._writer is None and not self._readers)
                finally:
                    self._waiting_writers -= 1
                self._writer, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._writer = None
                    self._cond.notify_all()
