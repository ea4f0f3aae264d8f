"""Issue 13 point 3: whole-node (multi-GPU) pods keep a path to placement while fractional pods arrive.

A small generated trace in the openb format: fractional one-GPU pods asking many different host sizes
(so there are more request kinds than the mix keeps), and a few 8-GPU pods, each with a host size of
its own. The mix must still count the 8-GPU shape, so that the openb policy keeps whole nodes free for
it; on the old code it dropped those rare kinds and spread fractions over every node."""

from __future__ import annotations

import random
from pathlib import Path

from extender.core.policy import load_policy
from extender.sim import openb
from extender.sim.gpumodels import builtin_policy_path, with_models
from extender.sim.metrics import summarize
from extender.sim.replay import Replay
from extender.sim.runs import baseline_spec, policy_spec

from .conftest import NODE_HEADER, POD_HEADER


def _trace(tmp_path: Path) -> tuple[Path, Path]:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text(NODE_HEADER + "".join(f"n{i:02d},96000,393216,8,G2\n" for i in range(12)))
    rng = random.Random(7)
    rows = []
    for i in range(150):  # 75 host sizes, two pods each: more kinds than the policy's mix keeps
        milli = rng.choice([250, 470, 650, 1000])
        rows.append(f"f{i},{2000 + 100 * (i // 2)},8192,1,{milli},,LS,Running,{i},,{i}\n")
    for i in range(8):  # the rare shape: a whole node, each with a host size of its own
        rows.append(f"m{i},{64000 + 100 * i},65536,8,1000,,LS,Running,{150 + i},,{150 + i}\n")
    pods = tmp_path / "pods.csv"
    pods.write_text(POD_HEADER + "".join(rows))
    return pods, nodes


def test_eight_gpu_pods_are_placed_as_often_as_first_fit_places_them(tmp_path: Path) -> None:
    pods_csv, nodes_csv = _trace(tmp_path)
    nodes = openb.read_nodes(nodes_csv)
    pods = openb.read_pods(pods_csv, openb.node_model_memory(nodes))
    policy = with_models(load_policy(builtin_policy_path("openb")), {"G2"})
    assert policy.scoring.fragmentation.maxKinds < 75 + 8  # the trace has more kinds than the mix keeps
    placed = {}
    for seed in (1, 2, 3):
        arrived = openb.sample_load(pods, 96, 130, seed)
        for spec in (policy_spec("gpuslice", policy), baseline_spec("first-fit", policy, seed)):
            multi = summarize(Replay(nodes, arrived, spec, seed=seed).run())["multiGpu"]
            got = placed.setdefault(spec.label, [0, 0])
            got[0] += multi["placed"]  # type: ignore[index]
            got[1] += multi["arrived"]  # type: ignore[index]
    assert placed["gpuslice"][1] >= 6  # the seeds do draw 8-GPU pods
    assert placed["gpuslice"][0] >= placed["first-fit"][0] > 0
