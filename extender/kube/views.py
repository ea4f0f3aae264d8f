"""Pods and Nodes as the engine sees them, read from the API server's JSON.

The watch hands us plain JSON; reading the few fields we need from it directly is an order of
magnitude cheaper than building the client's model objects for every event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extender.engine.cluster import NodeView, PodView

Json = Mapping[str, Any]


def pod_view(obj: Json) -> PodView:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return PodView(
        uid=meta.get("uid", ""),
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        labels=meta.get("labels") or {},
        annotations=meta.get("annotations") or {},
        node_name=spec.get("nodeName") or None,
        phase=status.get("phase") or "Pending",
        deleting=bool(meta.get("deletionTimestamp")),
        resource_version=meta.get("resourceVersion"),
        priority=int(spec.get("priority") or 0),
        scheduler_name=spec.get("schedulerName") or None,
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
