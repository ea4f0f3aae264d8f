from __future__ import annotations

from extender.core.policy import load_policy
from extender.sim.baselines import one_model_one_gpu
from extender.sim.gpumodels import builtin_policy_path
from extender.sim.metrics import summarize
from extender.sim.replay import Replay, RunSpec
from extender.sim.workload import GpuAsk, SimNode, SimPod

GIB = 2**30
POLICY = load_policy(builtin_policy_path("mi300x-inference"))


def _node(name: str = "n0", gpus: int = 1, cpu: int = 64_000) -> SimNode:
    return SimNode(name, cpu, 512 * GIB, gpus, "MI300X")


def _pod(name: str, arrival: float, duration: float | None, compute: int = 1000, cpu: int = 1000) -> SimPod:
    ask = GpuAsk(compute_millis=compute, memory_bytes=16 * GIB, workload_class="compute-bound")
    return SimPod(name, arrival, duration, cpu, GIB, ask, compute / 1000)


def _run(nodes: list[SimNode], pods: list[SimPod], spec: RunSpec | None = None) -> dict:
    return summarize(Replay(nodes, pods, spec or RunSpec("gpuslice", POLICY)).run())


def _outcomes(nodes: list[SimNode], pods: list[SimPod]) -> dict[str, str | None]:
    st = Replay(nodes, pods, RunSpec("gpuslice", POLICY)).run()
    return {o.pod.name: o.node for o in st.outcomes}


def test_departure_runs_before_an_arrival_at_the_same_instant() -> None:
    placed = _outcomes([_node()], [_pod("a", 0, 5), _pod("b", 5, None)])
    assert placed["b"] == "n0"


def test_unschedulable_pod_is_retried_after_a_departure() -> None:
    pods = [_pod("a", 0, 10), _pod("b", 1, None), _pod("late", 20, None, compute=100)]
    st = Replay([_node()], pods, RunSpec("gpuslice", POLICY)).run()
    by = {o.pod.name: o for o in st.outcomes}
    assert by["a"].departed and by["b"].node == "n0"
    assert by["late"].node is None and "GPU capacity" in by["late"].reason  # b holds the whole GPU


def test_without_a_departure_the_pod_stays_pending() -> None:
    r = _run([_node()], [_pod("a", 0, None), _pod("b", 1, None)])
    assert r["pods"]["pending"] == 1 and r["pods"]["placed"] == 1
    assert r["allocatedPct"] == 100.0 and r["arrivedPct"] == 200.0


def test_host_cpu_fit_is_modelled() -> None:
    r = _run([_node(cpu=1500, gpus=2)], [_pod("a", 0, None, 100), _pod("b", 1, None, 100)])
    assert r["pods"]["placed"] == 1 and r["pods"]["pending"] == 1
    assert "host CPU" in next(iter(r["pendingReasons"]))


def test_slices_share_a_gpu_and_baseline_takes_whole_gpus() -> None:
    pods = [_pod(f"p{i}", i, None, compute=100) for i in range(4)]
    shared = _run([_node(gpus=4)], pods)
    whole = _run([_node(gpus=4)], pods, RunSpec("1-model-1-gpu", POLICY, one_model_one_gpu, "first"))
    assert shared["gpus"] == 2  # two compute-bound tenants per GPU under this policy
    assert whole["gpus"] == 4 and whole["idleGpus"] == 0 and shared["idleGpus"] == 2


def test_sla_pods_are_sized_for_interference_and_reported() -> None:
    ask = GpuAsk(profile="llama-3.1-8b", target_rps=8)
    too_much = GpuAsk(profile="llama-3.1-8b", target_rps=14)  # the profile tops out at 13.5
    pods = [SimPod("chat", 0, None, 1000, GIB, ask, 0.0), SimPod("big", 1, None, 1000, GIB, too_much, 0.0)]
    r = _run([_node(gpus=2)], pods)
    rows = {row["pod"]: row for row in r["sla"]["perPod"]}
    assert rows["chat"]["status"] == "met" and rows["chat"]["cus"] == 64  # 32 CUs give 7.2 less interference
    assert rows["chat"]["predictedRps"] >= 8
    assert rows["big"]["status"] == "infeasible" and "req/s" in rows["big"]["reason"]
    assert r["pods"]["infeasible"] == 1 and r["slaMet"] is False
