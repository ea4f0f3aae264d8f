"""The replay's shortcuts (incremental extender answers, GPU screen, one idle node per kind) must give
exactly the placements of asking the engine about every host-fit node on every cycle."""

from __future__ import annotations

from pathlib import Path

import pytest

from extender.core.policy import load_policy
from extender.sim import openb, synthetic
from extender.sim.gpumodels import builtin_policy_path, with_models
from extender.sim.replay import Replay, RunSpec


@pytest.mark.parametrize("policy_name", ["openb", "mi300x-inference"])
def test_incremental_replay_matches_the_reference(tmp_path: Path, policy_name: str) -> None:
    nodes = openb.read_nodes(synthetic.write_nodes(tmp_path / "n.csv", 24, seed=4))
    pods = openb.read_pods(synthetic.write_pods(tmp_path / "p.csv", 260, seed=4, mean_gap=5, mean_life=400),
                           openb.node_model_memory(nodes))
    policy = with_models(load_policy(builtin_policy_path(policy_name)), {n.model for n in nodes if n.gpus})

    def placements(incremental: bool) -> list[tuple[str, str | None, bool]]:
        # greedy bind: the CP-SAT bind placer's wall-clock limit may vary its answer between runs
        st = Replay(nodes, pods, RunSpec("x", policy, bind="greedy"), seed=9, incremental=incremental).run()
        return [(o.pod.name, o.node, o.departed) for o in st.outcomes]

    fast, reference = placements(True), placements(False)
    assert fast == reference
    assert sum(1 for _, node, _ in fast if node) > 20 and any(d for _, _, d in fast)
