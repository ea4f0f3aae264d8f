"""Which runs a `gpuslice simulate` invocation makes (policies and baselines over one arrival
sequence) and the fewest-GPUs search used for "GPUs needed"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from extender.core.errors import InputError
from extender.core.policy import Policy, parse_policy
from extender.engine.placement import evaluate
from extender.sim.baselines import BASELINES, baseline_placer
from extender.sim.metrics import summarize
from extender.sim.replay import Replay, RunSpec
from extender.sim.workload import SimNode, SimPod

Runner = Callable[[list[SimNode], list[SimPod], RunSpec], dict[str, object]]


def policy_spec(label: str, policy: Policy, source: str = "", bind: str = "solver") -> RunSpec:
    return RunSpec(label, policy, evaluate, "kube", source, bind)


def baseline_spec(name: str, policy: Policy, seed: int) -> RunSpec:
    if name not in BASELINES:
        raise InputError("--baselines", name, f"unknown baseline; use {', '.join(BASELINES)}")
    return RunSpec(name, without_gpuslice_scoring(policy), baseline_placer(name, seed), BASELINES[name], "baseline")


def without_gpuslice_scoring(policy: Policy) -> Policy:
    """The policy's capacity and class rules without gpuslice's own node scoring and candidate filter: a
    baseline chooses GPUs and nodes its own way."""
    if not (policy.scoring.fragmentation.enabled or policy.scoring.candidates.enabled):
        return policy
    data = policy.model_dump(mode="json", by_alias=True)
    data["scoring"]["fragmentation"]["enabled"] = data["scoring"]["candidates"]["enabled"] = False
    return parse_policy(data, "<baseline policy>")


def runner(host_score: str, extender_weight: float, seed: int) -> Runner:
    def run(nodes: list[SimNode], pods: list[SimPod], spec: RunSpec) -> dict[str, object]:
        return summarize(Replay(nodes, pods, spec, host_score, extender_weight, seed).run())

    return run


def truncate(nodes: list[SimNode], gpus: int) -> list[SimNode]:
    """The cluster cut down to its first `gpus` GPUs (later nodes dropped, the last one partial);
    nodes without GPUs are kept."""
    out = []
    left = gpus
    for n in nodes:
        if n.gpus == 0:
            out.append(n)
        elif left > 0:
            take = min(n.gpus, left)
            out.append(replace(n, gpus=take))
            left -= take
    return out


def fits(result: dict[str, object]) -> bool:
    pods = result["pods"]
    assert isinstance(pods, dict)
    sla = result["sla"]
    assert isinstance(sla, dict)
    return pods["pending"] == 0 and pods["infeasible"] == 0 and sla["violated"] == 0


def fewest_gpus(run: Runner, nodes: list[SimNode], pods: list[SimPod], spec: RunSpec,
                full: dict[str, object]) -> tuple[int | None, dict[str, object]]:
    """The fewest GPUs (cluster cut down from its end) on which every pod is placed and no SLA is
    violated: a binary search between 1 and what the full cluster used, assuming more GPUs never
    hurt. None if even the full cluster fails."""
    if not fits(full):
        return None, full
    lo, hi = 0, int(full["gpus"])  # type: ignore[call-overload]
    best = full
    while hi - lo > 1:
        mid = (lo + hi) // 2
        result = run(truncate(nodes, mid), pods, spec)
        if fits(result):
            hi, best = mid, result
        else:
            lo = mid
    if best is full and hi != int(full["gpus"]):  # type: ignore[call-overload]
        best = run(truncate(nodes, hi), pods, spec)
    return hi, best
