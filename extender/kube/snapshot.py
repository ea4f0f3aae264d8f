"""The cluster's Nodes and Pods as views, read once (for one-shot commands such as `gpuslice plan`)."""

from __future__ import annotations

from kubernetes.client import ApiClient, CoreV1Api

from extender.engine.cluster import NodeView, PodView
from extender.kube.claims import claim_view, holds_slices, list_claims, provisional_views
from extender.kube.raw import list_items
from extender.kube.views import node_view, pod_view


def list_views(api: CoreV1Api, client: ApiClient | None = None) -> tuple[list[NodeView], list[PodView]]:
    """Every Node, and every Pod bound to a node (only bound pods hold GPU slices); with `client`, also
    the DRA claims holding prepared shares, and those allocated but not yet prepared (provisional CU sets
    of their consumed amounts), as tenant views (kube/claims.py)."""
    nodes, _ = list_items(api.list_node)
    # Pending pods hold nothing; the field selector spares listing them
    pods, _ = list_items(api.list_pod_for_all_namespaces, field_selector="spec.nodeName!=")
    items = list_claims(client)[0] if client is not None else []
    node_views, tenants = [node_view(n) for n in nodes], [pod_view(p) for p in pods]
    tenants += [v for v in map(claim_view, items) if holds_slices(v)]
    return node_views, tenants + provisional_views(items, node_views, tenants)
