"""The agent's thin adapter to the Kubernetes API (kubernetes client): its node's pods, one pod
read fresh, the inventory annotation, events and evictions. Everything else in the agent talks to
the PodSource / ClusterActions / NodePublisher interfaces, so tests run without a cluster."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config

from extender.agent.pods import RESOURCE, PodInfo
from extender.core.inventory import INVENTORY_ANNOTATION

log = logging.getLogger(__name__)
COMPONENT = "gpuslice-agent"


def _rfc3339(ts: datetime | None) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else ""


def _share_count(resources: Any) -> int:
    if resources is None:
        return 0
    for section in (resources.limits, resources.requests):
        if section and RESOURCE in section:
            try:
                return int(str(section[RESOURCE]))
            except ValueError:
                return 0
    return 0


def pod_info(pod: client.V1Pod) -> PodInfo:
    """A V1Pod as the agent sees it."""
    meta, spec, status = pod.metadata, pod.spec, pod.status
    containers = [*(spec.init_containers or []), *(spec.containers or [])]
    shares = {c.name: n for c in containers if (n := _share_count(c.resources)) > 0}
    started = any(s.state is not None and (s.state.running is not None or s.state.terminated is not None)
                  for s in (status.container_statuses or [] if status else []))
    return PodInfo(uid=meta.uid, namespace=meta.namespace, name=meta.name, node=spec.node_name,
                   phase=(status.phase if status and status.phase else "Pending"),
                   created=_rfc3339(meta.creation_timestamp), annotations=dict(meta.annotations or {}),
                   share_requests=shares, started=started, deleting=meta.deletion_timestamp is not None)


def load_core_api(kubeconfig: str | None = None) -> client.CoreV1Api:
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    return client.CoreV1Api()


class KubeAdapter:
    """PodSource, ClusterActions and NodePublisher over one CoreV1Api."""

    def __init__(self, api: client.CoreV1Api, node: str) -> None:
        self.api = api
        self.node = node

    def pods_on_node(self, node: str) -> list[PodInfo]:
        pods = self.api.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}")
        return [pod_info(p) for p in pods.items]

    def get_pod(self, namespace: str, name: str) -> PodInfo | None:
        try:
            return pod_info(self.api.read_namespaced_pod(name, namespace))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def publish_inventory(self, node: str, text: str) -> None:
        self.api.patch_node(node, {"metadata": {"annotations": {INVENTORY_ANNOTATION: text}}})

    def event(self, pod: PodInfo, reason: str, message: str, kind: str = "Warning") -> None:
        now = datetime.now(UTC)
        self.api.create_namespaced_event(pod.namespace, client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{pod.name}.", namespace=pod.namespace),
            involved_object=client.V1ObjectReference(kind="Pod", api_version="v1", namespace=pod.namespace,
                                                     name=pod.name, uid=pod.uid or None),
            reason=reason, message=message, type=kind, count=1, first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component=COMPONENT, host=self.node)))

    def evict(self, pod: PodInfo, reason: str) -> None:
        log.warning("evicting pod %s: %s", pod.key, reason)
        self.api.create_namespaced_pod_eviction(pod.name, pod.namespace, client.V1Eviction(
            metadata=client.V1ObjectMeta(name=pod.name, namespace=pod.namespace)))
