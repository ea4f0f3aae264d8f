"""The `waste` count of a part-used GPU (scoring.fragmentation.remainders, engine/fragmentation.py
final_waste): hand-worked values, the choice it changes from FGD's, and the properties the remembered
rises rest on (one measure by either path; remembered rises are the rises worked out afresh)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.engine.cluster import MemoryCluster, NodeView
from extender.engine.fragmentation import (
    MixTable,
    Rows,
    best_placements,
    deltas,
    final_waste,
    joint_delta,
    node_basis,
)
from extender.engine.placement import fit_key
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from tests.engine.test_fragmentation import _policy, rows, table
from tests.engine.test_fragmentation_memo import GIB, NODES, _rows_and_mix, afresh, gpu_rows, pod_of


def wasteful(t: MixTable, cus: int = 100) -> MixTable:
    """The table with the `waste` count on (what WorkloadMix.table builds for `remainders: waste`)."""
    models = np.array([cus])
    return replace(t, waste=final_waste(t, models), model_cus=models)


def test_final_waste_on_a_hand_worked_mix() -> None:
    # kinds on a 100-CU GPU: 30 CUs (w .25), 70 CUs (w .25), a whole GPU (w .5). Lone part-GPU pods leave 70
    # (the 30s) and 30 (the 70s), each as often as its pod arrives; a 70 filled by a 30 leaves 40, x as often:
    # the 30s fill a 70 at rho .25 / (.25 + x + .25), the 70s at 1, so x = .25 rho / (1 + rho), that is
    # x^2 + .75 x - .0625 = 0.
    w = final_waste(table([30, 70, 100], [0.25, 0.25, 0.5]), np.array([100]))[0]
    x = (-0.75 + np.sqrt(0.75**2 + 4 * 0.0625)) / 2
    assert w[10] == pytest.approx(0.10)  # nothing fits 10 CUs: all of it stays unused
    # 30..39 free: only the 30s fit, and the only remainders competing for them are the 70s' 30s, which
    # arrive as often as the 30s: rho 1, filled for sure
    assert w[30] == pytest.approx(0.0) and w[35] == pytest.approx(0.05)
    # 40..69: the 40s compete too: the 30s fill one at rho .25 / (.25 + x)
    rho = 0.25 / (0.25 + x)
    assert w[45] == pytest.approx((1 - rho) * 0.45 + rho * w[15])
    assert w[40] == pytest.approx((1 - rho) * 0.40 + rho * 0.10)
    # 70: a 30 (rho .25 / (.5 + x)) or a 70 (rho 1) fills it for sure
    rho30 = 0.25 / (0.5 + x)
    assert w[70] == pytest.approx((rho30 * w[40] + 1.0 * w[0]) / (1 + rho30))
    assert w[100] == 0.0  # an empty GPU is taken whole, or by a part the mix fills


def test_a_pod_waits_for_its_common_partner_instead_of_leaving_a_sliver() -> None:
    # The openb case in small: a 47-CU pod beside a lone 32-CU pod leaves 21 CUs, which only the rare
    # 16-CU pods fit, and they have the 19s the common 81-CU pods leave to fill first; a lone 47 leaves 53,
    # which the common 47s fit. Whole GPUs (w .38) cannot use either remainder, so FGD pairs the 47 with the
    # 32 (it shrinks the remainder they cannot use); the waste count takes the empty GPU, where the remainder
    # will be filled.
    t = table([47, 32, 65, 81, 16, 100], [0.30, 0.10, 0.10, 0.10, 0.02, 0.38])
    r = rows([[68, 100]])
    need, whole, ok = np.full((1, 2), 47), np.zeros((1, 2), np.bool_), np.ones((1, 2), np.bool_)
    _, fgd = best_placements(t, r, need, whole, ok, 1, 0, 0, 0)
    _, waste = best_placements(wasteful(t), r, need, whole, ok, 1, 0, 0, 0)
    assert fgd[0].tolist() == [True, False] and waste[0].tolist() == [False, True]


def test_a_whole_node_still_costs_what_fgd_says() -> None:
    # Multi-GPU kinds keep FGD's term: breaking a node of two empty GPUs strands both for a 2-GPU kind
    t = table([50, 100], [0.5, 0.5], count=[1, 2])
    r = rows([[100, 100], [50, 100]])
    need, whole, ok = np.full((2, 2), 50), np.zeros((2, 2), np.bool_), np.ones((2, 2), np.bool_)
    rise, _ = best_placements(wasteful(t), r, need, whole, ok, 1, 0, 0, 0)
    assert rise[0] > rise[1]


def test_kinds_the_host_cannot_take_lose_the_gpu_as_in_fgd() -> None:
    # Both kinds ask 4 cores. Node 1 has 2 left: its empty GPU is lost to every kind (FGD: F = 1), whatever
    # a remainder's final waste would be; node 0 hosts them, and its empty GPU loses nothing.
    t = table([50, 100], [0.5, 0.5], cpu=[4, 4])
    r = rows([[100], [100]], cpu=[10, 2])
    assert node_basis(wasteful(t), r).before.tolist() == pytest.approx([0.0, 1.0])
    assert node_basis(t, r).before.tolist() == pytest.approx([0.0, 1.0])


kinds = st.lists(st.tuples(st.sampled_from([38, 76, 152, 304]), st.sampled_from([4, 40, 120]),
                           st.sampled_from([1, 2])), min_size=1, max_size=5)


@settings(max_examples=80, deadline=None)
@given(gpu_rows, kinds, st.sampled_from([38, 76, 304]), st.sampled_from([4, 40]), st.data())
def test_joint_rise_is_f_after_less_f_before(gpus: tuple, mix: list[tuple[int, int, int]], need_cus: int,
                                             gib: int, data: st.DataObject) -> None:
    rows_, t, need, whole = _rows_and_mix(gpus, mix, need_cus)
    t = wasteful(t, 304)
    free, healthy, total = rows_.free, rows_.valid, rows_.total
    chosen = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=4, max_size=4), min_size=free.shape[0],
                                         max_size=free.shape[0])))
    got = joint_delta(t, rows_, chosen, need, whole, gib * GIB, 1000, GIB)
    after = Rows(healthy, rows_.model, total, np.where(chosen, np.where(whole, 0, free - need), free),
                 rows_.usable, rows_.empty & ~chosen, np.where(chosen, rows_.mem_free - gib * GIB, rows_.mem_free),
                 rows_.cpu_free - 1000, rows_.host_mem_free - GIB)
    want = node_basis(t, after).before - node_basis(t, rows_).before
    assert got.tobytes() == want.tobytes()


@settings(max_examples=80, deadline=None)
@given(gpu_rows, kinds, st.sampled_from([38, 76, 304]), st.sampled_from([4, 40]))
def test_one_gpu_rise_is_the_same_by_either_path(gpus: tuple, mix: list[tuple[int, int, int]], need_cus: int,
                                                 gib: int) -> None:
    # deltas works the waste count out per GPU (the node's others with the host room left after); joint_delta
    # from the node as it is after: bind takes the GPUs filter and prioritize scored
    rows_, t, need, whole = _rows_and_mix(gpus, mix, need_cus)
    t = wasteful(t, 304)
    ok = rows_.valid & np.where(whole, rows_.free == 304, rows_.free >= need) & (rows_.mem_free >= gib * GIB)
    d = deltas(t, rows_, need, whole, ok, gib * GIB, 1000, GIB)
    for j in range(ok.shape[1]):
        chosen = np.zeros(ok.shape, np.bool_)
        chosen[:, j] = True
        joint = joint_delta(t, rows_, chosen, need, whole, gib * GIB, 1000, GIB)
        for i in np.flatnonzero(ok[:, j]):
            assert joint[i] == pytest.approx(d[i, j], abs=1e-9)


def _engine() -> Engine:
    cluster = MemoryCluster()
    for i, name in enumerate(NODES):
        gpus = 4 if i % 3 else 2
        cluster.add_node(NodeView(name, allocatable={"amd.com/gpu": str(gpus), "cpu": "16", "memory": "64Gi"}))
    policy = _policy(candidates={"enabled": True}, fragmentation={"enabled": True, "remainders": "waste"})
    engine = Engine(cluster, PolicyStore(policy))
    engine.sync()
    return engine


shapes = st.tuples(st.sampled_from([125, 250, 375, 500, 1000]), st.sampled_from([1, 1, 2]),
                   st.sampled_from([1, 8, 40]), st.sampled_from([0, 1000, 6000]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(shapes, st.booleans()), min_size=1, max_size=10))
def test_remembered_rises_are_the_rises_worked_out_afresh(plan: list[tuple]) -> None:
    engine = _engine()
    policy = engine.policies.current
    assert policy.scoring.fragmentation.remainders == "waste"
    for i, (shape, leave) in enumerate(plan):
        pod = pod_of(f"p{i}", *shape)
        engine.cluster.add_pod(pod)  # type: ignore[attr-defined]
        passed = engine.filter(pod, names=NODES).passed
        if passed and not leave:
            scores = dict(engine.prioritize(pod, names=passed))
            engine.bind("default", pod.name, pod.uid, max(passed, key=lambda n: scores[n]))
        ask = pod_of(f"q{i}", 250, 1, 8, 1000)
        req = engine.request_of(ask, policy)[0]
        assert req is not None
        got = engine.rises(ask, req, policy, NODES, fit_key(req, policy))
        assert got.tobytes() == afresh(engine, ask, req, NODES).tobytes()
