"""A synthetic trace in the openb CSV format, seeded, shaped like the published trace's description
(many GPU-sharing pods under one GPU, some whole and multi-GPU pods, some CPU-only pods, a few pods
pinned to GPU models). It is NOT the real trace: it exercises the format and the replay at scale."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from extender.sim.openb import NODE_COLUMNS, POD_COLUMNS

NODE_KINDS = [  # (model, GPUs, weight)
    ("V100M16", 8, 20), ("V100M32", 8, 15), ("G2", 8, 20), ("A10", 4, 10), ("T4", 4, 10), ("P100", 2, 5),
    ("", 0, 10),
]
SHARES = [(50, 4), (100, 10), (200, 8), (250, 10), (300, 4), (500, 14), (600, 3), (800, 3), (1000, 20)]
MULTI = [(2, 6), (4, 4), (8, 2)]
SPECS = ["V100M16|V100M32", "T4", "A10|G2", "V100M32", "G2"]


def _pick(rng: random.Random, options: list[tuple]) -> tuple:
    return rng.choices(options, weights=[o[-1] for o in options])[0]


def write_nodes(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(NODE_COLUMNS)
        for i in range(count):
            model, gpus, _ = _pick(rng, NODE_KINDS)
            cpu = rng.choice([64_000, 96_000, 128_000])
            w.writerow([f"openb-node-{i:04d}", cpu, rng.choice([262_144, 393_216, 786_432]), gpus, model])
    return path


def write_pods(path: Path, count: int, seed: int, mean_gap: float = 5.0, mean_life: float = 3600.0) -> Path:
    rng = random.Random(seed)
    t = 0.0
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(POD_COLUMNS)
        for i in range(count):
            t += rng.expovariate(1 / mean_gap)
            kind = rng.random()
            spec = ""
            if kind < 0.12:
                num_gpu, milli = 0, 0
            elif kind < 0.88:
                num_gpu, milli = 1, _pick(rng, SHARES)[0]
            else:
                num_gpu, milli = _pick(rng, MULTI)[0], 1000
            if num_gpu and rng.random() < 0.2:
                spec = rng.choice(SPECS)
            cpu = rng.choice([1000, 2000, 4000, 8000, 12000]) * max(1, num_gpu)
            mem = rng.choice([4096, 8192, 16384, 32768]) * max(1, num_gpu)
            life = rng.lognormvariate(0, 1) * mean_life
            w.writerow([f"openb-pod-{i:05d}", cpu, mem, num_gpu, milli, spec, rng.choice(["LS", "BE"]), "Running",
                        round(t, 1), round(t + life, 1), round(t, 1)])
    return path
