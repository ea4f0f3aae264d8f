"""The cluster on a real API server: cached views fed by the watch, and the crash-safe bind.

A bind is one write: the pod's Binding (POST pods/<name>/binding) carrying the assignment in its
metadata.annotations, with the pod's UID and resourceVersion as preconditions. The API server
applies it in a single update of the pod (pkg/registry/core/pod/storage: the Binding's annotations
are merged into the pod as nodeName is set), so the assignment annotation and the nodeName appear
together or not at all: there is no moment, and no crash point, at which a pod holds one without
the other. A pod that changed since we read it (409) is read again and the Binding retried under
its new resourceVersion; a pod bound, recreated or being deleted meanwhile fails the bind. A
Binding whose answer was lost is read back: bound here with our assignment means success.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from kubernetes.client import ApiException, CoreV1Api

from extender.core.requests import has_slice_keys
from extender.engine.cluster import BindError, ClusterStore, NodeView, PodView
from extender.kube.raw import read_json, release
from extender.kube.views import pod_view

log = logging.getLogger(__name__)

BIND_ATTEMPTS = 3  # a pod that changes under every attempt is left for kube-scheduler to retry
API_TIMEOUT = (5.0, 10.0)  # connect, read seconds of a call outside a bind
# Every bind ends (success, rollback, or "outcome unknown, reservation kept") within this many seconds of
# its API work, its attempts and read-backs included: kube-scheduler's httpTimeout is 5 s, and the
# engine's lock waits (engine/scheduler.py LOCK_WAIT) come on top.
BIND_BUDGET = 3.0
LOOKUP_BUDGET = 0.8  # reading a pod the watch has not shown yet, at the start of a bind
MIN_CALL = 0.05  # an API call with less time than this left is not started


def api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


class KubeCluster(ClusterStore):
    """`Cluster` over the API server. Node and pod views come from the watch (see watch.py)."""

    def __init__(self, api: CoreV1Api, leading: Callable[[], bool] | None = None,
                 on_failed: Callable[[str], None] | None = None,
                 prefix: Callable[[], str] = lambda: "gpuslice.io") -> None:
        super().__init__()  # the watch's cache: nodes by name, pods by UID
        self.api = api
        self.prefix = prefix  # the policy's key prefix (it may be reloaded)
        self.leading = leading
        # Called with the node of a failed bind: its reservation is released, and no cluster event
        # tells kube-scheduler so (see nudge.py).
        self.on_failed = on_failed
        self.on_bound: Callable[[PodView], None] | None = None  # the pod as just bound (shadow_claims.py)
        # namespace -> name -> uid, from the views' own strings: a "namespace/name" key per pod was ~70
        # bytes more each at 100,000 pods (issue 14 point 3).
        self._uids: dict[str, dict[str, str]] = {}
        self._waiting: set[str] = set()  # uids of live, unbound pods that ask for a slice
        self._claims: dict[str, PodView] = {}  # DRA tenants by claim uid (kube/claims.py)
        # Test hook: called with each bind step ("binding" before a write, "bound" after) to inject crashes.
        self.fault: Callable[[str], None] | None = None

    # --- the watch's cache -------------------------------------------------------------------
    def replace_nodes(self, views: list[NodeView]) -> None:
        with self._lock:
            self._store_nodes(views)

    def replace_pods(self, views: list[PodView]) -> None:
        with self._lock:
            self._store_pods(views)
            self._uids = {}
            for v in views:
                self._uids.setdefault(v.namespace, {})[v.name] = v.uid
            self._waiting = {v.uid for v in views if self._waits(v)}

    def put_node(self, view: NodeView) -> NodeView | None:
        with self._lock:
            return self._store_node(view)

    def drop_node(self, name: str) -> NodeView | None:
        with self._lock:
            return self._drop_node(name)

    def put_pod(self, view: PodView) -> PodView | None:
        with self._lock:
            old = self._store_pod(view)
            self._uids.setdefault(view.namespace, {})[view.name] = view.uid
            if self._waits(view):
                self._waiting.add(view.uid)
            else:
                self._waiting.discard(view.uid)
            return old

    def drop_pod(self, view: PodView) -> PodView | None:
        with self._lock:
            names = self._uids.get(view.namespace)
            if names is not None and names.get(view.name) == view.uid:
                del names[view.name]
                if not names:
                    del self._uids[view.namespace]
            self._waiting.discard(view.uid)
            return self._drop_pod(view.uid)

    def replace_claims(self, views: list[PodView]) -> set[str]:
        """Set the DRA tenant views; returns the uids of claims no longer among them."""
        with self._lock:
            gone = set(self._claims) - {v.uid for v in views}
            self._claims = {v.uid: v for v in views}
            return gone

    def put_claim(self, view: PodView) -> None:
        with self._lock:
            self._claims[view.uid] = view

    def drop_claim(self, uid: str) -> None:
        with self._lock:
            self._claims.pop(uid, None)

    def list_pods(self) -> list[PodView]:
        """Pods, and DRA claims holding prepared shares as tenant views: the ledger counts both."""
        with self._lock:
            return [*self._pods.values(), *self._claims.values()]

    def list_own_pods(self) -> list[PodView]:
        """The pods alone, without the DRA claims' tenant views."""
        with self._lock:
            return list(self._pods.values())

    def has_waiting_pods(self) -> bool:
        """Some live pod asks for a GPU slice and is not bound yet: it may be waiting for capacity."""
        return bool(self._waiting)

    def _waits(self, view: PodView) -> bool:
        return (not view.node_name and not view.terminal and not view.deleting
                and has_slice_keys(view.labels, view.annotations, self.prefix()))

    # --- Cluster protocol ----------------------------------------------------------------------
    def get_pod(self, namespace: str, name: str) -> PodView | None:
        uid = self._uids.get(namespace, {}).get(name)
        view = self._pods.get(uid) if uid else None
        return view if view is not None else self._read(namespace, name, time.monotonic() + LOOKUP_BUDGET)

    def bind_pod(self, pod: PodView, node: str, annotations: Mapping[str, str]) -> None:
        try:
            self._bind_pod(pod, node, annotations)
        except BindError:
            if self.on_failed is not None and annotations:
                self.on_failed(node)
            raise
        if self.on_bound is not None and annotations:
            self.on_bound(replace(pod, node_name=node, annotations={**pod.annotations, **annotations}))

    def _bind_pod(self, pod: PodView, node: str, annotations: Mapping[str, str]) -> None:
        if self.leading is not None and not self.leading():
            raise BindError("gpuslice: this extender's scheduler does not hold the leader lease", temporary=True)
        current = self._pods.get(pod.uid)
        rv = (current or pod).resource_version if annotations else None
        deadline = time.monotonic() + BIND_BUDGET
        sent = False  # a Binding may have reached the API server
        for _ in range(BIND_ATTEMPTS):
            timeout = _timeout(deadline)
            if timeout is None:
                break
            self._step("binding")
            meta: dict = {"name": pod.name, "uid": pod.uid}
            if annotations:
                meta["annotations"] = dict(annotations)
                if rv is not None:
                    meta["resourceVersion"] = rv
            try:
                release(self.api.create_namespaced_pod_binding(
                    pod.name, pod.namespace,
                    {"apiVersion": "v1", "kind": "Binding", "metadata": meta,
                     "target": {"apiVersion": "v1", "kind": "Node", "name": node}},
                    _preload_content=False, _request_timeout=timeout))
            except ApiException as exc:
                rv = self._binding_failed(pod, node, annotations, f"{exc.status} {api_message(exc)}", exc.status, rv,
                                          deadline)
            except Exception as exc:  # no answer: the Binding may or may not exist
                sent = True
                rv = self._binding_failed(pod, node, annotations, f"no answer: {exc}", None, rv, deadline)
            else:
                self._step("bound")
                return
            if rv is None:
                return  # bound here with our assignment after all
        if _timeout(deadline) is None:
            raise BindError(f"gpuslice: binding {pod.key} to {node}: out of time ({BIND_BUDGET}s)", temporary=True,
                            outcome_unknown=sent)
        raise BindError(f"gpuslice: pod {pod.key} kept changing while it was being bound", temporary=True)

    def _binding_failed(self, pod: PodView, node: str, annotations: Mapping[str, str], why: str,
                        status: int | None, sent_rv: str | None, deadline: float) -> str | None:
        """Find out what a failed Binding left behind: None if the pod is bound here with our assignment
        after all (a lost answer: done), the pod's new resourceVersion if a 409 came from a pod that is
        still unbound and merely changed since `sent_rv` (try again), else raises BindError."""
        if status == 404:
            raise BindError(f"gpuslice: pod {pod.key} ({pod.uid}) no longer exists")
        try:
            fresh = self._read(pod.namespace, pod.name, deadline)
        except BindError:
            raise BindError(f"gpuslice: binding {pod.key} to {node}: {why}; the pod cannot be read back",
                            temporary=True, outcome_unknown=True) from None
        if fresh is None or fresh.uid != pod.uid:
            raise BindError(f"gpuslice: binding {pod.key} to {node}: {why}; the pod no longer exists")
        if fresh.node_name == node and all(fresh.annotations.get(k) == v for k, v in annotations.items()):
            log.info("pod %s: binding answered %s but the pod is bound to %s: done", pod.key, why, node)
            return None
        if fresh.node_name or fresh.deleting:
            state = f"bound to {fresh.node_name}" if fresh.node_name else "being deleted"
            raise BindError(f"gpuslice: binding {pod.key} to {node} refused: pod is {state} ({why})")
        if status == 409:
            if sent_rv is not None and fresh.resource_version not in (None, sent_rv):
                return fresh.resource_version  # only the precondition failed: the pod changed meanwhile
            raise BindError(f"gpuslice: binding {pod.key} to {node} refused ({why})")
        raise BindError(f"gpuslice: binding {pod.key} to {node}: {why}",
                        temporary=status is None or status >= 429)

    def _read(self, namespace: str, name: str, deadline: float | None = None) -> PodView | None:
        timeout = API_TIMEOUT if deadline is None else _timeout(deadline)
        if timeout is None:
            raise BindError(f"gpuslice: reading pod {namespace}/{name}: out of time", temporary=True)
        try:
            resp = self.api.read_namespaced_pod(name, namespace, _preload_content=False,
                                                _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise BindError(f"gpuslice: reading pod {namespace}/{name}: {exc.status} {api_message(exc)}",
                            temporary=True) from None
        except Exception as exc:
            raise BindError(f"gpuslice: reading pod {namespace}/{name}: {exc}", temporary=True) from exc
        return pod_view(read_json(resp))

    def _step(self, name: str) -> None:
        if self.fault is not None:
            self.fault(name)


def _timeout(deadline: float) -> tuple[float, float] | None:
    """(connect, read) seconds for an API call that must end by `deadline`; None if too little is left."""
    left = deadline - time.monotonic()
    if left < MIN_CALL:
        return None
    return (min(API_TIMEOUT[0], left), min(API_TIMEOUT[1], left))
