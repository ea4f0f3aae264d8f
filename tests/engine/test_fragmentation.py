"""Fragmentation-gradient placement (engine/fragmentation.py): FGD's measure on hand-worked nodes, the
host-CPU stranding term, candidate narrowing, the observed mix, and the engine's three verbs using it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.policy import Policy, parse_policy
from extender.core.requests import SliceRequest
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.fragmentation import (
    INFINITE,
    Kind,
    MixTable,
    Rows,
    WorkloadMix,
    best_placements,
    deltas,
    host_delta,
    joint_delta,
    kept_kinds,
    narrow,
    rows_from_columns,
    rows_from_states,
)
from extender.engine.scheduler import Engine
from extender.engine.vectorised import Columns
from tests.engine.nodes import engine_on

GIB = 2**30


def table(need: list[int], weight: list[float], cpu: list[int] | None = None, count: list[int] | None = None,
          cpu_per_gpu: float = 0.0) -> MixTable:
    k = len(need)
    return MixTable(1, np.array([need]), np.zeros(k, np.int64), np.array(count or [1] * k),
                    np.array(cpu or [0] * k), np.zeros(k, np.int64), np.array(weight), cpu_per_gpu)


def rows(free: list[list[int]], cpu: list[int] | None = None, total: int = 100) -> Rows:
    f = np.array(free)
    host = None if cpu is None else np.array(cpu)
    return Rows(np.ones(f.shape, np.bool_), np.zeros(f.shape, np.int64), np.full(f.shape, total), f,
                np.full(f.shape, total), f == total, np.full(f.shape, 10**12), host,
                None if host is None else np.full(len(cpu or []), 10**12))


def test_fgd_measure_on_a_hand_worked_node() -> None:
    # kinds: half a GPU (w .5) and a whole GPU (w .5). Node 0: one empty GPU, one half free.
    t = table([50, 100], [0.5, 0.5])
    r = rows([[100, 50], [100, 100]])
    need, whole, ok = np.full((2, 2), 50), np.zeros((2, 2), np.bool_), np.ones((2, 2), np.bool_)
    d = deltas(t, r, need, whole, ok, 0, 0, 0)
    # half a GPU on the empty GPU of node 0: no whole GPU is left there, so its 1 GPU free is fragment
    # for the whole kind (F 0.25 -> 0.5); on the half-free GPU it fills the fragment (F 0.25 -> 0)
    assert d[0].tolist() == pytest.approx([0.25, -0.25])
    rise, chosen = best_placements(t, r, need, whole, ok, 1, 0, 0, 0)
    assert rise.tolist() == pytest.approx([-0.25, 0.25]) and chosen[0].tolist() == [False, True]


@given(st.lists(st.integers(0, 100), min_size=4, max_size=4), st.integers(1, 60), st.integers(0, 4))
@settings(max_examples=60, deadline=None)
def test_one_gpu_rise_is_the_same_by_either_path(free: list[int], need: int, cpu: int) -> None:
    # deltas (one GPU at a time) and joint_delta (the GPUs taken together) are one measure, host included:
    # bind takes the GPUs whose rise filter and prioritize scored
    t = table([100, 40, 25, 10], [0.4, 0.3, 0.2, 0.1], cpu=[2, 1, 3, 0], count=[1, 2, 1, 1])
    r = rows([free[:2], free[2:]], cpu=[3, 6])
    n = np.full((2, 2), need)
    ok = r.free >= need
    d = deltas(t, r, n, np.zeros((2, 2), np.bool_), ok, 0, cpu, 0)
    for j in range(2):
        chosen = np.zeros((2, 2), np.bool_)
        chosen[:, j] = True
        joint = joint_delta(t, r, chosen, n, np.zeros((2, 2), np.bool_), 0, cpu, 0)
        for i in range(2):
            if ok[i, j]:
                assert joint[i] == pytest.approx(d[i, j])


def test_a_gpu_that_does_not_fit_is_never_chosen() -> None:
    t = table([50], [1.0])
    r = rows([[100, 50]])
    ok = np.array([[True, False]])
    d = deltas(t, r, np.full((1, 2), 50), np.zeros((1, 2), np.bool_), ok, 0, 0, 0)
    assert d[0, 1] == INFINITE and np.isfinite(d[0, 0])


def test_several_gpus_are_taken_together() -> None:
    # a kind wanting 2 whole GPUs: on a node with 3 empty GPUs, taking 2 strands the third for it
    t = table([100, 100], [0.5, 0.5], count=[2, 1])
    r = rows([[100, 100, 100]])
    rise, chosen = best_placements(t, r, np.full((1, 3), 100), np.ones((1, 3), np.bool_),
                                   np.ones((1, 3), np.bool_), 2, 0, 0, 0)
    assert chosen.sum() == 2 and rise[0] == pytest.approx(0.5 * 1)


def test_host_cpu_the_mix_needs_counts() -> None:
    # FGD: a kind that no longer fits the host's CPU cannot use any free GPU there
    t = table([50], [1.0], cpu=[10])
    r = rows([[100, 100]], cpu=[100])
    assert host_delta(t, r, 95, 0).tolist() == pytest.approx([2.0])
    assert host_delta(t, r, 50, 0).tolist() == pytest.approx([0.0])


def test_cpu_heavy_pods_go_where_cpu_is_plentiful() -> None:
    # beyond FGD: at 10 CPU per GPU, a pod asking 40 CPU with half a GPU strands GPUs on a CPU-poor node
    t = table([50], [1.0], cpu=[5], cpu_per_gpu=10.0)
    poor, rich = rows([[100, 100]], cpu=[20]), rows([[100, 100]], cpu=[400])
    args = (np.full((1, 2), 50), np.zeros((1, 2), np.bool_), np.ones((1, 2), np.bool_), 1, 0, 15, 0)
    on_poor, _ = best_placements(t, poor, *args)
    on_rich, _ = best_placements(t, rich, *args)
    assert on_rich[0] < on_poor[0]


def test_narrow_keeps_nodes_within_the_tolerance_and_at_least_min_nodes() -> None:
    rises = {"a": 0.0, "b": 0.04, "c": 0.2, "d": INFINITE}
    assert narrow(rises, 0.05, 1) == {"a", "b"}
    assert narrow(rises, 0.0, 1) == {"a"}
    assert narrow(rises, 0.0, 3) == {"a", "b", "c"}
    assert narrow({"a": 0.0, "b": 0.0}, 0.0, 1) == {"a", "b"}  # ties all pass
    assert narrow({"d": INFINITE}, 0.0, 1) == set()


def _req(millis: int, count: int = 1) -> SliceRequest:
    return SliceRequest("amd", millis, millis, GIB, GIB, count, "compute-bound")


def test_mix_counts_each_pod_once_and_changes_in_steps() -> None:
    mix = WorkloadMix(window=1600)
    for i in range(15):
        mix.observe(f"p{i}", _req(500), 1000, 0)
        mix.observe(f"p{i}", _req(500), 1000, 0)  # a retried pod
    assert mix.observed == 15 and mix.version == 4  # snapshots after 1, 2, 4 and 8 pods
    mix.observe("p15", _req(250), 1000, 0)
    assert mix.version == 5
    policy = _policy()
    t = mix.table(policy, [("MI300X", 304, 8)])
    assert t.weight.sum() == pytest.approx(1.0) and sorted(t.weight.tolist()) == pytest.approx([1 / 16, 15 / 16])
    assert t.cpu_per_gpu == pytest.approx(1000 / (15 / 16 * 0.5 + 1 / 16 * 0.25))


def test_a_rare_shape_is_kept_whatever_host_sizes_it_comes_with() -> None:
    # 10 host sizes of a half GPU, twice each, and three 8-GPU pods with host sizes of their own: keeping
    # 4 kinds by count alone would keep only halves; every shape is kept first, with its count folded in
    counts = Counter({Kind(_req(500), 1000 * i, 0): 2 for i in range(10)})
    counts.update({Kind(_req(1000, 8), 64000 + i, 0): 1 for i in range(3)})
    kept = dict(kept_kinds(counts, 4))
    assert len(kept) == 4 and sum(kept.values()) == 23
    assert [c for k, c in kept.items() if k.req.count == 8] == [3]


def _policy(**scoring: object) -> Policy:
    return parse_policy({"rounding": {"mode": "exact", "minComputeUnits": 1}, "burst": {"sharedFraction": 0.0},
                         "classes": {"maxMemoryBoundPerGpu": None},
                         "scoring": {"fragmentation": {"enabled": True}, **scoring}}, "test")


def _engine(policy: Policy, nodes: int = 2, gpus: int = 2) -> Engine:
    return engine_on(policy, [f"n{i}" for i in range(nodes)], gpus)


def _pod(uid: str, millis: int) -> PodView:
    return PodView(uid, "default", uid, annotations={"gpuslice.io/compute": f"{millis}m",
                                                      "gpuslice.io/memory": "1Gi"}, cpu_millis=1000)


def _place(engine: Engine, uid: str, millis: int) -> tuple[str, list[int]]:
    pod = _pod(uid, millis)
    engine.cluster.add_pod(pod)  # type: ignore[attr-defined]
    passed = engine.filter(pod, names=["n0", "n1"]).passed
    scores = dict(engine.prioritize(pod, names=passed))
    node = max(passed, key=lambda n: (scores[n], n == "n0"))
    assert engine.bind("default", uid, uid, node) == ""
    a = engine.assignment_for(uid)
    assert a is not None
    return node, [g.index for g in a.gpus]


def test_engine_fills_fragments_and_keeps_whole_gpus() -> None:
    engine = _engine(_policy(candidates={"enabled": True, "tolerance": 0.0}))
    for i in range(40):  # the mix: mostly whole GPUs, some halves
        engine.observe_request(_pod(f"seen{i}", 1000 if i % 4 else 500), _req(1000 if i % 4 else 500),
                               engine.policies.current)
    first = _place(engine, "a", 500)
    second = _place(engine, "b", 500)
    assert second == first  # the second half fills the first one's GPU, the other GPUs stay whole
    whole = _place(engine, "c", 1000)
    assert whole[1] != first[1] or whole[0] != first[0]


def test_filter_narrows_to_candidates_and_says_why() -> None:
    engine = _engine(_policy(candidates={"enabled": True, "tolerance": 0.0, "minNodes": 1}))
    for i in range(40):
        engine.observe_request(_pod(f"seen{i}", 1000 if i % 4 else 500), _req(1000 if i % 4 else 500),
                               engine.policies.current)
    node, _ = _place(engine, "a", 500)
    result = engine.filter(_pod("b", 500), names=["n0", "n1"])
    assert result.passed == [node]
    other = "n1" if node == "n0" else "n0"
    assert "expected fragmentation" in result.failed[other]
    wide = engine.filter(_pod("b", 500), names=["n0", "n1"], narrow_candidates=False)
    assert sorted(wide.passed) == ["n0", "n1"] and wide.rises[node] < wide.rises[other]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([250, 500, 750, 1000]), min_size=0, max_size=8),
       st.sampled_from([250, 500, 1000]))
def test_rows_from_the_index_match_rows_from_node_states(placed: list[int], millis: int) -> None:
    """The two ways of reading a node (filter/prioritize from the GPU index, bind from the node state)
    give the same rows, so bind takes the GPUs the scores were for."""
    engine = _engine(_policy(), nodes=1, gpus=4)
    policy = engine.policies.current
    for i, m in enumerate(placed):
        pod = _pod(f"p{i}", m)
        engine.cluster.add_pod(pod)  # type: ignore[attr-defined]
        if engine.filter(pod, names=["n0"]).passed:
            engine.bind("default", pod.name, pod.uid, "n0")
    req = _req(millis)
    cols = Columns(req, policy, engine.ledger.gpu_index)
    a, need_a, whole_a, ok_a = rows_from_columns(cols, cols.slots(["n0"]).slots, None)
    state = engine.ledger.node("n0")
    assert state is not None
    ids = {k: i for i, k in enumerate(engine.ledger.gpu_index.model_keys)}
    b, need_b, whole_b, ok_b = rows_from_states(req, [state], policy, ids, None)
    w = len(state.gpus)  # the index pads every row to its width with invalid GPUs
    assert not a.valid[:, w:].any()
    for field in ("valid", "model", "total", "free", "usable", "empty", "mem_free"):
        assert np.array_equal(getattr(a, field)[:, :w], getattr(b, field)), field
    for x, y in ((need_a, need_b), (whole_a, whole_b), (ok_a, ok_b)):
        assert np.array_equal(x[:, :w], y)


def test_host_room_is_counted_from_the_pods_on_each_node() -> None:
    cluster = MemoryCluster()
    cluster.add_node(NodeView("n0", allocatable={"cpu": "8", "memory": "16Gi"}))
    cluster.add_node(NodeView("n1"))
    pod = PodView("u", "default", "p", cpu_millis=1500, memory_bytes=GIB)
    cluster.add_pod(pod)
    cluster.bind_pod(pod, "n0", {})
    cpu, mem = cluster.host_free(["n0", "n1"])
    assert cpu[0] == 6500 and mem[0] == 15 * GIB and cpu[1] > 10**15


def test_prioritize_reuses_the_rises_filter_worked_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """kube-scheduler asks prioritize about the nodes filter passed, right after it: with nothing written
    to the index between, their rises are filter's, not worked out again (they were, under another key)."""
    engine = _engine(_policy(candidates={"enabled": True, "tolerance": 1.0}), nodes=3)
    calls: list[list[str]] = []
    work = engine._rises

    def counted(*args: object, **kwargs: object) -> np.ndarray:
        calls.append(list(args[3]))  # type: ignore[arg-type]
        return work(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "_rises", counted)
    pod = _pod("a", 500)
    passed = engine.filter(pod, names=["n0", "n1", "n2"]).passed
    scores = engine.prioritize(pod, names=passed)
    assert len(calls) == 1 and sorted(n for n, _ in scores) == sorted(passed)


