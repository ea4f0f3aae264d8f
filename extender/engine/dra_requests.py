"""A DRA pod's slice request: its gpuslice ResourceClaims read as the request the fit rule checks.

A pod that asks for a GPU share by ResourceClaim (device class `gpuslice`) and is routed to the
extender (the marker resource, README "Asking for a slice through DRA") reaches filter and
prioritize like any pod. Its claims' specs — `capacity.requests` (computeUnits, memory), `count`, and
the opaque parameters of driver gpu.gpuslice.io (class, computeLimit, memoryLimit) — become one
`SliceRequest`, so the one fit rule (core/fit.py) and the one scoring path judge it: a node passes
only if some GPU there can take the share under the class rules.

The request never asks for more than kube-scheduler's DRA allocator will consume (but for the
policy's CU rounding, which applies as to any pod): CUs become the largest share of the policy's
largest model that guarantees no more than the claim's CUs, and a claim that names no memory counts
none (the allocator gives it all, and checks that itself). Within a node the DRA
allocator, not the extender, picks the GPU, and it knows capacity only: so a node also fails when
one of its GPUs has room for the share but not under the class rules (`allocator_may_break_rules`), as
the allocator could choose that GPU. Bind posts a plain Binding and writes no assignment.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from extender.core.assignment import CLASSES
from extender.core.bounds import MAX_GPUS, OutOfBounds
from extender.core.errors import SliceRequestError, TemporaryError
from extender.core.ledger import NodeState
from extender.core.policy import Policy
from extender.core.quantity import parse_bytes
from extender.core.requests import SliceRequest
from extender.engine.placement import gpu_verdict, reject_words

DEVICE_CLASS = "gpuslice"  # deploy/dra/deviceclass.yaml
DRIVER = "gpu.gpuslice.io"  # the agent's DRA driver (agent/dra/slices.py; faces do not import each other)
COMPUTE_UNITS, MEMORY = "computeUnits", "memory"  # the device's consumable capacities (agent/dra/slices.py)
MARKER_RESOURCE = "gpuslice.io/dra-routed"  # in deploy/scheduler-config.yaml's managedResources
PARAMETER_KEYS = ("class", "computeLimit", "memoryLimit")


class ClaimNotSeen(TemporaryError):
    """The pod names a claim the extender's claim watch has not seen yet."""


@dataclass(frozen=True)
class ClaimShare:
    """What one request of a gpuslice claim asks of each of its `count` GPUs (None: not named)."""

    count: int
    cus: int | None
    memory: int | None
    workload_class: str | None = None
    compute_limit: int | None = None  # CUs
    memory_limit: int | None = None


def claim_names(resource_claims: Iterable[Mapping[str, Any]], statuses: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The names of a pod's ResourceClaims: named directly, or made from a template (the name the
    resource-claim controller wrote into `status.resourceClaimStatuses`; not yet known: left out)."""
    made = {s.get("name"): s.get("resourceClaimName") for s in statuses}
    out = []
    for entry in resource_claims:
        name = entry.get("resourceClaimName") or made.get(entry.get("name"))
        if name:
            out.append(str(name))
    return tuple(out)


def _amount(value: object, key: str) -> int:
    try:
        return parse_bytes(value)
    except ValueError as exc:
        raise SliceRequestError(key, value, str(exc)) from None


def _count(value: object, key: str) -> int:
    """A request's `count`: a positive integer (absent: 1)."""
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SliceRequestError(key, value, "must be a positive integer")
    if value > MAX_GPUS:
        raise SliceRequestError(key, value, str(OutOfBounds(f"more than {MAX_GPUS} GPUs")))
    return value


def _params(config: Iterable[Mapping[str, Any]]) -> dict[str | None, dict[str, Any]]:
    """This driver's opaque parameters by request name (None: every request); later entries win."""
    out: dict[str | None, dict[str, Any]] = {}
    for entry in config:
        opaque = entry.get("opaque") or {}
        params = opaque.get("parameters")
        if opaque.get("driver") != DRIVER or not isinstance(params, Mapping):
            continue
        for request in entry.get("requests") or [None]:
            out.setdefault(request, {}).update({k: params[k] for k in PARAMETER_KEYS if k in params})
    return out


def claim_shares(claim: Mapping[str, Any]) -> tuple[ClaimShare, ...]:
    """The gpuslice requests of a claim's spec; () for a claim of other device classes. A request of
    the gpuslice class the extender cannot read as one share (`firstAvailable`, allocationMode All)
    is left out: the extender then checks nothing for it, and the DRA allocator decides alone."""
    devices = (claim.get("spec") or {}).get("devices") or {}
    params = _params(devices.get("config") or [])
    shares = []
    for i, request in enumerate(devices.get("requests") or []):
        exactly = request.get("exactly") or {}
        mode = exactly.get("allocationMode", "ExactCount")
        if exactly.get("deviceClassName") != DEVICE_CLASS or mode != "ExactCount":
            continue
        where = f"spec.devices.requests[{i}].exactly"
        capacity = (exactly.get("capacity") or {}).get("requests") or {}
        mine = params.get(None, {}) | params.get(request.get("name"), {})
        cus, memory = capacity.get(COMPUTE_UNITS), capacity.get(MEMORY)
        limit, memory_limit = mine.get("computeLimit"), mine.get("memoryLimit")
        shares.append(ClaimShare(
            count=_count(exactly.get("count"), f"{where}.count"),
            cus=None if cus is None else _amount(cus, f"{where}.capacity.requests.{COMPUTE_UNITS}"),
            memory=None if memory is None else _amount(memory, f"{where}.capacity.requests.{MEMORY}"),
            workload_class=mine.get("class"),
            compute_limit=None if limit is None else _amount(limit, "opaque.parameters.computeLimit"),
            memory_limit=None if memory_limit is None else _amount(memory_limit, "opaque.parameters.memoryLimit")))
    return tuple(shares)


