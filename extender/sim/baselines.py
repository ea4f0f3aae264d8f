"""Baseline placers with the Placer signature (request, node state, policy) -> NodeFit, obeying the
same capacity and class rules as gpuslice's own `evaluate` (they reuse its per-GPU reject rule):

- `one_model_one_gpu`: the status quo, every pod takes whole, empty GPUs (the device plugin's
  `amd.com/gpu: 1`), first GPUs in index order;
- `first_fit`: the lowest-index GPUs that fit; nodes in name order;
- `best_fit`: the GPUs left with the fewest free CUs; nodes by the same tightness;
- `random_fit`: random fitting GPUs; random node.

How the simulator chooses among nodes for each is in `BASELINES`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from extender.core.ledger import GpuState, NodeState
from extender.core.policy import Policy
from extender.core.requests import SliceRequest
from extender.engine.placement import GpuChoice, NodeFit, choose_slice, gpu_reject_reason, needed_cus, takes_whole

Placer = Callable[[SliceRequest, NodeState, Policy], NodeFit]


def _choice(req: SliceRequest, gpu: GpuState, policy: Policy, score: float) -> GpuChoice | None:
    chosen = choose_slice(req, gpu, needed_cus(req, gpu, policy))
    return None if chosen is None else GpuChoice(gpu, chosen[0], chosen[1], score)


def _fitting(req: SliceRequest, state: NodeState, policy: Policy) -> tuple[list[GpuState], str]:
    ok: list[GpuState] = []
    reasons: list[str] = []
    for gpu in state.gpus:
        why = gpu_reject_reason(req, gpu, policy)
        if why is None:
            ok.append(gpu)
        else:
            reasons.append(why[1])
    return ok, "; ".join(reasons[:3])


def _take(req: SliceRequest, state: NodeState, policy: Policy, ordered: list[GpuState], score: float) -> NodeFit:
    if len(ordered) < req.count:
        return NodeFit(False, f"{len(ordered)}/{len(state.gpus)} GPUs fit (pod needs {req.count})", "compute")
    choices = []
    for gpu in ordered[: req.count]:
        c = _choice(req, gpu, policy, score)
        if c is None:
            return NodeFit(False, f"gpu {gpu.info.index}: no CU set", "compute")
        choices.append(c)
    return NodeFit(True, choices=tuple(choices), score=score)


def first_fit(req: SliceRequest, state: NodeState, policy: Policy) -> NodeFit:
    ok, why = _fitting(req, state, policy)
    fit = _take(req, state, policy, ok, 1.0)
    return fit if fit.ok or not why else replace(fit, reason=f"{fit.reason}: {why}")


def _left_after(req: SliceRequest, gpu: GpuState, policy: Policy) -> float:
    n = needed_cus(req, gpu, policy)
    free = gpu.info.computeUnits if takes_whole(gpu, n) else len(gpu.free_cus)
    return (free - n) / gpu.info.computeUnits


def best_fit(req: SliceRequest, state: NodeState, policy: Policy) -> NodeFit:
    ok, why = _fitting(req, state, policy)
    ranked = sorted(ok, key=lambda g: (_left_after(req, g, policy), g.info.index))
    if len(ranked) < req.count:
        return replace(_take(req, state, policy, ranked, 0.0), reason=f"too few GPUs fit: {why}")
    left = sum(_left_after(req, g, policy) for g in ranked[: req.count]) / req.count
    return _take(req, state, policy, ranked, max(0.0, 1.0 - left))


def make_random_fit(seed: int) -> Placer:
    rng = random.Random(seed)

    def random_fit(req: SliceRequest, state: NodeState, policy: Policy) -> NodeFit:
        ok, why = _fitting(req, state, policy)
        rng.shuffle(ok)
        fit = _take(req, state, policy, ok, 1.0)
        return fit if fit.ok else replace(fit, reason=f"{fit.reason}: {why}")

    return random_fit


def whole_gpus(req: SliceRequest) -> SliceRequest:
    """The same request as the status quo serves it: whole GPUs, nothing shared."""
    return replace(req, compute_millis=1000, compute_limit_millis=1000, compute_cus=None)


def one_model_one_gpu(req: SliceRequest, state: NodeState, policy: Policy) -> NodeFit:
    return first_fit(whole_gpus(req), state, policy)


# How the simulator picks a node for each placer: "kube" = kube-scheduler's scoring (host score plus
# the extender's prioritize), "first" = first passing node in name order, "best" = highest
# prioritize score then name order, "random" = uniformly random passing node.
BASELINES: dict[str, str] = {"1-model-1-gpu": "first", "first-fit": "first", "best-fit": "best", "random": "random"}


def baseline_placer(name: str, seed: int) -> Placer:
    if name == "1-model-1-gpu":
        return one_model_one_gpu
    if name == "first-fit":
        return first_fit
    if name == "best-fit":
        return best_fit
    if name == "random":
        return make_random_fit(seed)
    raise KeyError(name)
