"""The cluster on a real API server: cached views fed by the watch, and the crash-safe bind.

A bind has two writes, in this order:
1. patch the pod's `gpuslice.io/assignment` annotation, with the pod's resourceVersion as a
   precondition (a pod changed, recreated or bound meanwhile makes the patch fail with 409);
2. create the pod's Binding (POST pods/<name>/binding, with the pod's UID as a precondition).
The Binding is the commit point: a pod counts in the ledger only once it has a nodeName, and the
node named in its annotation must be that nodeName. A crash between 1 and 2 leaves an annotation
on an unbound pod, which counts for nothing and is overwritten by the pod's next bind. On a failed
Binding the annotation is removed again, unless the pod turns out to be bound to this node after
all (a lost answer), which makes the bind a success.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping

from kubernetes.client import ApiException, CoreV1Api

from extender.engine.cluster import BindError, NodeView, PodView
from extender.kube.raw import read_json, release
from extender.kube.views import pod_view

log = logging.getLogger(__name__)

PATCH_ATTEMPTS = 3
API_TIMEOUT = (5.0, 10.0)  # connect, read seconds: a bind must answer well inside kube-scheduler's httpTimeout


def api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


class KubeCluster:
    """`Cluster` over the API server. Node and pod views come from the watch (see watch.py)."""

    def __init__(self, api: CoreV1Api, leading: Callable[[], bool] | None = None,
                 on_failed: Callable[[str], None] | None = None) -> None:
        self.api = api
        self.leading = leading
        # Called with the node of a failed bind: its reservation is released, and no cluster event
        # tells kube-scheduler so (see nudge.py).
        self.on_failed = on_failed
        self._nodes: dict[str, NodeView] = {}
        self._pods: dict[str, PodView] = {}  # uid -> view
        self._uids: dict[str, str] = {}  # namespace/name -> uid
        self._lock = threading.Lock()
        # Test hook: called with each bind step ("annotated", "bound") to inject crashes.
        self.fault: Callable[[str], None] | None = None

    # --- the watch's cache -------------------------------------------------------------------
    def replace_nodes(self, views: list[NodeView]) -> None:
        with self._lock:
            self._nodes = {v.name: v for v in views}

    def replace_pods(self, views: list[PodView]) -> None:
        with self._lock:
            self._pods = {v.uid: v for v in views}
            self._uids = {v.key: v.uid for v in views}

    def put_node(self, view: NodeView) -> NodeView | None:
        with self._lock:
            old = self._nodes.get(view.name)
            self._nodes[view.name] = view
            return old

    def drop_node(self, name: str) -> NodeView | None:
        with self._lock:
            return self._nodes.pop(name, None)

    def put_pod(self, view: PodView) -> PodView | None:
        with self._lock:
            old = self._pods.get(view.uid)
            self._pods[view.uid] = view
            self._uids[view.key] = view.uid
            return old

    def drop_pod(self, view: PodView) -> PodView | None:
        with self._lock:
            if self._uids.get(view.key) == view.uid:
                del self._uids[view.key]
            return self._pods.pop(view.uid, None)

    # --- Cluster protocol ----------------------------------------------------------------------
    def get_pod(self, namespace: str, name: str) -> PodView | None:
        uid = self._uids.get(f"{namespace}/{name}")
        view = self._pods.get(uid) if uid else None
        return view if view is not None else self._read(namespace, name)

    def get_node(self, name: str) -> NodeView | None:
        return self._nodes.get(name)

    def list_nodes(self) -> list[NodeView]:
        with self._lock:
            return list(self._nodes.values())

    def list_pods(self) -> list[PodView]:
        with self._lock:
            return list(self._pods.values())

    def bind_pod(self, pod: PodView, node: str, annotations: Mapping[str, str]) -> None:
        try:
            self._bind_pod(pod, node, annotations)
        except BindError:
            if self.on_failed is not None and annotations:
                self.on_failed(node)
            raise

    def _bind_pod(self, pod: PodView, node: str, annotations: Mapping[str, str]) -> None:
        if self.leading is not None and not self.leading():
            raise BindError("gpuslice: this extender's scheduler does not hold the leader lease", temporary=True)
        written: str | None = None
        if annotations:
            written = self._annotate(pod, node, annotations)
            if written is None:
                return  # already bound here with this assignment
        self._step("annotated")
        try:
            release(self.api.create_namespaced_pod_binding(
                pod.name, pod.namespace,
                {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod.name, "uid": pod.uid},
                 "target": {"apiVersion": "v1", "kind": "Node", "name": node}},
                _preload_content=False, _request_timeout=API_TIMEOUT))
        except ApiException as exc:
            self._binding_failed(pod, node, annotations, f"{exc.status} {api_message(exc)}", exc.status)
            return
        except Exception as exc:  # no answer: the Binding may or may not exist
            self._binding_failed(pod, node, annotations, f"no answer: {exc}", None)
            return
        self._step("bound")

    # --- steps -------------------------------------------------------------------------------
    def _annotate(self, pod: PodView, node: str, annotations: Mapping[str, str]) -> str | None:
        """Write the annotations under a resourceVersion precondition. Returns the pod's new
        resourceVersion, or None if the pod is already bound to `node` with these annotations."""
        current = self._pods.get(pod.uid)
        rv = (current or pod).resource_version
        for _ in range(PATCH_ATTEMPTS):
            if rv is not None:
                body = {"metadata": {"resourceVersion": rv, "annotations": dict(annotations)}}
                try:
                    resp = self.api.patch_namespaced_pod(pod.name, pod.namespace, body, _preload_content=False,
                                                         _request_timeout=API_TIMEOUT)
                    return str(read_json(resp)["metadata"]["resourceVersion"])
                except ApiException as exc:
                    if exc.status not in (404, 409):
                        raise BindError(f"gpuslice: writing the assignment of {pod.key}: {exc.status} "
                                        f"{api_message(exc)}", temporary=exc.status >= 429) from None
                except Exception as exc:
                    raise BindError(f"gpuslice: writing the assignment of {pod.key}: {exc}", temporary=True) from exc
            fresh = self._read(pod.namespace, pod.name)
            if fresh is None or fresh.uid != pod.uid:
                raise BindError(f"gpuslice: pod {pod.key} ({pod.uid}) no longer exists")
            if fresh.node_name:
                if fresh.node_name == node and all(fresh.annotations.get(k) == v for k, v in annotations.items()):
                    return None
                raise BindError(f"gpuslice: pod {pod.key} is already bound to {fresh.node_name}")
            if fresh.deleting:
                raise BindError(f"gpuslice: pod {pod.key} is being deleted")
            rv = fresh.resource_version
        raise BindError(f"gpuslice: pod {pod.key} kept changing while its assignment was written", temporary=True)

    def _binding_failed(self, pod: PodView, node: str, annotations: Mapping[str, str], why: str,
                        status: int | None) -> None:
        """Find out what the failed Binding left behind; succeed if the pod is bound here after all,
        else remove the annotation and raise BindError."""
        try:
            fresh = self._read(pod.namespace, pod.name)
        except BindError:
            raise BindError(f"gpuslice: binding {pod.key} to {node}: {why}; the pod cannot be read back",
                            temporary=True, outcome_unknown=True) from None
        if fresh is None or fresh.uid != pod.uid:
            raise BindError(f"gpuslice: binding {pod.key} to {node}: {why}; the pod no longer exists")
        if fresh.node_name == node and all(fresh.annotations.get(k) == v for k, v in annotations.items()):
            log.info("pod %s: binding answered %s but the pod is bound to %s: done", pod.key, why, node)
            return
        if not fresh.node_name:
            self._unannotate(fresh, annotations)
        if status == 409:
            state = f"bound to {fresh.node_name}" if fresh.node_name else (
                "being deleted" if fresh.deleting else "changed")
            raise BindError(f"gpuslice: binding {pod.key} to {node} refused: pod is {state} ({why})")
        raise BindError(f"gpuslice: binding {pod.key} to {node}: {why}",
                        temporary=status is None or status >= 429)

    def _unannotate(self, fresh: PodView, annotations: Mapping[str, str]) -> None:
        """Remove our annotations from an unbound pod, if they are still ours."""
        pod: PodView | None = fresh
        for _ in range(PATCH_ATTEMPTS):
            if pod is None or pod.node_name:
                return
            mine = [k for k, v in annotations.items() if pod.annotations.get(k) == v]
            if not mine:
                return
            body = {"metadata": {"resourceVersion": pod.resource_version, "annotations": dict.fromkeys(mine)}}
            try:
                release(self.api.patch_namespaced_pod(pod.name, pod.namespace, body, _preload_content=False,
                                                      _request_timeout=API_TIMEOUT))
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status != 409:
                    break
            except Exception:
                break
            try:
                pod = self._read(fresh.namespace, fresh.name)
            except BindError:
                break
        # Harmless if it stays: an unbound pod's annotation counts for nothing and is overwritten.
        log.warning("pod %s: could not remove the assignment annotation of a failed bind", fresh.key)

    def _read(self, namespace: str, name: str) -> PodView | None:
        try:
            resp = self.api.read_namespaced_pod(name, namespace, _preload_content=False,
                                                _request_timeout=API_TIMEOUT)
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
