"""Kubernetes quantities, parsed by the Kubernetes client's own parser (never by hand)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from kubernetes.utils.quantity import parse_quantity as _k8s_parse_quantity


def parse_quantity(text: object) -> Decimal:
    """Parse a Kubernetes quantity ("4Gi", "100m", "1.5"); raise ValueError with the reason."""
    if isinstance(text, bool):
        raise ValueError("expected a quantity, got a boolean")
    try:
        value = _k8s_parse_quantity(text)
    except (ValueError, TypeError, InvalidOperation) as exc:
        raise ValueError(f"not a Kubernetes quantity ({exc})") from exc
    if value.is_nan() or value.is_infinite():
        raise ValueError("not a finite quantity")
    return value


def parse_bytes(text: object) -> int:
    """A byte count: a non-negative integer quantity ("60Gi", "64000000000")."""
    value = parse_quantity(text)
    if value < 0:
        raise ValueError("must not be negative")
    if value != value.to_integral_value():
        raise ValueError("must be a whole number of bytes")
    return int(value)


def parse_millis(text: object) -> int:
    """A share of one GPU in millis: "250m" -> 250, "0.5" -> 500, "1" -> 1000."""
    value = parse_quantity(text)
    if value < 0:
        raise ValueError("must not be negative")
    millis = value * 1000
    if millis != millis.to_integral_value():
        raise ValueError("finer than 1m")
    return int(millis)
