"""Pods and Nodes as the engine sees them, read from the API server's JSON.

The watch hands us plain JSON; reading the few fields we need from it directly is an order of
magnitude cheaper than building the client's model objects for every event.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from extender.core.assignment import ParsedAnnotations
from extender.core.quantity import parse_bytes, parse_millis
from extender.engine.cluster import NodeView, PodView
from extender.engine.dra_requests import claim_names

Json = Mapping[str, Any]


SHARED_LENGTH = 64  # strings up to this long repeat across pods (names of nodes, keys, "250m", "Running")


def _shared(text: Any) -> Any:
    return sys.intern(text) if type(text) is str and len(text) <= SHARED_LENGTH else text


class SharedMap(dict):
    """A label or annotation map that pods with the same one share (read-only by convention, as
    every view is): replicas of one workload carry identical labels and gpuslice keys, and the
    cache keeps every pod. Goes when the last view holding it goes."""

    __slots__ = ("__weakref__",)


_MAPS: weakref.WeakValueDictionary[tuple, SharedMap] = weakref.WeakValueDictionary()
_MAPS_LOCK = threading.Lock()


def _shared_map(values: Any) -> Any:
    """The cache keeps every pod: its keys and short values as one string each, and each distinct map
    once, not once per pod."""
    if not isinstance(values, dict):
        return values
    items = tuple((_shared(k), _shared(v)) for k, v in values.items())
    shared = _MAPS.get(items)
    if shared is None:
        with _MAPS_LOCK:
            shared = _MAPS.setdefault(items, SharedMap(items))
    return shared


def pod_view(obj: Json) -> PodView:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return PodView(
        uid=meta.get("uid", ""),
        namespace=_shared(meta.get("namespace", "")),
        name=meta.get("name", ""),
        labels=_shared_map(meta.get("labels") or {}),
        annotations=ParsedAnnotations.of(meta.get("annotations") or {}, share=_shared_map),  # the slice once
        node_name=_shared(spec.get("nodeName")) or None,
        phase=_shared(status.get("phase")) or "Pending",
        deleting=bool(meta.get("deletionTimestamp")),
        resource_version=meta.get("resourceVersion"),
        priority=int(spec.get("priority") or 0),
        scheduler_name=spec.get("schedulerName") or None,
        cpu_millis=_requested(spec, "cpu", parse_millis),
        memory_bytes=_requested(spec, "memory", parse_bytes),
        claims=claim_names(spec.get("resourceClaims") or (), status.get("resourceClaimStatuses") or ()),
    )


def _requested(spec: Json, resource: str, parse: Callable[[object], int]) -> int:
    """The pod's request of a host resource as kube-scheduler counts it: the containers' sum or the largest
    init container's, whichever is more, plus the pod overhead; an unreadable quantity counts as 0."""

    def one(container: Json) -> int:
        text = ((container.get("resources") or {}).get("requests") or {}).get(resource)
        try:
            return parse(text) if text is not None else 0
        except ValueError:
            return 0

    main = sum(one(c) for c in spec.get("containers") or ())
    init = max((one(c) for c in spec.get("initContainers") or ()), default=0)
    return max(main, init) + one({"resources": {"requests": spec.get("overhead") or {}}})


def node_view(obj: Json) -> NodeView:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return NodeView(
        name=meta.get("name", ""),
        labels=meta.get("labels") or {},
        annotations=meta.get("annotations") or {},
        allocatable=status.get("allocatable") or status.get("capacity") or {},
        unschedulable=bool(spec.get("unschedulable")),
        resource_version=meta.get("resourceVersion"),
    )
