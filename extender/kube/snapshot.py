"""The cluster's Nodes and Pods as views, read once (for one-shot commands such as `gpuslice plan`)."""

from __future__ import annotations

from kubernetes.client import CoreV1Api

from extender.engine.cluster import NodeView, PodView
from extender.kube.raw import list_items
from extender.kube.views import node_view, pod_view


def list_views(api: CoreV1Api) -> tuple[list[NodeView], list[PodView]]:
    """Every Node, and every Pod bound to a node (only bound pods hold GPU slices)."""
    nodes, _ = list_items(api.list_node)
    # Pending pods hold nothing; the field selector spares listing them
    pods, _ = list_items(api.list_pod_for_all_namespaces, field_selector="spec.nodeName!=")
    return [node_view(n) for n in nodes], [pod_view(p) for p in pods]