def _millis(cus: int | None, total: int) -> int:
    """The largest share of a `total`-CU GPU that guarantees at most `cus` CUs (None: the whole GPU)."""
    return 1000 if cus is None else max(1, min(1000, cus * 1000 // total))


def dra_slice_request(shares: Iterable[ClaimShare], policy: Policy) -> SliceRequest | None:
    """One request for all of a pod's gpuslice shares, or None if it has none. Shares of different sizes
    are checked as that many GPUs of the smallest (never more than the allocator consumes); their
    class is the first share's (the agent's default: the policy's)."""
    shares = list(shares)
    if not shares:
        return None
    total = max(m.computeUnits for m in policy.models.values())
    cus = [s.cus for s in shares]
    compute = min(_millis(c, total) for c in cus)
    limits = [_millis(s.compute_limit, total) if s.compute_limit is not None else _millis(s.cus, total)
              for s in shares]
    memory = min(s.memory or 0 for s in shares)
    memory_limit = max(memory, min(s.memory_limit or s.memory or 0 for s in shares))
    cls = shares[0].workload_class or policy.classes.default
    if cls not in CLASSES:
        raise SliceRequestError("opaque.parameters.class", cls, f"must be one of {', '.join(CLASSES)}")
    return SliceRequest(vendor="amd", compute_millis=compute, compute_limit_millis=max(compute, min(limits)),
                        memory_bytes=memory, memory_limit_bytes=memory_limit, count=sum(s.count for s in shares),
                        workload_class=cls)  # type: ignore[arg-type]


RULE_CATEGORIES = ("class-rule", "bandwidth")  # the fit rule's categories the DRA allocator does not know


def allocator_may_break_rules(req: SliceRequest, state: NodeState, policy: Policy) -> tuple[str, str] | None:
    """(category, words) for the first GPU of the node where kube-scheduler's DRA allocator, which picks
    the device and knows only capacity, could put the share though the class rules forbid it: the fit
    rule's first failing rule there is a class rule, not room. None when every GPU with room obeys them."""
    for gpu in state.gpus:
        v = gpu_verdict(req, gpu, policy)
        if v is not None and v.category in RULE_CATEGORIES:
            return v.category, reject_words(v, gpu.info.index, req, policy)
    return None


class ClaimSpecs:
    """The gpuslice shares of every ResourceClaim the claim watch has seen, by namespace/name. Until a
    watch has listed the claims (the demo, the simulator, a cluster without resource.k8s.io/v1) it
    knows none, and a pod's claims ask for nothing the extender checks."""

    def __init__(self) -> None:
        self._shares: dict[tuple[str, str], tuple[ClaimShare, ...] | SliceRequestError] = {}
        self._lock = threading.Lock()
        self.watching = False

    @staticmethod
    def _read(claim: Mapping[str, Any]) -> tuple[ClaimShare, ...] | SliceRequestError:
        try:
            return claim_shares(claim)
        except SliceRequestError as exc:  # kept: filter gives the pod this reason
            return exc

    @staticmethod
    def _key(claim: Mapping[str, Any]) -> tuple[str, str]:
        meta = claim.get("metadata") or {}
        return str(meta.get("namespace", "")), str(meta.get("name", ""))

    def put(self, claim: Mapping[str, Any]) -> None:
        value = self._read(claim)
        with self._lock:
            self._shares[self._key(claim)] = value

    def drop(self, claim: Mapping[str, Any]) -> None:
        with self._lock:
            self._shares.pop(self._key(claim), None)

    def replace(self, claims: Iterable[Mapping[str, Any]]) -> None:
        fresh = {self._key(c): self._read(c) for c in claims}
        with self._lock:
            self._shares = fresh
            self.watching = True

    def shares(self, namespace: str, names: Iterable[str]) -> tuple[ClaimShare, ...]:
        """The gpuslice shares of the named claims. Raises ClaimNotSeen for a claim not seen yet, and the
        claim's SliceRequestError for one whose gpuslice request is malformed."""
        out: list[ClaimShare] = []
        if not self.watching:
            return ()
        with self._lock:
            for name in names:
                got = self._shares.get((namespace, name))
                if got is None:
                    raise ClaimNotSeen(f"ResourceClaim {namespace}/{name} not seen yet by the extender's claim watch")
                if isinstance(got, SliceRequestError):
                    raise got
                out.extend(got)
        return tuple(out)
