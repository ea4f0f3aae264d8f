"""A ResourceClaim's allocation as gpuslice reads it: the shares of this driver's devices it holds.

kube-scheduler writes `status.allocation.devices.results[]` (request, driver, pool, device, shareID,
consumedCapacity). Options a share cannot carry in capacity come from opaque config for this driver
(`status.allocation.devices.config[].opaque.parameters`, from the claim or its DeviceClass):
`class` (memory-bound | compute-bound), `computeLimit` (burst ceiling, CUs) and `memoryLimit`
(quantity). Everything is parsed strictly: a malformed claim is refused with the field that is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from extender.agent.dra.slices import COMPUTE_UNITS, DRIVER, MEMORY
from extender.core.assignment import CLASSES
from extender.core.errors import InputError
from extender.core.quantity import parse_bytes

PARAMETER_KEYS = ("apiVersion", "kind", "class", "computeLimit", "memoryLimit")


class ClaimError(InputError):
    """A ResourceClaim gpuslice cannot prepare as it is."""


@dataclass(frozen=True)
class SliceParams:
    workload_class: str | None = None
    compute_limit: int | None = None  # CUs
    memory_limit: int | None = None  # bytes


@dataclass(frozen=True)
class Share:
    """One allocated share of one GPU device."""

    request: str
    pool: str
    device: str
    share_id: str | None
    compute_units: int | None  # None: the claim did not consume computeUnits (not a gpuslice share)
    memory_bytes: int | None
    params: SliceParams


@dataclass(frozen=True)
class ClaimAllocation:
    uid: str
    namespace: str
    name: str
    shares: tuple[Share, ...]


def _count(value: object, key: str) -> int:
    try:
        n = parse_bytes(value)
    except ValueError as exc:
        raise ClaimError(key, value, str(exc)) from None
    return n


def parse_params(raw: Mapping[str, Any], key: str) -> SliceParams:
    unknown = sorted(set(raw) - set(PARAMETER_KEYS))
    if unknown:
        raise ClaimError(f"{key}.{unknown[0]}", raw[unknown[0]], f"unknown key (known: {', '.join(PARAMETER_KEYS)})")
    cls = raw.get("class")
    if cls is not None and cls not in CLASSES:
        raise ClaimError(f"{key}.class", cls, f"must be one of {', '.join(CLASSES)}")
    limit = raw.get("computeLimit")
    memory_limit = raw.get("memoryLimit")
    return SliceParams(cls, None if limit is None else _count(limit, f"{key}.computeLimit"),
                       None if memory_limit is None else _count(memory_limit, f"{key}.memoryLimit"))


def _params_by_request(config: list[Mapping[str, Any]]) -> dict[str | None, SliceParams]:
    """Opaque parameters of this driver, by request name (None: every request). Later entries win,
    as the DRA API orders them: class config first, then claim config."""
    merged: dict[str | None, dict[str, Any]] = {}
    for i, entry in enumerate(config):
        opaque = entry.get("opaque") or {}
        if opaque.get("driver") != DRIVER:
            continue
        params = opaque.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise ClaimError(f"status.allocation.devices.config[{i}].opaque.parameters", params, "must be an object")
        parse_params(params, f"status.allocation.devices.config[{i}].opaque.parameters")
        for request in entry.get("requests") or [None]:
            merged.setdefault(request, {}).update(params)
    return {r: parse_params(p, "opaque.parameters") for r, p in merged.items()}


def _params_for(request: str, by_request: Mapping[str | None, SliceParams]) -> SliceParams:
    base = by_request.get(None, SliceParams())
    own = by_request.get(request) or by_request.get(request.split("/")[0])
    if own is None:
        return base
    return SliceParams(own.workload_class or base.workload_class,
                       own.compute_limit if own.compute_limit is not None else base.compute_limit,
                       own.memory_limit if own.memory_limit is not None else base.memory_limit)


def claim_allocation(claim: Mapping[str, Any], pool: str) -> ClaimAllocation:
    """The shares of this driver's devices in `pool` (this node's) that `claim` was allocated."""
    meta = claim.get("metadata") or {}
    allocation = (claim.get("status") or {}).get("allocation")
    if not allocation:
        raise ClaimError("status.allocation", None, "the claim is not allocated")
    devices = allocation.get("devices") or {}
    by_request = _params_by_request(list(devices.get("config") or []))
    shares = []
    for i, r in enumerate(devices.get("results") or []):
        if r.get("driver") != DRIVER or r.get("pool") != pool:
            continue
        where = f"status.allocation.devices.results[{i}]"
        consumed = r.get("consumedCapacity") or {}
        cus = consumed.get(COMPUTE_UNITS)
        memory = consumed.get(MEMORY)
        request = str(r.get("request", ""))
        shares.append(Share(
            request=request, pool=pool, device=str(r.get("device", "")), share_id=r.get("shareID"),
            compute_units=None if cus is None else _count(cus, f"{where}.consumedCapacity.{COMPUTE_UNITS}"),
            memory_bytes=None if memory is None else _count(memory, f"{where}.consumedCapacity.{MEMORY}"),
            params=_params_for(request, by_request)))
    return ClaimAllocation(uid=str(meta.get("uid", "")), namespace=str(meta.get("namespace", "")),
                           name=str(meta.get("name", "")), shares=tuple(shares))
