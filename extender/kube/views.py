"""Pods and Nodes as the engine sees them, read from the API server's JSON.

The watch hands us plain JSON; reading the few fields we need from it directly is an order of
magnitude cheaper than building the client's model objects for every event.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from extender.engine.cluster import NodeView, PodView

Json = Mapping[str, Any]


SHARED_LENGTH = 64  # strings up to this long repeat across pods (names of nodes, keys, "250m", "Running")


def _shared(text: Any) -> Any:
    return sys.intern(text) if type(text) is str and len(text) <= SHARED_LENGTH else text


def _shared_map(values: Any) -> Any:
    """The cache keeps every pod: its keys and short values as one string each, not one per pod."""
    if not isinstance(values, dict):
        return values
    return {_shared(k): _shared(v) for k, v in values.items()}


def pod_view(obj: Json) -> PodView:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return PodView(
        uid=meta.get("uid", ""),
        namespace=_shared(meta.get("namespace", "")),
        name=meta.get("name", ""),
        labels=_shared_map(meta.get("labels") or {}),
        annotations=_shared_map(meta.get("annotations") or {}),
        node_name=_shared(spec.get("nodeName")) or None,
        phase=_shared(status.get("phase")) or "Pending",
        deleting=bool(meta.get("deletionTimestamp")),
        resource_version=meta.get("resourceVersion"),
        priority=int(spec.get("priority") or 0),
    )


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
