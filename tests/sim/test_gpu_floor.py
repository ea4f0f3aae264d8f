"""The fewest-GPUs floor (sim.gpu_floor): GPU patterns from the fit rule, exact answers on cases worked
by hand, a day's sum that equals its minutes', and never more GPUs than the engine packs the rule's
fleets on."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from extender.core.fit import Room, Rules, fits
from extender.core.inventory import GpuInfo
from extender.core.ledger import GpuState, burst_region
from extender.core.policy import load_policy
from extender.core.rightsizing import Fleet, plan_fleet
from extender.sim.dayreplay import _pack, floor_of, services
from extender.sim.gpu_floor import Followed, GpuFloor, Tenant, _adds, patterns
from extender.sim.runs import policy_spec
from extender.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
POLICY = load_policy(ROOT / "policies" / "mi300x-inference.yaml")
RULES = Rules.from_policy(POLICY)
MEM = POLICY.profiles["llama-3.1-8b"].minMemory
LLAMA = Followed("chat", "memory-bound", MEM, "llama-3.1-8b", (32, 64, 96, 128, 224, 256))
CB = Tenant("compute-bound", 32, 8 * 2**30, 8 * 2**30)


def _empty() -> Room:
    model = POLICY.models["MI300X"]
    info = GpuInfo(index=0, id="g", model="MI300X", computeUnits=model.computeUnits, xcds=model.xcds,
                   shaderEngines=model.shaderEngines, memoryBytes=model.memory, healthy=True)
    return GpuState(info, burst_region(info, POLICY.burst.sharedFraction)).room(POLICY.overcommit.memory, RULES)


def test_every_pattern_is_a_gpu_the_fit_rule_accepts_and_none_is_missed() -> None:
    room = _empty()
    kinds = [CB, Tenant("memory-bound", 128, MEM, MEM), Tenant("memory-bound", 96, MEM, MEM)]
    found = set(patterns(room, kinds, RULES))
    for pat in found:
        r = room
        for t in pat:
            assert fits(r, t.demand, RULES)
            r = _adds(r, t, RULES)
    # closed: a pattern plus any kind the rule accepts is a pattern too (nothing is missed)
    for pat in found | {()}:
        r = room
        for t in pat:
            r = _adds(r, t, RULES)
        for k in kinds:
            if fits(r, k.demand, RULES):
                assert tuple(sorted(pat + (k,))) in found
    # the MI300X policy: two memory-bound at most, and beside two compute-bound only one (bandwidth 1.4 > 1.2)
    assert max(sum(t.workload_class == "memory-bound" for t in p) for p in found) == 2
    assert not any(sum(t == CB for t in p) == 2 and sum(t.workload_class == "memory-bound" for t in p) == 2
                   for p in found)


def test_the_floor_on_cases_worked_by_hand() -> None:
    floor = GpuFloor(POLICY, _empty(), [], [LLAMA], max_gpus=4)
    pair = 13.5 * (1 - POLICY.interference.memoryBoundPenalty)  # a 128-CU pod beside another memory-bound one
    assert floor.gpus([2 * pair - 0.01]) == 1  # two 128-CU pods share one GPU
    assert floor.gpus([2 * pair + 0.01]) == 2  # past what they carry: a second GPU
    assert floor.gpus([4 * pair + 0.01]) == 3  # past two GPUs of pairs: a third
    # two compute-bound pods kept on one GPU: one memory-bound pod beside them, losing 2 x 3%
    beside = 13.5 * (1 - 2 * POLICY.interference.computeBoundPenalty)
    kept = GpuFloor(POLICY, _empty(), [CB, CB], [LLAMA], max_gpus=1, pinned=[(CB, CB)])
    assert kept.gpus([beside - 0.01]) == 1 and kept.gpus([beside + 0.01]) is None


def test_a_days_floor_is_the_sum_of_its_minutes() -> None:
    floor = GpuFloor(POLICY, _empty(), [CB, CB, CB], [LLAMA, Followed("rag", "memory-bound", MEM, "llama-3.1-8b",
                                                                       (32, 64, 128))], max_gpus=8)
    rng = random.Random(5)
    demands = [[max(0.1, 20 + 15 * rng.random()) for _ in range(40)], [5 + 20 * rng.random() for _ in range(40)]]
    per_minute = sum(floor.gpus([d[m] for d in demands]) or 0 for m in range(40))
    assert floor.day(demands) == round(per_minute / 60, 1)


@pytest.mark.parametrize("pinned", [False, True])
def test_the_engine_never_packs_the_rules_fleets_on_fewer_gpus(pinned: bool) -> None:
    scenario, _ = load_scenario("seed")
    spec = policy_spec("g", POLICY, bind="greedy")
    svcs = services(scenario, POLICY, 1)
    floor = floor_of(scenario, POLICY, spec, svcs, pinned=pinned)
    rs = POLICY.rightsizing
    for minute in (0, 420, 840, 1200):
        need = [s.day[minute] * (1 + rs.headroom) for s in svcs]
        fleets = tuple(Fleet(*plan_fleet(s.ladder, n, rs.minReplicas, rs.maxReplicas), s.memory)
                       for s, n in zip(svcs, need, strict=True))
        packed = _pack(scenario, spec, svcs, fleets, "least", 5.0, 1)
        assert floor.gpus(need) <= packed, minute


def test_only_the_patterns_no_other_does_better_than_are_kept() -> None:
    # alone, a 128-CU LLM pod serves as much as any larger slice and more than any smaller one: with no
    # other tenant to fit beside, the one- and two-pod GPUs of 128 CUs are all a sizer ever needs
    sizes = GpuFloor(POLICY, _empty(), [], [LLAMA], max_gpus=2)
    assert [[t.cus for t in p] for p in sizes.patterns] == [[128], [128, 128]]
    # beside a compute-bound pod the two LLM pods must leave it room: 96 + 128 (+ 32) of 272 CUs
    beside = GpuFloor(POLICY, _empty(), [CB], [LLAMA], max_gpus=2)
    with_cb = sorted([t.cus for t in p if t != CB] for p in beside.patterns if CB in p)
    assert with_cb == [[], [], [96, 128], [128], [128]]  # one, two compute-bound pods; 1 + 2 LLM; 1 + 1; 2 + 1
    # two services of one profile and memory share the slots of one kind
    twins = GpuFloor(POLICY, _empty(), [], [Followed("a", "memory-bound", MEM, "llama-3.1-8b", (128,)),
                                           Followed("b", "memory-bound", MEM, "llama-3.1-8b", (128,))], max_gpus=2)
    assert twins.gpus([11.0, 11.0]) == 1 and twins.gpus([12.0, 12.0]) == 2
