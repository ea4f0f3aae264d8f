"""The Kubernetes side of right-sizing: SLA workloads (Deployments, StatefulSets), their
PodDisruptionBudgets, the patch that resizes them and the Event that says so."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

COMPONENT = "gpuslice-rightsize"
KINDS = ("Deployment", "StatefulSet")
MERGE = "application/merge-patch+json"


@dataclass(frozen=True)
class Workload:
    kind: str
    namespace: str
    name: str
    uid: str
    resource_version: str
    replicas: int
    annotations: Mapping[str, str]
    template_labels: Mapping[str, str]
    template_annotations: Mapping[str, str]
    rolled_out: bool  # the controller has caught up with the spec: no rollout in progress
    selector: Mapping[str, Any] | None = None  # spec.selector: which pods are its own
    surges: bool = False  # a rolling update at its replica count adds a new pod before removing an old one

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def pods_regex(self) -> str:
        """Names of its pods: <name>-<hash>-<id> for a Deployment, <name>-<ordinal> for a StatefulSet."""
        return f"{self.name}-[a-z0-9]+-[a-z0-9]+" if self.kind == "Deployment" else f"{self.name}-[0-9]+"


def _workload(kind: str, obj: dict[str, Any]) -> Workload:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    template = (spec.get("template") or {}).get("metadata") or {}
    replicas = spec.get("replicas", 1)
    rolled_out = (status.get("observedGeneration", 0) >= meta.get("generation", 0)
                  and status.get("updatedReplicas", 0) >= replicas)
    return Workload(kind, meta["namespace"], meta["name"], meta.get("uid", ""), meta.get("resourceVersion", ""),
                    replicas, meta.get("annotations") or {}, template.get("labels") or {},
                    template.get("annotations") or {}, rolled_out, spec.get("selector"),
                    kind == "Deployment" and surges(spec.get("strategy"), replicas))


def surges(strategy: Mapping[str, Any] | None, replicas: int) -> bool:
    """A Deployment strategy that, at `replicas`, starts a new pod before it stops an old one: a rolling
    update whose maxUnavailable resolves to 0 and maxSurge to at least 1, as the Deployment controller
    resolves them (`ResolveFenceposts`: a percentage of maxUnavailable rounds down, of maxSurge up; the
    defaults, 25% each, surge below four replicas). Recreate stops every pod first."""
    strategy = strategy or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return False
    rolling = strategy.get("rollingUpdate") or {}
    return (_scaled(rolling.get("maxUnavailable", "25%"), replicas, up=False) == 0
            and _scaled(rolling.get("maxSurge", "25%"), replicas, up=True) >= 1)


def _scaled(value: int | str, replicas: int, up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        share = int(value[:-1]) * replicas
        return -(-share // 100) if up else share // 100
    return int(value)


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions) against labels; an empty selector selects all."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def _controller(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ownerReference marked controller, if any."""
    return next((r for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None)


class Workloads:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.policy = client.PolicyV1Api(api)
        self.core = client.CoreV1Api(api)

    def _dict(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)

    def list(self, namespace: str | None = None) -> list[Workload]:
        if namespace:
            deps = self.apps.list_namespaced_deployment(namespace).items
            sets = self.apps.list_namespaced_stateful_set(namespace).items
        else:
            deps = self.apps.list_deployment_for_all_namespaces().items
            sets = self.apps.list_stateful_set_for_all_namespaces().items
        return ([_workload("Deployment", self._dict(d)) for d in deps]
                + [_workload("StatefulSet", self._dict(s)) for s in sets])

    def owner_of(self, pod: Mapping[str, Any]) -> tuple[str, str, dict[str, str]] | None:
        """The Deployment or StatefulSet that controls a pod (its JSON), through its ReplicaSet for a
        Deployment: (kind, name, annotations), or None when it has no such owner."""
        namespace = pod["metadata"]["namespace"]
        ref = _controller(pod)
        if ref is not None and ref["kind"] == "ReplicaSet":
            rs = self._dict(self.apps.read_namespaced_replica_set(ref["name"], namespace))
            ref = _controller(rs)
            if ref is None or ref["kind"] != "Deployment":
                return None
        if ref is None or ref["kind"] not in KINDS:
            return None
        read = (self.apps.read_namespaced_deployment if ref["kind"] == "Deployment"
                else self.apps.read_namespaced_stateful_set)
        owner = self._dict(read(ref["name"], namespace))
        return ref["kind"], ref["name"], (owner["metadata"].get("annotations") or {})

    def disruption_blocked(self, w: Workload) -> str | None:
        """Why a PodDisruptionBudget of the workload's pods forbids re-creating one now, or None."""
        for pdb in self.policy.list_namespaced_pod_disruption_budget(w.namespace).items:
            doc = self._dict(pdb)
            if not selects((doc.get("spec") or {}).get("selector"), w.template_labels):
                continue
            allowed = (doc.get("status") or {}).get("disruptionsAllowed", 0)
            if allowed < 1:
                return f"PodDisruptionBudget {doc['metadata']['name']} allows no disruption now"
        return None

    def evict(self, namespace: str, name: str) -> str | None:
        """Delete a pod through the Eviction API, which honours its PodDisruptionBudgets; None when done,
        else why not (a budget that allows no disruption now, or the pod already gone)."""
        body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace))
        try:
            self.core.create_namespaced_pod_eviction(name, namespace, body)
        except client.ApiException as exc:
            if exc.status == 429:
                return "a PodDisruptionBudget allows no disruption now"
            if exc.status == 404:
                return "the pod is already gone"
            raise
        return None

    def patch(self, w: Workload, replicas: int, template: dict[str, dict[str, str]],
              annotations: dict[str, str]) -> None:
        """One merge patch: replicas, pod-template keys ({"labels"|"annotations": {key: value}}) and the
        owner's own annotations, guarded by the resourceVersion it was read at (409 if it moved)."""
        body = {"metadata": {"resourceVersion": w.resource_version, "annotations": annotations},
                "spec": {"replicas": replicas, "template": {"metadata": template}}}
        if w.kind == "Deployment":
            self.apps.patch_namespaced_deployment(w.name, w.namespace, body, _content_type=MERGE)
        else:
            self.apps.patch_namespaced_stateful_set(w.name, w.namespace, body, _content_type=MERGE)

    def event(self, w: Workload, reason: str, message: str) -> None:
        now = datetime.now(UTC)
        self.core.create_namespaced_event(w.namespace, client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{w.name}.", namespace=w.namespace),
            involved_object=client.V1ObjectReference(kind=w.kind, api_version="apps/v1", namespace=w.namespace,
                                                     name=w.name, uid=w.uid),
            reason=reason, message=message[:1000], type="Normal", count=1, first_timestamp=now,
            last_timestamp=now, source=client.V1EventSource(component=COMPONENT)))
