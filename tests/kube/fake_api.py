"""A small in-memory stand-in for CoreV1Api: the calls the kube face makes, with the API server's
resourceVersion preconditions, UID preconditions and Binding conflicts."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

from kubernetes.client import ApiException


class Resp:
    def __init__(self, obj: Any) -> None:
        self.data = json.dumps(obj).encode()
        self.status = 200


def _err(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason=message)
    exc.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return exc


class FakeStream:
    """A watch response: newline-delimited JSON events."""

    def __init__(self, events: list[dict]) -> None:
        self.lines = [json.dumps(e).encode() + b"\n" for e in events]

    def stream(self, amt: Any = None, decode_content: bool = False) -> Any:
        yield from self.lines

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class FakeApi:
    def __init__(self) -> None:
        # kind ("nodes"/"pods") -> what successive watch calls get: a list of events, or an exception
        self.watches: dict[str, list[Any]] = {"nodes": [], "pods": []}
        self.watch_rvs: dict[str, list[str]] = {"nodes": [], "pods": []}
        self.on_watches_done: Any = None
        self.selectors: list[str | None] = []  # field_selector of every pod list and watch
        self.rv = 100
        self.nodes: dict[str, dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}
        self.calls: list[str] = []
        self.fail: dict[str, Exception] = {}  # method -> raise once (before acting)
        self.fail_after: dict[str, Exception] = {}  # method -> act, then raise once (a lost answer)

    def _bump(self, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        exc = self.fail.pop(name, None)
        if exc is not None:
            raise exc

    def _leave(self, name: str) -> None:
        exc = self.fail_after.pop(name, None)
        if exc is not None:
            raise exc

    # --- test setup ----------------------------------------------------------------------------
    def add_node(self, name: str, annotations: dict[str, str] | None = None) -> dict:
        node = {"metadata": {"name": name, "annotations": dict(annotations or {})}, "spec": {},
                "status": {"allocatable": {"cpu": "64"}}}
        self._bump(node)
        self.nodes[name] = node
        return node

    def add_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> dict:
        pod = {"metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                            "annotations": dict(annotations)}, "spec": {}, "status": {"phase": "Pending"}}
        self._bump(pod)
        self.pods[(namespace, name)] = pod
        return pod

    def touch_pod(self, namespace: str, name: str) -> None:
        self._bump(self.pods[(namespace, name)])

    def bind_elsewhere(self, namespace: str, name: str, node: str) -> None:
        pod = self.pods[(namespace, name)]
        pod["spec"]["nodeName"] = node
        self._bump(pod)

    def mark_deleting(self, namespace: str, name: str) -> None:
        pod = self.pods[(namespace, name)]
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        self._bump(pod)

    # --- CoreV1Api -------------------------------------------------------------------------------
    def _watch(self, kind: str, kw: dict) -> FakeStream:
        self.watch_rvs[kind].append(kw.get("resource_version"))
        self.selectors.append(kw.get("field_selector"))
        if not self.watches[kind]:
            if self.on_watches_done is not None:
                self.on_watches_done(kind)
            return FakeStream([])
        step = self.watches[kind].pop(0)
        if isinstance(step, Exception):
            raise step
        return FakeStream(step)

    def list_node(self, **kw: Any) -> Resp | FakeStream:
        if kw.get("watch"):
            return self._watch("nodes", kw)
        self._enter("list_node")
        return Resp({"items": copy.deepcopy(list(self.nodes.values())), "metadata": {"resourceVersion": str(self.rv)}})

    def list_pod_for_all_namespaces(self, **kw: Any) -> Resp | FakeStream:
        if kw.get("watch"):
            return self._watch("pods", kw)
        self._enter("list_pod_for_all_namespaces")
        self.selectors.append(kw.get("field_selector"))
        return Resp({"items": copy.deepcopy(list(self.pods.values())), "metadata": {"resourceVersion": str(self.rv)}})

    def _pod(self, namespace: str, name: str) -> dict:
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise _err(404, f'pods "{name}" not found')
        return pod

    def read_namespaced_pod(self, name: str, namespace: str, **kw: Any) -> Resp:
        self._enter("read_namespaced_pod")
        pod = self._pod(namespace, name)
        return Resp(pod)

    def patch_namespaced_pod(self, name: str, namespace: str, body: dict, **kw: Any) -> Resp:
        self._enter("patch_namespaced_pod")
        pod = self._pod(namespace, name)
        meta = body.get("metadata", {})
        if "resourceVersion" in meta and meta["resourceVersion"] != pod["metadata"]["resourceVersion"]:
            raise _err(409, "the object has been modified; please apply your changes to the latest version")
        ann = pod["metadata"].setdefault("annotations", {})
        for k, v in meta.get("annotations", {}).items():
            if v is None:
                ann.pop(k, None)
            else:
                ann[k] = v
        self._bump(pod)
        self._leave("patch_namespaced_pod")
        return Resp(pod)

    def create_namespaced_pod_binding(self, name: str, namespace: str, body: dict, **kw: Any) -> Resp:
        self._enter("create_namespaced_pod_binding")
        pod = self._pod(namespace, name)
        # As the API server's BindingREST: UID and resourceVersion preconditions, then nodeName and the
        # Binding's annotations in one update.
        meta = body.get("metadata", {})
        uid = meta.get("uid")
        if uid and uid != pod["metadata"]["uid"]:
            raise _err(409, "Precondition failed: UID in precondition does not match")
        rv = meta.get("resourceVersion")
        if rv and rv != pod["metadata"]["resourceVersion"]:
            raise _err(409, "Precondition failed: ResourceVersion in precondition does not match")
        if pod["metadata"].get("deletionTimestamp"):
            raise _err(409, f"pod {name} is being deleted, cannot be assigned to a host")
        if pod["spec"].get("nodeName"):
            raise _err(409, f"pod {name} is already assigned to node \"{pod['spec']['nodeName']}\"")
        pod["spec"]["nodeName"] = body["target"]["name"]
        pod["metadata"].setdefault("annotations", {}).update(meta.get("annotations") or {})
        self._bump(pod)
        self._leave("create_namespaced_pod_binding")
        return Resp({"kind": "Status", "status": "Success"})

    def patch_node(self, name: str, body: dict, **kw: Any) -> Resp:
        self._enter("patch_node")
        node = self.nodes[name]
        node["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])
        self._bump(node)
        return Resp(node)
