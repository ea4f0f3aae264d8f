"""The simulator hands out only XCC-complete masks, and its GPU screen is the fit rule's (core/fit.py)
health, capacity and memory tests: random arrival and departure traces on 8-XCD (MI300X) and 1-XCD
(MI250X) nodes, replayed by gpuslice (greedy or CP-SAT bind) and by the baselines, with random policies."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.core.assignment import ASSIGNMENT_ANNOTATION, parse_assignment
from extender.core.atoms import is_xcc_complete
from extender.core.fit import Demand, Rules, verdict
from extender.core.policy import Policy, parse_policy
from extender.engine.placement import evaluate, needed_cus
from extender.sim.baselines import BASELINES, baseline_placer
from extender.sim.replay import Replay, RunSpec
from extender.sim.workload import GpuAsk, SimNode, SimPod

GIB = 2**30
SCREENED = ("unhealthy", "compute", "memory")  # the rules the screen applies; the extender applies the rest

policies = st.builds(
    lambda rounding, minimum, frac, mb: parse_policy({
        "rounding": {"mode": rounding, "minComputeUnits": minimum}, "burst": {"sharedFraction": frac},
        "classes": {"maxMemoryBoundPerGpu": mb}, "solver": {"timeLimitMs": 20}}),
    st.sampled_from(["exact", "balanced", "powerOfTwo"]), st.sampled_from([1, 4, 8, 30]),
    st.sampled_from([0.0, 0.125, 0.3]), st.sampled_from([None, 2]))
pods = st.lists(st.tuples(st.one_of(st.integers(1, 1000), st.sampled_from([3, 100, 1000])), st.integers(1, 100),
                          st.sampled_from(["memory-bound", "compute-bound"]), st.sampled_from([1, 1, 2]),
                          st.floats(0, 50), st.one_of(st.none(), st.floats(1, 30))), min_size=1, max_size=30)


class CheckedReplay(Replay):
    """A replay that checks every handed-out set and, before every attempt, the screen against the rule."""

    handed_out = 0

    def attempt(self, i: int) -> bool:
        req = self.requests[i]
        if req is not None:
            rules = Rules.from_policy(self.policy)
            for k, name in enumerate(self.names):
                state = self.engine.ledger.node(name)
                if state is None or not state.gpus:
                    continue
                passing = sum(
                    1 for g in state.gpus
                    if (v := verdict(g.room(self.policy.overcommit.memory, rules),
                                     Demand(needed_cus(req, g, self.policy), req.memory_bytes, req.memory_limit_bytes,
                                            req.workload_class), rules)) is None or v.category not in SCREENED)
                screened = bool(self._gpu_screen(i, np.array([k]))[0])
                assert screened == (passing >= req.count), (name, i)
                if evaluate(req, state, self.policy).ok:
                    assert screened  # a necessary condition of the extender's filter
        placed = super().attempt(i)
        if placed:
            o = self.outcomes[i]
            pod = self.cluster.get_pod("sim", o.pod.name)
            assert pod is not None and o.node is not None
            a = parse_assignment(pod.annotations[ASSIGNMENT_ANNOTATION])
            state = self.engine.ledger.node(o.node)
            assert state is not None
            for g in a.gpus:
                gpu = state.gpu(g.index)
                assert gpu is not None
                if len(g.cus) == gpu.info.computeUnits:
                    assert not g.burstCus and len(gpu.slices) == 1
                    continue
                assert is_xcc_complete(g.cus, gpu.info.xcds) and is_xcc_complete(g.cus | g.burstCus, gpu.info.xcds)
                self.handed_out += 1
        return placed


def _trace(specs: list[tuple]) -> list[SimPod]:
    return [SimPod(f"p{k}", arrival, duration, 100, GIB,
                   GpuAsk(count=count, compute_millis=millis, memory_bytes=gib * GIB, workload_class=cls),
                   count * millis / 1000)
            for k, (millis, gib, cls, count, arrival, duration) in enumerate(specs)]


NODES = [SimNode("a", 64_000, 512 * GIB, 2, "MI300X"), SimNode("b", 64_000, 512 * GIB, 2, "MI250X"),
         SimNode("c", 64_000, 512 * GIB, 1, "MI300X")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, specs=pods, bind=st.sampled_from(["solver", "greedy"]))
def test_gpuslice_replay_hands_out_only_complete_masks(policy: Policy, specs: list[tuple], bind: str) -> None:
    CheckedReplay(NODES, _trace(specs), RunSpec("gpuslice", policy, evaluate, "kube", bind=bind), seed=1).run()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, specs=pods, name=st.sampled_from(sorted(BASELINES)))
def test_baseline_replays_hand_out_only_complete_masks(policy: Policy, specs: list[tuple], name: str) -> None:
    spec = RunSpec(name, policy, baseline_placer(name, 1), BASELINES[name], "baseline")
    CheckedReplay(NODES, _trace(specs), spec, seed=1).run()
