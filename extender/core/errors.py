"""Typed errors. Each carries what a person needs to fix the problem: the key, the value, the reason."""

from __future__ import annotations

SHOWN_CHARS = 200  # of a bad value, in an error message


class GpusliceError(Exception):
    """Base class for every error gpuslice raises on purpose."""


class InputError(GpusliceError):
    """Bad input that will stay bad until a person changes it (a permanent error)."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > SHOWN_CHARS:  # the value may be anyone's megabytes: the message stays short
            shown = shown[:SHOWN_CHARS] + f"... ({len(shown)} characters)"
        super().__init__(f"{key}={shown}: {reason}")


class SliceRequestError(InputError):
    """A pod's gpuslice labels or annotations are malformed or contradictory."""


class InventoryError(InputError):
    """A node's GPU inventory cannot be read."""


class AssignmentError(InputError):
    """A `gpuslice.io/assignment` annotation cannot be read or does not fit the node."""


class UsageError(GpusliceError):
    """A command was started with a setting that cannot work (a missing file, no cluster, a port in
    use). The message names the problem and the fix in one line; the CLI prints it and exits 2."""


class LedgerConflict(GpusliceError):
    """A reservation would overlap another tenant or exceed a GPU's capacity (retryable elsewhere)."""


class TemporaryError(GpusliceError):
    """Something that may succeed on retry (API conflict, timeout)."""
