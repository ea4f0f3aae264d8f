"""The real kube-scheduler with an extender whose policy narrows filter to the fragmentation
candidates: every pod lands on a node the engine's own filter names as a candidate (the simulator's
model), and exactly there when it names one node — kube-scheduler's host scoring cannot undo the GPU
choice. Skipped without $KUBEBUILDER_ASSETS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiException

from extender.core.assignment import ASSIGNMENT_ANNOTATION
from extender.core.policy import load_policy
from extender.core.requests import parse_slice_request
from extender.engine.cluster import MemoryCluster
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.kube.controlplane import free_port
from extender.kube.views import node_view, pod_view
from tests.kube.conftest import Env, Extender, gpu_node_body, gpu_pod_body, scheduler_config, start_control_plane
from tests.kube.test_real_scheduler import wait_for

NS = "default"
NODES = ["frag-0", "frag-1", "frag-2", "frag-3"]
POLICY = {"apiVersion": "gpuslice.io/v1", "rounding": {"mode": "exact", "minComputeUnits": 1},
          "burst": {"sharedFraction": 0.0}, "classes": {"maxMemoryBoundPerGpu": None},
          "scoring": {"fragmentation": {"enabled": True},
                      "candidates": {"enabled": True, "tolerance": 0.0, "minNodes": 1}}}
# the mix is snapshotted from the first pod on (after 1, 2, 4, 8, 16 pods), so every pod is placed by it
SHAPES = ["250m", "500m", "1000m", "125m"] * 6


# FGD's remainder count (the default) and the `waste` count the openb policy ships with
@pytest.fixture(scope="module", params=["fgd", "waste"])
def frag_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Path]]:
    cp = start_control_plane()
    workdir = tmp_path_factory.mktemp("frag-extender")
    policy = workdir / "policy.yaml"
    doc = {**POLICY, "scoring": {**POLICY["scoring"],
                                 "fragmentation": {"enabled": True, "remainders": request.param}}}
    policy.write_text(yaml.safe_dump(doc))
    extender = Extender(cp.kubeconfig, free_port(), workdir, ("--policy", str(policy)))
    try:
        extender.start(timeout=120)  # a loaded machine starts it slowly
        cp.start_scheduler(scheduler_config(cp.kubeconfig, extender.port))
        yield Env(cp, extender), policy
    finally:
        extender.kill()
        cp.stop()


def _mirror(env: Env, policy_path: Path, seen: list[dict]) -> Engine:
    """The engine the simulator runs, on the cluster as the API server has it now, having seen the same
    pods (in the same order) as the extender."""
    cluster = MemoryCluster()
    for name in NODES:
        cluster.add_node(node_view(json.loads(env.api.read_node(name, _preload_content=False).data)))
    for obj in seen:
        live = json.loads(env.api.read_namespaced_pod(obj["metadata"]["name"], NS, _preload_content=False).data)
        cluster.add_pod(pod_view(live))
    policy = load_policy(policy_path)
    engine = Engine(cluster, PolicyStore(policy))
    engine.sync()
    for obj in seen:
        view = pod_view(obj)
        req = parse_slice_request(view.labels, view.annotations, policy)
        assert req is not None
        engine.observe_request(view, req, policy)
    return engine


def test_pods_land_on_the_candidates_the_simulator_predicts(frag_env: tuple[Env, Path]) -> None:
    env, policy_path = frag_env
    for name in NODES:
        try:
            env.api.create_node(gpu_node_body(name, gpus=4))
        except ApiException as exc:
            if exc.status != 409:
                raise
    wait_for("nodes in the ledger", lambda: {n["node"] for n in env.extender.get("/debug/ledger")["nodes"]}
             >= set(NODES))
    seen: list[dict] = []
    exact = 0
    for i, compute in enumerate(SHAPES):
        body = gpu_pod_body(f"f{i}", compute=compute, memory="8Gi", cls="compute-bound")
        predicted: list[str] | None = None
        if len(seen) >= 16:  # the extender has a mix: predict with the simulator's engine
            mirror = _mirror(env, policy_path, seen)
            view = replace(pod_view(body), uid=f"predicted-{i}")
            predicted = mirror.filter(view, names=NODES).passed
        env.api.create_namespaced_pod(NS, body)
        wait_for(f"pod f{i} bound", lambda i=i: bool(env.api.read_namespaced_pod(f"f{i}", NS).spec.node_name),
                 timeout=60)
        pod = env.api.read_namespaced_pod(f"f{i}", NS)
        assert ASSIGNMENT_ANNOTATION in (pod.metadata.annotations or {})
        seen.append(json.loads(env.api.read_namespaced_pod(f"f{i}", NS, _preload_content=False).data))
        if predicted is not None:
            assert pod.spec.node_name in predicted, (f"f{i}", compute, pod.spec.node_name, predicted)
            exact += len(predicted) == 1
    assert exact >= 2  # some decisions had a single candidate, and kube-scheduler followed it
