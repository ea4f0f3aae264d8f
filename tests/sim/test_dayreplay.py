"""`gpuslice simulate --demand`: a day of demand replayed with static peak sizing, static average sizing
and right-sizing through the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from extender.core.policy import load_policy
from extender.core.rightsizing import Fleet, sla_ladder
from extender.core.sizing import gpu_share
from extender.sim.dayreplay import (
    DAY,
    PLACE,
    READY,
    REMOVE,
    DayReplay,
    Timeline,
    compare,
    replay_day,
    schedule,
    services,
    victim,
)
from extender.sim.demand import DemandCurve, per_minute, rate
from extender.sim.runs import policy_spec
from extender.sim.scenario import ScenarioError, load_scenario, scenario_nodes, scenario_pods

ROOT = Path(__file__).resolve().parents[2]
POLICY = load_policy(ROOT / "policies" / "mi300x-inference.yaml")
LADDER = sla_ladder(POLICY, "llama-3.1-8b", POLICY.profiles["llama-3.1-8b"].minMemory)


def test_the_diurnal_curve_swings_between_peak_and_trough() -> None:
    c = DemandCurve(swing=4, peakHour=14)
    assert rate(c, 40.0, 14.0) == pytest.approx(40.0)
    assert rate(c, 40.0, 2.0) == pytest.approx(10.0)
    assert min(per_minute(c, 40.0, 1440, 1)) == pytest.approx(10.0, abs=1e-6)  # no noise: exactly the curve
    noisy = per_minute(DemandCurve(noise=0.05), 40.0, 1440, 1)
    assert noisy == per_minute(DemandCurve(noise=0.05), 40.0, 1440, 1) and max(noisy) > 40.0


def test_demand_needs_a_service_sized_from_req_s(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text(yaml.safe_dump({"nodes": [{"name": "n"}], "pods": [
        {"name": "x", "compute": "100m", "memory": "8Gi", "demand": {"swing": 4}}]}))
    with pytest.raises(ScenarioError, match="demand needs profile"):
        load_scenario(bad)


def test_a_slice_change_rolls_one_pod_at_a_time() -> None:
    tl = Timeline([(0, Fleet(2, 64, 1), 10.6), (30, Fleet(2, 32, 1), 7.2), (60, Fleet(3, 32, 1), 7.2),
                   (90, Fleet(1, 32, 1), 7.2)])
    svc = services(load_scenario("seed")[0], POLICY, 1)[0]
    created, actions = schedule(svc, tl, 100, rollout=2)
    assert created == [100, 101, 102, 103, 104]
    assert sorted(actions) == sorted([
        (0, PLACE, 100), (0, PLACE, 101), (0, READY, 100), (0, READY, 101),
        (30, PLACE, 102), (32, READY, 102), (32, REMOVE, 100),  # one new pod serves, then one old goes
        (32, PLACE, 103), (34, READY, 103), (34, REMOVE, 101),
        (60, PLACE, 104), (62, READY, 104),  # one more replica at the same slice: added, nothing re-created
        (90, REMOVE, 103), (90, REMOVE, 104)])  # fewer replicas: the newest go


def test_a_slice_change_that_adds_pods_keeps_the_old_ones_until_enough_serve() -> None:
    # maxUnavailable 0: 1 pod -> 2 smaller ones; the old pod serves until both new ones do
    tl = Timeline([(0, Fleet(1, 256, 1), 13.5), (30, Fleet(2, 64, 1), 8.9)])
    svc = services(load_scenario("seed")[0], POLICY, 1)[0]
    created, actions = schedule(svc, tl, 100, rollout=2)
    assert created == [100, 101, 102]
    assert sorted(actions) == sorted([
        (0, PLACE, 100), (0, READY, 100),
        (30, PLACE, 101), (32, READY, 101), (32, PLACE, 102), (34, READY, 102), (34, REMOVE, 100)])


def test_right_sizing_follows_demand_without_missing_the_sla(tmp_path: Path) -> None:
    scenario = tmp_path / "day.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "day", "nodes": [{"name": "n", "count": 1, "gpus": 8}],
        "pods": [{"name": "chat", "replicas": 4, "profile": "llama-3.1-8b", "targetRps": 8,
                  "demand": {"swing": 4, "peakHour": 12, "noise": 0.05}},
                 {"name": "emb", "compute": "100m", "memory": "8Gi", "class": "compute-bound"}]}))
    sc, _ = load_scenario(scenario)
    out = compare(sc, POLICY, policy_spec("g", POLICY, bind="greedy"), seed=3)
    runs = out["runs"]
    peak, avg, right = runs["static-peak"], runs["static-average"], runs["rightsize"]
    assert peak["slaMinutesMissed"] == 0 and right["slaMinutesMissed"] == 0
    assert avg["slaMinutesMissed"] > 60  # sized for the average, the afternoon is missed
    assert right["gpuHours"] < peak["gpuHours"] and right["sliceGpuHours"] < peak["sliceGpuHours"]
    assert right["changes"] > 0 and peak["changes"] == 0 == avg["changes"]
    assert right["podsNeverPlaced"] == 0
    split = out["gpuHoursBreakdown"]
    r = split["rightsize"]
    # each cause only adds: the rule alone <= + headroom <= + window <= the controller's fleets
    assert 0 < r["demandFollowed"] <= r["withHeadroom"] <= r["withWindow"] <= r["fleet"]
    assert split["static-peak"]["fleet"] > r["fleet"]
    for name, run in runs.items():  # the GPUs placed: the lone compute-bound pod's plus what the services add
        assert split[name]["placed"] == run["gpuHours"]
        assert split[name]["addedByServices"] == round(run["gpuHours"] - split[name]["fixedAlone"], 1)
    assert split["rightsize"]["fixedAlone"] == 24.0  # the one embedding pod, on one GPU all day
    # the same causes packed fresh, in GPUs with a tenant: each only adds, and the history is the rest
    assert 0 < r["packedDemandFollowed"] <= r["packedWithHeadroom"] <= r["packedWithWindow"] <= r["packedFleet"]
    assert r["history"] == round(r["placed"] - r["packedFleet"], 1)
    # a static fleet is placed once, in the order a fresh packing uses: it has no history
    assert split["static-peak"]["packedFleet"] == peak["gpuHours"] and split["static-peak"]["history"] == 0.0
    # the floor: no sizer carries the demand on fewer GPUs; the headroom and keeping the pods without a
    # curve where they are only add; the engine's fresh packing of the rule's fleets is no better
    assert 0 < r["floorDemand"] <= r["floorWithHeadroom"] <= r["packedWithHeadroom"]
    assert r["floorDemand"] <= r["floorPinnedDemand"] <= r["floorPinnedWithHeadroom"] <= r["packedWithHeadroom"]
    assert r["floorWithHeadroom"] <= r["floorPinnedWithHeadroom"]
    # the rule with no anti-flapping (each minute on the last minute's demand) changes far more often
    # than the controller; what its fleets cost placed and packed fresh is reported beside them
    assert r["reactiveChanges"] > 2 * right["changes"]
    assert r["reactivePlaced"] > 0 and r["reactivePacked"] > 0 and r["reactiveSlaMinutesMissed"] >= 0
    # the what-if that re-places lone pods: never more GPUs than the day as placed, and no minute missed
    assert r["consolidatedPlaced"] <= r["placed"] and r["consolidatedSlaMinutesMissed"] == 0
    assert r["consolidationMoves"] >= 0


def test_gpu_share_is_the_largest_per_gpu_limit_a_pod_uses() -> None:
    model = POLICY.models["MI300X"]
    mem = POLICY.profiles["llama-3.1-8b"].minMemory
    # two memory-bound tenants per GPU: any slice short of a lone one takes half a GPU
    assert gpu_share(POLICY, model, "memory-bound", 32, mem) == 0.5
    assert gpu_share(POLICY, model, "memory-bound", 128, mem) == 0.5
    assert gpu_share(POLICY, model, "memory-bound", 256, mem) == 1.0  # leaves no room for the smallest slice
    assert gpu_share(POLICY, model, "memory-bound", 32, model.memory) == 1.0  # all the memory
    assert gpu_share(POLICY, model, "compute-bound", 32, 8 * 2**30) == 0.5  # maxComputeBoundPerGpu: 2


def test_consolidate_moves_a_lone_pod_beside_other_tenants(tmp_path: Path) -> None:
    # three 64-CU LLM pods: two share a GPU, the third opens another; once one of the pair goes, two GPUs
    # hold a pod each. Re-placing the lone pods puts one beside the other: one GPU.
    scenario = tmp_path / "three.yaml"
    target = float(LADDER.target_text(64))
    scenario.write_text(yaml.safe_dump({
        "name": "three", "nodes": [{"name": "n", "count": 1, "gpus": 8}],
        "pods": [{"name": "chat", "replicas": 3, "profile": "llama-3.1-8b", "targetRps": target}]}))
    sc, _ = load_scenario(scenario)
    replay = DayReplay(scenario_nodes(sc), scenario_pods(sc), policy_spec("g", POLICY, bind="greedy"))
    replay.attempts = 0
    assert all(replay.place(i) for i in range(3))
    assert replay.gpus_used()[0] == 2
    pair = [i for i in range(3) if replay.co_tenants(i) == 1]
    replay.remove(pair[0])
    assert replay.gpus_used()[0] == 2
    lone = [i for i in range(3) if i != pair[0]]
    assert replay.consolidate(lone) == 1
    assert replay.gpus_used()[0] == 1 and all(replay.co_tenants(i) == 1 for i in lone)
    assert replay.consolidate(lone) == 0  # nobody alone: nothing moves


def _two_services(tmp_path: Path) -> tuple:
    scenario = tmp_path / "two.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "two", "nodes": [{"name": "n", "count": 1, "gpus": 8}],
        "pods": [{"name": name, "replicas": 3, "profile": "llama-3.1-8b", "targetRps": 8,
                  "demand": {"swing": 2, "peakRps": 4.0}} for name in ("x", "y")]}))
    sc, _ = load_scenario(scenario)
    return sc, services(sc, POLICY, 1)


def _down_to_two(svc, need: float) -> Timeline:
    target = float(LADDER.target_text(128))
    return Timeline([(0, Fleet(3, 128, svc.memory), target), (60, Fleet(2, 128, svc.memory), target)],
                    need=[need] * DAY)


@pytest.mark.parametrize("bind", ["greedy", "solver"])
def test_repack_moves_a_pod_left_alone_beside_another_and_frees_its_gpu(tmp_path: Path, bind: str) -> None:
    # x0 x1 | x2 y0 | y1 y2 on three GPUs; at minute 60 both fleets go down to two pods (the newest go): x2 and
    # y2, leaving y0 and y1 alone on a GPU each. Fifteen minutes later (the minimum interval) the controller
    # deletes one of them and its replacement goes beside the other: two GPUs, for the rest of the day.
    sc, svcs = _two_services(tmp_path)
    spec = policy_spec("g", POLICY, bind=bind)
    plans = {s.name: _down_to_two(s, 0.5 * LADDER.at(128).rps) for s in svcs}
    still = replay_day(sc, POLICY, spec, svcs, plans, 2)
    moved = replay_day(sc, POLICY, spec, svcs, plans, 2, repack=True)
    assert still["repacks"] == 0 and moved["repacks"] == 1
    assert still["gpusEvery15Min"][5:] == [3] * (len(still["gpusEvery15Min"]) - 5)
    # minute 75: the replacement is placed beside the other pod; from minute 90 the day runs on two GPUs
    assert moved["gpusEvery15Min"][6:] == [2] * (len(moved["gpusEvery15Min"]) - 6)
    assert moved["slaMinutesMissed"] == 0


def test_repack_leaves_a_fleet_whose_other_pods_fall_short_of_the_need(tmp_path: Path) -> None:
    sc, svcs = _two_services(tmp_path)
    spec = policy_spec("g", POLICY, bind="greedy")
    plans = {s.name: _down_to_two(s, LADDER.at(128).rps + 0.01) for s in svcs}  # one pod alone cannot carry it
    assert replay_day(sc, POLICY, spec, svcs, plans, 2, repack=True)["repacks"] == 0


def test_a_scale_down_deletes_the_pod_the_replicaset_controller_ranks_first() -> None:
    # kube-controller-manager's ranking: unscheduled, then not ready, then the newest. The replay used to
    # delete a rollout's old pods oldest first, and a scale-down's by index whether they served or not.
    assert victim({0, 1, 2}, serving={0, 1, 2}, pending=[]) == 2
    assert victim({0, 1, 2}, serving={0, 2}, pending=[]) == 1  # not ready yet
    assert victim({0, 1, 2}, serving={0, 2}, pending=[0]) == 0  # never scheduled


def test_repack_restarts_a_one_pod_fleet_left_alone_and_it_serves_throughout(tmp_path: Path) -> None:
    # x0 y0 | y1 on two GPUs; at minute 60 y rolls from 2 x 64 CUs to 1 x 128: the new y2 goes beside y1,
    # then y0 and y1 go. x0 and y2 are each alone. A one-pod fleet is restarted (its rolling update surges),
    # never deleted: the move puts one beside the other, one GPU, and no minute without a serving pod.
    sc, svcs = _two_services(tmp_path)
    spec = policy_spec("g", POLICY, bind="greedy")
    x, y = svcs
    need = 0.5 * LADDER.at(64).rps
    plans = {x.name: Timeline([(0, Fleet(1, 128, x.memory), float(LADDER.target_text(128)))], need=[need] * DAY),
             y.name: Timeline([(0, Fleet(2, 64, y.memory), float(LADDER.target_text(64))),
                               (60, Fleet(1, 128, y.memory), float(LADDER.target_text(128)))], need=[need] * DAY)}
    still = replay_day(sc, POLICY, spec, svcs, plans, 2)
    moved = replay_day(sc, POLICY, spec, svcs, plans, 2, repack=True)
    assert still["repacks"] == 0 and still["gpusEvery15Min"][-1] == 2
    assert moved["repacks"] == 1 and moved["gpusEvery15Min"][6:] == [1] * (len(moved["gpusEvery15Min"]) - 6)
    assert moved["slaMinutesMissed"] == 0
