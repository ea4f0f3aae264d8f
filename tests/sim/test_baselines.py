from __future__ import annotations

from extender.core.inventory import GpuInfo
from extender.core.ledger import Ledger, PodRef
from extender.core.policy import parse_policy
from extender.core.requests import parse_slice_request
from extender.engine.placement import build_assignment
from extender.sim.baselines import best_fit, first_fit, make_random_fit, one_model_one_gpu

POLICY = parse_policy({"classes": {"maxMemoryBoundPerGpu": None}})


def _ledger() -> Ledger:
    ledger = Ledger(POLICY.burst.sharedFraction)
    ledger.set_node("n0", [GpuInfo(i, f"g{i}", "MI300X", 304, 8, 32, 192 * 2**30, True) for i in range(3)])
    return ledger


def _req(compute: str):
    req = parse_slice_request({}, {"gpuslice.io/compute": compute, "gpuslice.io/memory": "8Gi"}, POLICY)
    assert req is not None
    return req


def _place(ledger: Ledger, uid: str, compute: str, gpu_placer=first_fit) -> int:
    req = _req(compute)
    fit = gpu_placer(req, ledger.node("n0"), POLICY)
    assert fit.ok, fit.reason
    ledger.reserve(PodRef(uid, "d", uid), build_assignment(req, "n0", fit.choices, POLICY), req.workload_class,
                   req.compute_millis, ttl=None)
    return fit.choices[0].gpu.info.index


def test_first_fit_takes_the_lowest_gpu_and_best_fit_the_fullest() -> None:
    ledger = _ledger()
    assert _place(ledger, "a", "100m") == 0
    assert _place(ledger, "b", "500m", lambda r, s, p: _pick_gpu(r, s, p, 1)) == 1
    state = ledger.node("n0")
    assert first_fit(_req("100m"), state, POLICY).choices[0].gpu.info.index == 0
    assert best_fit(_req("100m"), state, POLICY).choices[0].gpu.info.index == 1  # fewest CUs left after


def _pick_gpu(req, state, policy, index):
    from dataclasses import replace

    return first_fit(req, replace(state, gpus=tuple(g for g in state.gpus if g.info.index == index)), policy)


def test_one_model_one_gpu_takes_empty_gpus_whole() -> None:
    ledger = _ledger()
    _place(ledger, "a", "100m")
    fit = one_model_one_gpu(_req("100m"), ledger.node("n0"), POLICY)
    assert fit.ok and fit.choices[0].gpu.info.index == 1 and len(fit.choices[0].cus) == 304


def test_random_fit_is_seeded() -> None:
    state = _ledger().node("n0")
    picks = [make_random_fit(5)(_req("100m"), state, POLICY).choices[0].gpu.info.index for _ in range(3)]
    again = [make_random_fit(5)(_req("100m"), state, POLICY).choices[0].gpu.info.index for _ in range(3)]
    assert picks == again
