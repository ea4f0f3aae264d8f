"""Kubernetes quantities, parsed by the Kubernetes client's own parser (never by hand), within
gpuslice's bounds (core/bounds.py): the text's length is checked before it is parsed and the
magnitude before it is converted, so "1e999999" is refused in microseconds, not computed."""

from __future__ import annotations

from decimal import Decimal, DecimalException

from kubernetes.utils.quantity import parse_quantity as _k8s_parse_quantity

from extender.core.bounds import MAX_BYTES, MAX_EXPONENT, MAX_MILLIS, MAX_QUANTITY_CHARS, OutOfBounds, check_text


def parse_quantity(text: object) -> Decimal:
    """Parse a Kubernetes quantity ("4Gi", "100m", "1.5"); raise ValueError with the reason
    (OutOfBounds, a ValueError, for one beyond gpuslice's bounds)."""
    if isinstance(text, bool):
        raise ValueError("expected a quantity, got a boolean")
    if not isinstance(text, str | int | float | Decimal):
        raise ValueError(f"expected a quantity, got {type(text).__name__}")
    if isinstance(text, int):
        text = str(text) if -(10**MAX_QUANTITY_CHARS) < text < 10**MAX_QUANTITY_CHARS else "9" * 65
    if isinstance(text, str):
        check_text(text, MAX_QUANTITY_CHARS, "the quantity")
    try:
        value = _k8s_parse_quantity(text)
    except (ValueError, TypeError, DecimalException) as exc:
        raise ValueError(f"not a Kubernetes quantity ({exc})") from exc
    if value.is_nan() or value.is_infinite():
        raise ValueError("not a finite quantity")
    if value and abs(value.adjusted()) > MAX_EXPONENT:
        raise OutOfBounds(f"the quantity's magnitude is 1e{value.adjusted()}, beyond 1e±{MAX_EXPONENT}")
    return value


def parse_bytes(text: object) -> int:
    """A byte count: a non-negative integer quantity ("60Gi", "64000000000"), at most MAX_BYTES."""
    value = parse_quantity(text)
    if value < 0:
        raise ValueError("must not be negative")
    if value > MAX_BYTES:
        raise OutOfBounds(f"more than {MAX_BYTES} bytes")
    if value != value.to_integral_value():
        raise ValueError("must be a whole number of bytes")
    return int(value)


def parse_millis(text: object) -> int:
    """A share of one GPU in millis: "250m" -> 250, "0.5" -> 500, "1" -> 1000."""
    value = parse_quantity(text)
    if value < 0:
        raise ValueError("must not be negative")
    millis = value * 1000
    if millis > MAX_MILLIS:
        raise OutOfBounds(f"more than {MAX_MILLIS}m")
    if millis != millis.to_integral_value():
        raise ValueError("finer than 1m")
    return int(millis)
