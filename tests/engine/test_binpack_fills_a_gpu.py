"""Under binpack a slice that fills a GPU (leaving less than the smallest slice beside it) goes there
rather than onto an empty GPU: the CUs it leaves are no use to any slice either way, and the empty GPU
stays empty. Before, the fragmentation term (the greedy score's and the CP-SAT bind's) counted those
few CUs as stranded and two 128-CU memory-bound pods of the MI300X policy never shared a GPU (272
guaranteeable CUs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from extender.core.policy import load_policy
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.engine.solver_placer import SolverPlacer

POLICY = load_policy(Path(__file__).resolve().parents[2] / "policies" / "mi300x-inference.yaml")


def _pod(uid: str, cus: int) -> PodView:
    millis = cus * 1000 // 304
    return PodView(uid, "default", uid, annotations={"gpuslice.io/compute": f"{millis}m", "gpuslice.io/memory": "60G",
                                                     "gpuslice.io/class": "memory-bound"})


def _gpus_of(engine: Engine, uid: str) -> list[int]:
    entry = engine.ledger.entry(uid)
    assert entry is not None
    return [g.index for g in entry.assignment.gpus]


@pytest.mark.parametrize("bind", ["greedy", "solver"])  # bound by the greedy placer, or by CP-SAT as serve binds
def test_a_slice_that_fills_a_gpu_goes_there_not_onto_an_empty_one(bind: str) -> None:
    for first, second in ((128, 128), (128, 96), (96, 96)):
        cluster = MemoryCluster()
        cluster.add_node(NodeView("n", allocatable={"amd.com/gpu": "2", "cpu": "64", "memory": "256Gi"}))
        engine = Engine(cluster, PolicyStore(POLICY), bind_placer=SolverPlacer() if bind == "solver" else None)
        engine.sync()
        for uid, cus in (("a", first), ("b", second)):
            pod = _pod(uid, cus)
            cluster.add_pod(pod)
            assert "n" in engine.filter(pod, names=["n"]).passed
            assert engine.bind("default", uid, uid, "n") == ""
        assert _gpus_of(engine, "a") == _gpus_of(engine, "b"), (first, second)
