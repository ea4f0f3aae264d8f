"""Engine.preempt on the candidates of recorded ExtenderPreemptionArgs (both forms)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extender.core.inventory import INVENTORY_ANNOTATION, GpuInfo, format_inventory
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine

FIXTURES = Path(__file__).parent.parent / "fixtures" / "kube-scheduler"
GIB = 2**30


def node(name: str) -> NodeView:
    gpu = GpuInfo(index=0, id=f"{name}-g0", model="MI300X", computeUnits=304, xcds=8, shaderEngines=32,
                  memoryBytes=192 * GIB, healthy=True)
    return NodeView(name, annotations={INVENTORY_ANNOTATION: format_inventory([gpu])})


def gpu_pod(uid: str, compute: str, cls: str = "memory-bound") -> PodView:
    return PodView(uid, "default", uid, annotations={"gpuslice.io/compute": compute, "gpuslice.io/memory": "8Gi",
                                                      "gpuslice.io/class": cls})


def engine_with(nodes: list[str], tenants: dict[str, list[PodView]]) -> Engine:
    cluster = MemoryCluster()
    for n in nodes:
        cluster.add_node(node(n))
    engine = Engine(cluster, PolicyStore())
    engine.sync()
    for n, pods in tenants.items():
        for p in pods:
            cluster.add_pod(p)
            assert engine.filter(p, names=[n]).passed == [n], engine.filter(p, names=[n]).failed
            assert engine.bind("default", p.name, p.uid, n) == ""
    return engine


def candidates(tag: str) -> dict[str, list[str]]:
    args = json.loads((FIXTURES / f"{tag}-preempt-01.request.json").read_text())
    if args["NodeNameToMetaVictims"] is not None:
        return {n: [p["UID"] for p in v["Pods"]] for n, v in args["NodeNameToMetaVictims"].items()}
    return {n: [p["metadata"]["uid"] for p in v["Pods"]] for n, v in args["NodeNameToVictims"].items()}


@pytest.mark.parametrize("tag", ["ncc-true", "ncc-false"])
def test_recorded_candidates_kept_only_where_eviction_makes_room(tag: str) -> None:
    cands = candidates(tag)
    victim = {n: v[0] for n, v in cands.items()}
    engine = engine_with(["node-a", "node-b"], {
        "node-a": [gpu_pod(victim["node-a"], "700m")],  # evicting it frees enough
        "node-b": [gpu_pod(victim["node-b"], "200m"), gpu_pod("other-b", "600m")],  # not enough even then
    })  # bad-node-c has no GPU inventory at all
    preemptor = gpu_pod("preemptor", "500m")
    assert engine.filter(preemptor, names=["node-a", "node-b"]).passed == []
    out = engine.preempt(preemptor, cands)
    assert out == {"node-a": [victim["node-a"]]}


def test_pod_without_slice_keeps_every_candidate() -> None:
    engine = engine_with(["node-a"], {})
    cands = candidates("ncc-true")
    assert engine.preempt(PodView("x", "default", "x"), cands) == cands


def test_victims_trimmed_to_what_the_slice_needs() -> None:
    engine = engine_with(["n"], {"n": [gpu_pod("big", "400m", "compute-bound"), gpu_pod("small", "300m"),
                                          gpu_pod("tiny", "100m", "compute-bound")]})
    # kube-scheduler's order: most important first; "cpu-hog" holds no slice (chosen for its CPU)
    cands = {"n": ["big", "cpu-hog", "small", "tiny"]}
    out = engine.preempt(gpu_pod("pre", "400m"), cands)
    kept = out["n"]
    assert "cpu-hog" in kept  # never second-guess a victim kube-scheduler chose for its own reasons
    assert "big" not in kept  # the most important victim is spared: evicting the others makes room
    assert set(kept) == {"cpu-hog", "small", "tiny"}


def test_node_where_slice_fits_without_gpu_victims_keeps_its_victims() -> None:
    engine = engine_with(["n"], {"n": [gpu_pod("v", "100m")]})
    cands = {"n": ["v"]}
    assert engine.preempt(gpu_pod("pre", "100m"), cands) == cands  # never an empty victim list


def test_invalid_request_keeps_no_candidate() -> None:
    engine = engine_with(["n"], {})
    bad = PodView("b", "default", "b", annotations={"gpuslice.io/compute": "2000m"})
    assert engine.preempt(bad, {"n": ["v"]}) == {}
