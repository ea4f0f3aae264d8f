"""SLA sizing (core/sizing.py) and the interference model it budgets (core/interference.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.errors import SliceRequestError
from extender.core.interference import CoTenants, guaranteeable_cus, loss, worst_co_tenants
from extender.core.inventory import GpuInfo
from extender.core.ledger import GpuState, PodRef, Slice
from extender.core.policy import Policy, load_policy, parse_policy, profile_rps, round_cus
from extender.core.sizing import millis_for_cus, predict, rps_within_budget, size_for_target

ROOT = Path(__file__).resolve().parents[2]
INFERENCE = load_policy(ROOT / "policies" / "mi300x-inference.yaml")
MI300X = INFERENCE.models["MI300X"]
LLAMA = "llama-3.1-8b"


def test_worst_co_tenancy_under_the_inference_policy() -> None:
    # bandwidth budget 1.2 with shares 0.5 (memory-bound) and 0.2 (compute-bound); at most 2 of each class
    assert worst_co_tenants(INFERENCE, "memory-bound", MI300X, 32) == CoTenants(1, 1)  # 0.5 + 0.5 + 0.2
    assert worst_co_tenants(INFERENCE, "compute-bound", MI300X, 32) == CoTenants(2, 0)  # 0.2 + 1.0
    assert worst_co_tenants(INFERENCE, "memory-bound", MI300X, 240) == CoTenants(1, 0)  # one 32-CU slice left
    assert worst_co_tenants(INFERENCE, "memory-bound", MI300X, 256) == CoTenants()  # 16 CUs left: no slice
    assert worst_co_tenants(INFERENCE, "memory-bound", MI300X, 304) == CoTenants()  # the whole GPU
    assert guaranteeable_cus(INFERENCE, MI300X) == 272


def test_class_limits_bound_it_without_a_budget() -> None:
    pol = parse_policy({"classes": {"maxMemoryBoundPerGpu": 2, "maxComputeBoundPerGpu": 4}})
    assert worst_co_tenants(pol, "memory-bound", pol.models["MI300X"], 32) == CoTenants(1, 4)
    assert worst_co_tenants(pol, "compute-bound", pol.models["MI300X"], 32) == CoTenants(2, 3)


def test_unlimited_classes_are_bounded_by_the_cus_left() -> None:
    pol = parse_policy({})  # default: 2 memory-bound per GPU, compute-bound unlimited, 32-CU slices
    assert worst_co_tenants(pol, "memory-bound", pol.models["MI300X"], 64) == CoTenants(1, 5)  # (272-64)//32 = 6
    assert loss(pol, CoTenants(1, 40)) == pytest.approx(0.95)  # capped


def test_the_issue_case_a_7_rps_llama_gets_64_cus() -> None:
    # Alone 32 CUs give 7.2 req/s, but beside a memory-bound and a compute-bound tenant (16% lost) 6.05.
    s = size_for_target(INFERENCE, LLAMA, 7)
    assert (s.cus, s.millis, s.budget) == (64, 210, CoTenants(1, 1))
    assert s.alone_rps == pytest.approx(10.6) and s.predicted_rps == pytest.approx(10.6 * 0.84)
    assert s.loss == pytest.approx(0.16)
    assert rps_within_budget(INFERENCE, LLAMA, 32)[0] == pytest.approx(7.2 * 0.84)  # < 7


def test_the_pods_class_overrides_the_profiles() -> None:
    s = size_for_target(INFERENCE, LLAMA, 7, "compute-bound")
    assert s.budget == CoTenants(2, 0) and s.loss == pytest.approx(0.26) and s.cus == 64


def test_an_unreachable_target_names_the_key_and_the_budget() -> None:
    with pytest.raises(SliceRequestError) as err:
        size_for_target(INFERENCE, LLAMA, 14)
    assert err.value.key == "gpuslice.io/target-rps" and err.value.value == "14"
    assert "reaches at most 13.5 req/s" in err.value.reason


@pytest.mark.parametrize(("profile", "target", "key"), [("nope", 1.0, "profile"), (LLAMA, 0.0, "target-rps"),
                                                         (LLAMA, -2.0, "target-rps"), (LLAMA, math.nan, "target-rps"),
                                                         (LLAMA, math.inf, "target-rps")])
def test_bad_arguments_are_typed_errors(profile: str, target: float, key: str) -> None:
    with pytest.raises(SliceRequestError) as err:
        size_for_target(INFERENCE, profile, target)
    assert err.value.key == f"gpuslice.io/{key}"


@pytest.mark.parametrize("cus", [8, 32, 64, 96, 128, 160, 272, 304])
def test_millis_turn_back_into_the_same_cus(cus: int) -> None:
    m = millis_for_cus(cus, 304)
    assert math.ceil(m * 304 / 1000) == cus


def _gpu(model: str, slices: list[tuple[str, str, int]]) -> GpuState:
    info = GpuInfo(0, "g", model, 304, 8, 32, 192 * 2**30, True)
    out, start = [], 0
    for uid, cls, n in slices:
        out.append(Slice(PodRef(uid, "ns", uid), cls, frozenset(range(start, start + n)), frozenset(), 2**30, 2**30))
        start += n
    return GpuState(info, frozenset(range(272, 304)), tuple(out))


def test_predict_counts_the_co_tenants_the_replica_has() -> None:
    gpu = _gpu("MI300X", [("me", "memory-bound", 64), ("a", "memory-bound", 32), ("b", "compute-bound", 32)])
    p = predict(INFERENCE, LLAMA, 7, [gpu], "me")
    assert p.co_tenants == CoTenants(1, 1) and p.cus == 64
    assert p.predicted_rps == pytest.approx(10.6 * 0.84) and p.met is True
    alone = predict(INFERENCE, LLAMA, 11, [_gpu("MI300X", [("me", "memory-bound", 64)])], "me")
    assert alone.predicted_rps == pytest.approx(10.6) and alone.met is False


def test_no_prediction_on_a_gpu_the_profile_was_not_measured_on() -> None:
    p = predict(INFERENCE, LLAMA, 7, [_gpu("MI325X", [("me", "memory-bound", 64)])], "me")
    assert p.predicted_rps is None and p.met is None


# --- properties over random policies and profiles --------------------------------------------------

def _policy(max_mb: int | None, max_cb: int | None, budget: float | None, mb_share: float, cb_share: float,
            mb_pen: float, cb_pen: float, rounding: str, min_cus: int, points: list[tuple[int, float]],
            cls: str) -> Policy:
    return parse_policy({
        "rounding": {"mode": rounding, "minComputeUnits": min_cus},
        "classes": {"maxMemoryBoundPerGpu": max_mb, "maxComputeBoundPerGpu": max_cb, "bandwidthBudget": budget,
                    "bandwidthShare": {"memory-bound": mb_share, "compute-bound": cb_share}},
        "interference": {"memoryBoundPenalty": mb_pen, "computeBoundPenalty": cb_pen},
        "profiles": {"p": {"class": cls, "minMemory": "1Gi",
                           "points": [{"computeUnits": c, "rps": r} for c, r in points]}}})


def _points(draw: st.DrawFn) -> list[tuple[int, float]]:
    cus = sorted(draw(st.sets(st.integers(8, 304), min_size=1, max_size=5)))
    rps = sorted(draw(st.lists(st.floats(0.5, 500), min_size=len(cus), max_size=len(cus))))
    return list(zip(cus, rps, strict=True))


policies = st.builds(
    _policy, st.sampled_from([None, 1, 2, 3]), st.sampled_from([None, 1, 2, 4]),
    st.sampled_from([None, 0.8, 1.0, 1.2, 2.0]), st.sampled_from([0.3, 0.5]), st.sampled_from([0.0, 0.1, 0.2]),
    st.sampled_from([0.0, 0.05, 0.13, 0.3]), st.sampled_from([0.0, 0.03, 0.1]),
    st.sampled_from(["balanced", "exact", "powerOfTwo"]), st.sampled_from([1, 8, 32]), st.composite(_points)(),
    st.sampled_from(["memory-bound", "compute-bound"]))


@settings(max_examples=150, deadline=None)
@given(policies, st.floats(0.1, 1.1))
def test_the_size_is_the_smallest_that_meets_the_target_beside_the_worst_co_tenancy(pol: Policy,
                                                                                    fraction: float) -> None:
    top = max(r.rps for r in pol.profiles["p"].points)
    target = top * fraction
    model = pol.models["MI300X"]
    usable = guaranteeable_cus(pol, model)
    sizes = sorted({c if not usable < c < 304 else 304 for c in (round_cus(pol, model, 304, w) for w in range(1, 305))})
    meets = [c for c in sizes if rps_within_budget(pol, "p", c)[0] >= target]
    if not meets:
        with pytest.raises(SliceRequestError):
            size_for_target(pol, "p", target)
        return
    s = size_for_target(pol, "p", target)
    assert s.cus == meets[0] and s.predicted_rps >= target
    assert s.predicted_rps == pytest.approx(profile_rps(pol.profiles["p"], s.cus) * (1 - s.loss))
    assert math.ceil(s.millis * 304 / 1000) == s.cus
