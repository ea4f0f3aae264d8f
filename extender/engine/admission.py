"""Admission of pods that ask for a slice: what the mutating webhook changes, or why it refuses.

A pod opts in with gpuslice keys alone (labels or annotations under the policy prefix). At creation
the webhook makes it schedulable by gpuslice: `spec.schedulerName` (when the pod left it to the
default scheduler) and one `gpuslice.io/gpu-share` per GPU on its first container (when no
container asks for it), so kubelet calls the node agent. A DRA pod that asks for the marker resource
(routed to the extender for its class rules, engine/dra_requests.py) gets the schedulerName alone. A
malformed request is refused with the very message filter would give, instead of a pod that stays
Pending. The decision is a pure function of the pod JSON and the policy; http/webhook.py carries it
over AdmissionReview.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from extender.core.errors import SliceRequestError
from extender.core.policy import Policy
from extender.core.requests import parse_slice_request
from extender.engine.dra_requests import MARKER_RESOURCE

SHARE_RESOURCE = "gpuslice.io/gpu-share"  # the agent's device plugin resource (extender/agent/podmatch.py)
DEFAULT_SCHEDULER = "default-scheduler"


@dataclass(frozen=True)
class Admission:
    allowed: bool
    message: str = ""  # why not, in filter's words
    patch: list[dict[str, Any]] = field(default_factory=list)  # RFC 6902 operations


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def admit(pod: Mapping[str, Any], policy: Policy, scheduler_name: str) -> Admission:
    meta = pod.get("metadata") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    try:  # None for a pod without gpuslice keys; a misspelt key alone is still an error, as in filter
        req = parse_slice_request(labels, annotations, policy)
    except SliceRequestError as exc:
        return Admission(False, f"gpuslice: {exc}")
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    patch: list[dict[str, Any]] = []
    routed = req is not None or _asks(containers, MARKER_RESOURCE)
    if routed and spec.get("schedulerName") in (None, "", DEFAULT_SCHEDULER):
        patch.append({"op": "add", "path": "/spec/schedulerName", "value": scheduler_name})
    if req is None:
        return Admission(True, patch=patch)
    if containers and not _asks(containers, SHARE_RESOURCE):
        resources = containers[0].get("resources")
        count = str(req.count)
        if not resources:
            patch.append({"op": "add", "path": "/spec/containers/0/resources",
                          "value": {"limits": {SHARE_RESOURCE: count}}})
        elif not resources.get("limits"):
            patch.append({"op": "add", "path": "/spec/containers/0/resources/limits", "value": {SHARE_RESOURCE: count}})
        else:
            patch.append({"op": "add", "path": f"/spec/containers/0/resources/limits/{_escape(SHARE_RESOURCE)}",
                          "value": count})
    return Admission(True, patch=patch)


def _asks(containers: list[dict[str, Any]], resource: str) -> bool:
    return any(resource in ((c.get("resources") or {}).get(kind) or {})
               for c in containers for kind in ("limits", "requests"))
