from __future__ import annotations

import math

import pytest

from extender.core.policy import load_policy
from extender.sim import sizing
from extender.sim.gpumodels import builtin_policy_path

POLICY = load_policy(builtin_policy_path("mi300x-inference"))
GB60 = 60 * 10**9


def test_sizing_budgets_the_worst_co_tenancy_the_class_rules_allow() -> None:
    assert sizing.worst_neighbours(POLICY, "memory-bound", GB60, "MI300X") == (1, 2)
    s = sizing.size(POLICY, "llama-3.1-8b", 8, "memory-bound", GB60)
    assert s.penalty == pytest.approx(0.13 + 2 * 0.03)
    assert s.cus == 64 and s.predicted_rps == pytest.approx(10.6 * (1 - s.penalty))
    small = sizing.size(POLICY, "llama-3.1-8b", 2, "memory-bound", GB60)
    assert small.cus == 32  # the policy's minimum and balanced multiple


def test_infeasible_target_is_reported_not_capped() -> None:
    s = sizing.size(POLICY, "llama-3.1-8b", 13, "memory-bound", GB60)
    assert s.cus is None and "reaches at most" in s.reason and "19%" in s.reason


def test_two_memory_bound_tenants_lose_13_percent_each() -> None:
    assert sizing.penalty(POLICY, 1, 0) == pytest.approx(0.13)
    assert sizing.predicted_rps(POLICY, "llama-3.1-8b", 128, 1, 0) == pytest.approx(13.5 * 0.87)


@pytest.mark.parametrize("cus", [32, 64, 96, 128, 160, 304])
def test_millis_turn_back_into_the_same_cus(cus: int) -> None:
    m = sizing.millis_for_cus(cus, 304)
    assert math.ceil(m * 304 / 1000) == cus