def test_a_reloaded_pack_tie_break_applies_to_the_next_answer() -> None:
    # packTieBreak adds its value per free GPU to every node's rise; a policy reload that changes it must
    # change the next filter's rises (the remembered rises are keyed by the policy's version)
    doc = {"rounding": {"mode": "exact", "minComputeUnits": 1}, "burst": {"sharedFraction": 0.0},
           "classes": {"maxMemoryBoundPerGpu": None},
           "scoring": {"fragmentation": {"enabled": True, "packTieBreak": 0.0}}}
    engine = _engine(parse_policy(doc, "test"))
    for i in range(40):
        engine.observe_request(_pod(f"seen{i}", 500), _req(500), engine.policies.current)
    pod = _pod("a", 500)
    before = engine.filter(pod, names=["n0", "n1"], narrow_candidates=False).rises
    doc["scoring"]["fragmentation"]["packTieBreak"] = 0.25  # type: ignore[index]
    assert engine.policies.update_text(yaml.safe_dump(doc))
    after = engine.filter(pod, names=["n0", "n1"], narrow_candidates=False).rises
    assert after.keys() == before.keys() == {"n0", "n1"}
    for name in after:  # both nodes hold 2 free GPUs
        assert after[name] == pytest.approx(before[name] + 0.25 * 2)


