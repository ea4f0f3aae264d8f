"""The one-write bind against the real API server: the Binding's metadata carries the assignment
annotation, with the pod's UID and resourceVersion as preconditions (what the fake API emulates in
test_bind_faults.py, checked here on kube-apiserver itself)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes.client import ApiException

from extender.engine.cluster import BindError, PodView
from extender.kube.cluster import KubeCluster
from extender.kube.raw import read_json
from extender.kube.views import pod_view
from tests.kube.conftest import Env, gpu_node_body, gpu_pod_body

ANN = "gpuslice.io/assignment"


NS = "bind-test"  # apart from the other tests' pods, which they list and check


def isolated_node_body(name: str) -> dict:
    """A GPU node that kube-scheduler never picks (unschedulable, not labelled like the other tests'
    nodes): a Binding does not ask the scheduler, so these tests can still bind to it."""
    body = gpu_node_body(name)
    body["metadata"]["labels"] = {"kubernetes.io/hostname": name}
    body["spec"] = {"unschedulable": True}
    return body


@pytest.fixture
def node(kube_env: Env) -> Iterator[str]:
    name = f"bind-{uuid.uuid4().hex[:6]}"
    try:
        kube_env.api.create_namespace({"metadata": {"name": NS}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    kube_env.api.create_node(isolated_node_body(name))
    yield name
    kube_env.api.delete_collection_namespaced_pod(NS, grace_period_seconds=0)
    for n in (name, f"{name}-other"):
        try:
            kube_env.api.delete_node(n)
        except ApiException as exc:
            if exc.status != 404:
                raise


def new_pod(env: Env) -> dict:
    body = gpu_pod_body(f"bind-{uuid.uuid4().hex[:6]}", scheduler="nobody")  # no scheduler will touch it
    body["metadata"]["labels"] = {}
    return env.api.create_namespaced_pod(NS, body).to_dict()


def read(env: Env, name: str) -> dict:
    return env.api.read_namespaced_pod(name, NS).to_dict()


def view_of(env: Env, name: str) -> PodView:
    return pod_view(read_json(env.api.read_namespaced_pod(name, NS, _preload_content=False)))


class Counting:
    """The API client, recording which calls were made."""

    def __init__(self, api: object) -> None:
        self.api = api
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> object:
        fn = getattr(self.api, name)
        if not callable(fn):
            return fn

        def call(*args: object, **kwargs: object) -> object:
            self.calls.append(name)
            return fn(*args, **kwargs)

        return call


def test_binding_sets_node_and_annotation_in_one_update(kube_env: Env, node: str) -> None:
    pod = new_pod(kube_env)
    name = pod["metadata"]["name"]
    view = view_of(kube_env, name)
    KubeCluster(kube_env.api).bind_pod(view, node, {ANN: json.dumps({"node": node})})
    got = read(kube_env, name)
    assert got["spec"]["node_name"] == node
    assert got["metadata"]["annotations"][ANN] == json.dumps({"node": node})
    assert got["metadata"]["annotations"]["gpuslice.io/compute"] == "250m"  # merged, not replaced
    assert any(c["type"] == "PodScheduled" and c["status"] == "True" for c in got["status"]["conditions"] or [])


def test_stale_resource_version_is_refused_then_retried(kube_env: Env, node: str) -> None:
    pod = new_pod(kube_env)
    name = pod["metadata"]["name"]
    stale = view_of(kube_env, name)
    kube_env.api.patch_namespaced_pod(name, NS, {"metadata": {"labels": {"team": "search"}}})
    api = Counting(kube_env.api)
    KubeCluster(api).bind_pod(stale, node, {ANN: "a"})  # type: ignore[arg-type]
    # the API server refused the stale resourceVersion (409), the pod was read again, the retry took
    assert api.calls == ["create_namespaced_pod_binding", "read_namespaced_pod", "create_namespaced_pod_binding"]
    got = read(kube_env, name)
    assert got["spec"]["node_name"] == node and got["metadata"]["annotations"][ANN] == "a"
    assert got["metadata"]["labels"]["team"] == "search"  # the other writer's change survives


def test_pod_bound_elsewhere_is_refused_and_keeps_no_assignment(kube_env: Env, node: str) -> None:
    pod = new_pod(kube_env)
    name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    view = view_of(kube_env, name)
    other = f"{node}-other"
    kube_env.api.create_node(isolated_node_body(other))
    kube_env.api.create_namespaced_pod_binding(name, NS, {
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "uid": uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": other}}, _preload_content=False)
    with pytest.raises(BindError, match=f"bound to {other}"):
        KubeCluster(kube_env.api).bind_pod(view, node, {ANN: "a"})
    assert ANN not in (read(kube_env, name)["metadata"]["annotations"] or {})


def test_recreated_pod_is_refused(kube_env: Env, node: str) -> None:
    pod = new_pod(kube_env)
    name = pod["metadata"]["name"]
    old = view_of(kube_env, name)
    kube_env.api.delete_namespaced_pod(name, NS, grace_period_seconds=0)
    body = gpu_pod_body(name, scheduler="nobody")
    body["metadata"]["labels"] = {}
    for _ in range(50):  # the old object may take a moment to go
        try:
            kube_env.api.create_namespaced_pod(NS, body)
            break
        except ApiException:
            time.sleep(0.1)
    with pytest.raises(BindError, match="no longer exists"):
        KubeCluster(kube_env.api).bind_pod(old, node, {ANN: "a"})
    got = read(kube_env, name)
    assert not got["spec"]["node_name"] and ANN not in (got["metadata"]["annotations"] or {})
