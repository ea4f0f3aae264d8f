from __future__ import annotations

from pathlib import Path

import pytest

from extender.sim import openb
from tests.sim.conftest import NODE_HEADER, POD_HEADER

GIB = 2**30


def _read(trace: tuple[Path, Path]) -> tuple[list, list]:
    pods, nodes = trace
    ns = openb.read_nodes(nodes)
    return openb.read_pods(pods, openb.node_model_memory(ns)), ns


def test_nodes_and_pods_translate(trace: tuple[Path, Path]) -> None:
    pods, nodes = _read(trace)
    assert [(n.name, n.gpus, n.model) for n in nodes] == [("n0", 8, "V100M16"), ("n1", 4, "T4"), ("n2", 0, "")]
    by = {p.name: p for p in pods}
    # one GPU: compute = gpu_milli; memory proportional to the share of the smallest allowed GPU (16 GiB)
    assert by["p0"].gpu.count == 1 and by["p0"].gpu.compute_millis == 500
    assert by["p0"].gpu.memory_bytes == 8 * GIB and by["p0"].duration == 100
    # gpu_spec becomes the allowed models
    assert by["p1"].gpu.models == ("T4",) and by["p1"].duration is None and by["p1"].demand == 0.25
    # num_gpu > 1: whole GPUs
    assert by["p2"].gpu.count == 2 and by["p2"].gpu.compute_millis == 1000 and by["p2"].demand == 2.0
    # no GPU: passes through
    assert by["p3"].gpu is None and by["p3"].demand == 0
    assert by["p4"].gpu.models == ("V100M16", "V100M32")


def test_malformed_rows_are_reported_with_row_numbers(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text(NODE_HEADER + "n0,64000,262144,8,V100M16\n")
    pods = tmp_path / "pods.csv"
    pods.write_text(POD_HEADER + "ok,1000,1024,1,100,,LS,Running,0,,0\n"
                    "bad,abc,1024,1,100,,LS,Running,1,,1\n"
                    "worse,1000,1024,1,1500,,LS,Running,2,,2\n"
                    "nomodel,1000,1024,1,100,H200,LS,Running,3,,3\n"
                    "absent,1000,1024,1,100,T4,LS,Running,4,,4\n")
    with pytest.raises(openb.TraceError) as exc:
        openb.read_pods(pods, openb.node_model_memory(openb.read_nodes(nodes)))
    where = {(p[0], p[1]) for p in exc.value.problems}
    assert (f"{pods}:3", "cpu_milli") in where
    assert (f"{pods}:4", "gpu_milli") in where
    assert (f"{pods}:5", "gpu_spec") in where
    assert not any(w.endswith(":6") for w, _ in where)  # a model the cluster lacks: pending, not an error
    assert f"{pods}:3" in str(exc.value)


def test_missing_column_and_unknown_model(tmp_path: Path) -> None:
    pods = tmp_path / "pods.csv"
    pods.write_text("name,cpu_milli\nx,1\n")
    with pytest.raises(openb.TraceError, match="missing column"):
        openb.read_pods(pods, {})
    nodes = tmp_path / "nodes.csv"
    nodes.write_text(NODE_HEADER + "n0,64000,262144,8,Z9000\n")
    with pytest.raises(openb.TraceError) as exc:
        openb.read_nodes(nodes)
    assert exc.value.problems[0][0].endswith(":2") and "Z9000" in str(exc.value)


def test_sampling_is_seeded_and_reaches_the_load(trace: tuple[Path, Path]) -> None:
    pods, nodes = _read(trace)
    total = sum(n.gpus for n in nodes)
    a = openb.sample_load(pods, total, 130, seed=7)
    b = openb.sample_load(pods, total, 130, seed=7)
    c = openb.sample_load(pods, total, 130, seed=8)
    assert [p.name for p in a] == [p.name for p in b]
    assert [p.name for p in a] != [p.name for p in c]
    asked = sum(p.demand for p in a)
    assert asked >= total * 1.3 and asked - a[-1].demand < total * 1.3
    assert all(p.duration is None for p in a)
    assert [p.arrival for p in a] == sorted(p.arrival for p in a)
