"""Slice requests: what a pod asks for, read from its labels or annotations under the policy prefix."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass

from extender.core.errors import SliceRequestError
from extender.core.policy import GpuClass, GpuModel, Policy, round_cus
from extender.core.quantity import parse_bytes, parse_millis, parse_quantity
from extender.core.sizing import Sizing, rps_within_budget, size_for_target

KEYS = ("vendor", "compute", "computeLimit", "memory", "memoryLimit", "count", "class", "profile",
        "target-rps")
VENDORS = ("amd",)
CLASSES = ("memory-bound", "compute-bound", "auto")
MAX_COUNT = 64


@dataclass(frozen=True)
class SliceRequest:
    """One pod's request, per GPU, times `count` GPUs.

    Compute is a share of the GPU (`compute_millis`). A pod sized from a profile's target req/s
    (core/sizing.py) asks for the share that gives `compute_cus` CUs on one GPU of the profile's model;
    `predicted_rps` is its throughput there beside the worst co-tenancy the policy allows.
    """

    vendor: str
    compute_millis: int
    compute_limit_millis: int
    memory_bytes: int
    memory_limit_bytes: int
    count: int
    workload_class: GpuClass
    profile: str | None = None
    target_rps: float | None = None
    compute_cus: int | None = None
    predicted_rps: float | None = None

    def guaranteed_cus(self, policy: Policy, model: GpuModel, total_cus: int, xcds: int | None = None) -> int:
        """CUs to guarantee on a GPU of `model` with `total_cus` CUs on `xcds` XCDs (default: the model's),
        after the policy's rounding and in whole atoms; `total_cus` means the whole GPU."""
        return round_cus(policy, model, total_cus, math.ceil(self.compute_millis * total_cus / 1000), xcds)

    def limit_cus(self, total_cus: int) -> int:
        return math.ceil(self.compute_limit_millis * total_cus / 1000)


def _lookup(labels: Mapping[str, str], annotations: Mapping[str, str], key: str) -> str | None:
    # Annotations win over labels: they carry values labels cannot (e.g. "0.5" is fine in both,
    # but annotations are where tools write).
    if key in annotations:
        return annotations[key]
    return labels.get(key)


def has_slice_keys(labels: Mapping[str, str] | None, annotations: Mapping[str, str] | None,
                   prefix: str) -> bool:
    """True if the pod names any gpuslice key under the prefix (assignment is not a request key)."""
    keys = {f"{prefix}/{k}" for k in KEYS}
    return any(k in keys for k in (labels or {})) or any(k in keys for k in (annotations or {}))


def parse_slice_request(labels: Mapping[str, str] | None, annotations: Mapping[str, str] | None,
                        policy: Policy) -> SliceRequest | None:
    """The pod's slice request, or None when it names no gpuslice key (pass-through).

    Raises SliceRequestError naming the key, the value and the reason for anything malformed,
    contradictory or unknown. Documented defaults: vendor `amd`, count 1, limits equal to the
    requests, class from the profile or else the policy's `classes.default`.
    """
    labels = labels or {}
    annotations = annotations or {}
    _reject_misspelt_keys(labels, annotations, policy.prefix)
    if not has_slice_keys(labels, annotations, policy.prefix):
        return None

    def raw(name: str) -> str | None:
        value = _lookup(labels, annotations, f"{policy.prefix}/{name}")
        if value is not None and not isinstance(value, str):
            raise SliceRequestError(f"{policy.prefix}/{name}", value, "must be a string")
        return value

    def key(name: str) -> str:
        return f"{policy.prefix}/{name}"

    vendor_text = raw("vendor")
    vendor = "amd" if vendor_text is None else vendor_text.strip()
    if vendor not in VENDORS:
        raise SliceRequestError(key("vendor"), vendor, f"unsupported vendor; supported: {', '.join(VENDORS)}")

    profile_name = raw("profile")
    profile = None
    if profile_name is not None:
        profile = policy.profiles.get(profile_name)
        if profile is None:
            known = ", ".join(sorted(policy.profiles)) or "none defined"
            raise SliceRequestError(key("profile"), profile_name, f"unknown profile (policy has: {known})")

    cls_text = raw("class")
    if cls_text is not None and cls_text not in CLASSES:
        raise SliceRequestError(key("class"), cls_text, f"unknown class; use one of {', '.join(CLASSES)}")
    if cls_text in (None, "auto"):
        if profile is not None:
            workload_class: GpuClass = profile.workloadClass
        elif cls_text == "auto":
            raise SliceRequestError(key("class"), cls_text, "class auto needs a profile to take it from")
        else:
            workload_class = policy.classes.default
    else:
        workload_class = cls_text  # type: ignore[assignment]

    count_text = raw("count")
    count = 1
    if count_text is not None:
        try:
            qty = parse_quantity(count_text)
        except ValueError as exc:
            raise SliceRequestError(key("count"), count_text, str(exc)) from None
        if qty != qty.to_integral_value():
            raise SliceRequestError(key("count"), count_text, "must be a whole number of GPUs")
        count = int(qty)
        if count < 1:
            raise SliceRequestError(key("count"), count_text, "must be at least 1")
        if count > MAX_COUNT:
            raise SliceRequestError(key("count"), count_text, f"must be at most {MAX_COUNT}")

    target_text = raw("target-rps")
    target_rps: float | None = None
    sized: Sizing | None = None
    if target_text is not None:
        try:
            target_rps = float(parse_quantity(target_text))
        except ValueError as exc:
            raise SliceRequestError(key("target-rps"), target_text, str(exc)) from None
        if target_rps <= 0:
            raise SliceRequestError(key("target-rps"), target_text, "must be greater than 0")
        if profile is None:
            raise SliceRequestError(key("target-rps"), target_text, f"needs {key('profile')} to size from")
        try:
            sized = size_for_target(policy, profile_name or "", target_rps, workload_class)
        except SliceRequestError as exc:  # name the pod's own text, not its float
            raise SliceRequestError(exc.key, target_text, exc.reason) from None

    compute_text = raw("compute")
    predicted = sized.predicted_rps if sized is not None else None
    if compute_text is not None:
        compute_millis = _millis(key("compute"), compute_text)
        if compute_millis == 0:
            raise SliceRequestError(key("compute"), compute_text, "must be greater than 0")
        if sized is not None and compute_millis <= 1000:
            predicted = _explicit_meets_target(policy, sized, compute_millis, workload_class, key("compute"),
                                               compute_text)
    elif sized is not None:
        compute_millis = sized.millis
    else:
        raise SliceRequestError(key("compute"), None,
                                f"missing: set {key('compute')} (e.g. 250m) or {key('profile')} + "
                                f"{key('target-rps')}")
    if compute_millis > 1000:
        raise SliceRequestError(key("compute"), compute_text, "more than one GPU (1000m); use count")

    limit_text = raw("computeLimit")
    compute_limit = compute_millis if limit_text is None else _millis(key("computeLimit"), limit_text)
    if compute_limit > 1000:
        raise SliceRequestError(key("computeLimit"), limit_text, "more than one GPU (1000m)")
    if compute_limit < compute_millis:
        raise SliceRequestError(key("computeLimit"), limit_text,
                                f"less than {key('compute')} ({compute_millis}m)")

    mem_text = raw("memory")
    if mem_text is not None:
        memory = _bytes(key("memory"), mem_text)
        if memory == 0:
            raise SliceRequestError(key("memory"), mem_text, "must be greater than 0")
        if profile is not None and memory < profile.minMemory:
            raise SliceRequestError(key("memory"), mem_text,
                                    f"below profile {profile_name}'s minimum of {profile.minMemory} bytes")
    elif profile is not None:
        memory = profile.minMemory
    else:
        raise SliceRequestError(key("memory"), None, f"missing: set {key('memory')} (e.g. 16Gi) or a profile")

    mlimit_text = raw("memoryLimit")
    memory_limit = memory if mlimit_text is None else _bytes(key("memoryLimit"), mlimit_text)
    if memory_limit < memory:
        raise SliceRequestError(key("memoryLimit"), mlimit_text, f"less than {key('memory')} ({memory} bytes)")

    return SliceRequest(vendor=vendor, compute_millis=compute_millis, compute_limit_millis=compute_limit,
                        memory_bytes=memory, memory_limit_bytes=memory_limit, count=count,
                        workload_class=workload_class, profile=profile_name, target_rps=target_rps,
                        compute_cus=sized.cus if sized is not None and compute_text is None else None,
                        predicted_rps=predicted)


def _reject_misspelt_keys(labels: Mapping[str, str], annotations: Mapping[str, str], prefix: str) -> None:
    """A key under the prefix that is nearly a request key is a typo (memoryLimt, Compute), which would
    otherwise silently fall back to a default. Other keys under the prefix (assignment, ...) are left alone."""
    for source in (annotations, labels):
        for full in source:
            head, sep, name = full.partition("/")
            if not sep or head != prefix or name in KEYS:
                continue
            near = difflib.get_close_matches(name.lower(), [k.lower() for k in KEYS], n=1, cutoff=0.75)
            if near:
                meant = next(k for k in KEYS if k.lower() == near[0])
                raise SliceRequestError(full, source[full], f"unknown key; did you mean {prefix}/{meant}?")


def _millis(key: str, text: str) -> int:
    try:
        return parse_millis(text)
    except ValueError as exc:
        raise SliceRequestError(key, text, str(exc)) from None


def _bytes(key: str, text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise SliceRequestError(key, text, str(exc)) from None


def _explicit_meets_target(policy: Policy, sized: Sizing, millis: int, workload_class: GpuClass, key: str,
                           text: str) -> float:
    """A pod that names both compute and a target keeps its compute only if that meets the target under
    the same rule as sizing (so no placement can leave it under its target); its predicted req/s."""
    model = policy.models[policy.profiles[sized.profile].gpuModel]
    total = model.computeUnits
    cus = round_cus(policy, model, total, math.ceil(millis * total / 1000))
    rps, budget = rps_within_budget(policy, sized.profile, cus, workload_class)
    if rps < sized.target_rps:
        raise SliceRequestError(key, text, f"gives {cus} CUs of a {total}-CU GPU, {rps:.1f} req/s beside the "
                                f"worst co-tenancy the policy allows ({budget.memory_bound} memory-bound, "
                                f"{budget.compute_bound} compute-bound), under target-rps {sized.target_rps:g}; "
                                f"ask for at least {sized.millis}m or leave compute out to size from the target")
    return rps