@pytest.mark.parametrize("setting, value", [("hostCpu", 0.0), ("maxKinds", 1), ("weighting", "gpus"),
                                            ("window", 100)])
def test_a_reloaded_mix_setting_applies_to_the_next_answer(setting: str, value: object) -> None:
    # the mix's own settings (which kinds it keeps, how it weighs them, host stranding, its window) come from
    # the policy in force, as packTieBreak does: an engine that kept its start-up values ignored a reload
    doc = {"rounding": {"mode": "exact", "minComputeUnits": 1}, "burst": {"sharedFraction": 0.0},
           "classes": {"maxMemoryBoundPerGpu": None},
           "scoring": {"fragmentation": {"enabled": True}}}
    fresh_doc = {**doc, "scoring": {"fragmentation": {"enabled": True, setting: value}}}
    engine, fresh = _engine(parse_policy(doc, "test")), _engine(parse_policy(fresh_doc, "test"))
    assert engine.policies.update_text(yaml.safe_dump(fresh_doc))
    for e in (engine, fresh):
        for i in range(40):
            millis, cpu = (250, 1000) if i % 3 else (750, 64000)  # two kinds: maxKinds and weighting tell
            p = PodView(f"seen{i}", "default", f"seen{i}", annotations={"gpuslice.io/compute": f"{millis}m",
                                                                      "gpuslice.io/memory": "1Gi"}, cpu_millis=cpu)
            e.observe_request(p, _req(millis), e.policies.current)
    mix, want = engine.fragmentation.mix, fresh.fragmentation.mix
    assert (mix.window, mix.max_kinds, mix.weighting, mix.host_cpu) == (
        want.window, want.max_kinds, want.weighting, want.host_cpu)
    pod = _pod("a", 500)
    got = engine.filter(pod, names=["n0", "n1"], narrow_candidates=False).rises
    assert dict(got.items()) == dict(fresh.filter(pod, names=["n0", "n1"], narrow_candidates=False).rises.items())


def test_a_mix_reconfigured_after_pods_were_seen_takes_a_new_snapshot_at_once() -> None:
    mix = WorkloadMix(window=1600)
    for i in range(8):
        mix.observe(f"p{i}", _req(250 if i % 2 else 750), 1000, GIB)
    version = mix.version
    assert len(mix._snapshot) == 2
    mix.configure(1600, 1, "pods", 1.0)  # keep one kind: the snapshot is taken again now, not at the next step
    assert mix.version == version + 1 and len(mix._snapshot) == 1
    mix.configure(1600, 1, "pods", 1.0)  # the same settings again: nothing changes
    assert mix.version == version + 1
