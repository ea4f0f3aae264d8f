"""The openb trace format (Alibaba GPU cluster trace, as used by published GPU-sharing simulators).

Pods: `name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,
deletion_time,scheduled_time`. Nodes: `sn,cpu_milli,memory_mib,gpu,model`.

Translation to gpuslice requests:
- `num_gpu` 0: no GPU (the pod passes gpuslice through; only its host CPU/memory count);
- `num_gpu` 1: `compute` = `gpu_milli` m of one GPU;
- `num_gpu` > 1: whole GPUs, `count` = num_gpu, `compute` = 1000m;
- `gpu_spec` (models joined by `|`): the pod may only use nodes of those GPU models (a model the
  cluster lacks leaves the pod pending; one the model table does not know is an error);
- GPU memory (the trace has none): memory = gpu_milli/1000 x the memory of the smallest GPU the pod
  may use, i.e. memory proportional to the compute share.
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from extender.core.errors import GpusliceError
from extender.sim.gpumodels import trace_model
from extender.sim.workload import GpuAsk, SimNode, SimPod

MIB = 2**20
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec", "qos", "pod_phase",
               "creation_time", "deletion_time", "scheduled_time")
POD_REQUIRED = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
MAX_PROBLEMS = 20


class TraceError(GpusliceError):
    """A trace file is malformed. `problems` lists (file:row, column, value, reason)."""

    def __init__(self, source: str, problems: list[tuple[str, str, object, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{where}: {col}={value!r}: {reason}" for where, col, value, reason in problems]
        super().__init__(f"invalid trace {source}:\n  " + "\n  ".join(lines))


class _Rows:
    """Reads a CSV with a header; collects problems with their row numbers (header = row 1)."""

    def __init__(self, path: str | Path, required: Iterable[str]) -> None:
        self.path = str(path)
        self.problems: list[tuple[str, str, object, str]] = []
        self.required = tuple(required)

    def read(self) -> list[tuple[int, dict[str, str]]]:
        try:
            with open(self.path, newline="") as fh:
                reader = csv.DictReader(fh)
                header = [h.strip() for h in reader.fieldnames or []]
                missing = [c for c in self.required if c not in header]
                if missing:
                    raise TraceError(self.path, [(f"{self.path}:1", "header", header,
                                                  f"missing column(s) {', '.join(missing)}")])
                reader.fieldnames = header
                return [(i, row) for i, row in enumerate(reader, start=2)]
        except OSError as exc:
            raise TraceError(self.path, [(self.path, "file", self.path, f"cannot read: {exc.strerror}")]) from None

    def bad(self, row: int, column: str, value: object, reason: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append((f"{self.path}:{row}", column, value, reason))

    def number(self, row: int, rec: dict[str, str], column: str, default: float | None = None,
               minimum: float = 0) -> float | None:
        text = (rec.get(column) or "").strip()
        if text == "":
            if default is None and column in self.required:
                self.bad(row, column, text, "required value is empty")
            return default
        try:
            value = float(text)
        except ValueError:
            self.bad(row, column, text, "not a number")
            return default
        if value != value or value < minimum:
            self.bad(row, column, text, f"must be a number >= {minimum:g}")
            return default
        return value

    def done(self) -> None:
        if self.problems:
            raise TraceError(self.path, self.problems)


def read_nodes(path: str | Path, extra_models: dict[str, tuple[int, int]] | None = None) -> list[SimNode]:
    rows = _Rows(path, NODE_COLUMNS[:4])
    nodes: list[SimNode] = []
    seen: set[str] = set()
    for i, rec in rows.read():
        name = (rec.get("sn") or "").strip()
        if not name:
            rows.bad(i, "sn", name, "node name is empty")
        elif name in seen:
            rows.bad(i, "sn", name, "node name repeats")
        seen.add(name)
        cpu = rows.number(i, rec, "cpu_milli")
        mem = rows.number(i, rec, "memory_mib")
        gpus = rows.number(i, rec, "gpu", default=0)
        model = (rec.get("model") or "").strip()
        if gpus and gpus != int(gpus):
            rows.bad(i, "gpu", gpus, "must be a whole number of GPUs")
        if gpus and not model:
            rows.bad(i, "model", model, "a node with GPUs needs a GPU model")
        elif gpus:
            try:
                trace_model(model, extra_models)
            except GpusliceError as exc:
                rows.bad(i, "model", model, getattr(exc, "reason", str(exc)))
        if cpu is None or mem is None or gpus is None:
            continue
        nodes.append(SimNode(name, int(cpu), int(mem) * MIB, int(gpus), model if gpus else ""))
    rows.done()
    return nodes


def split_spec(text: str) -> tuple[str, ...]:
    return tuple(p for p in (s.strip() for s in re.split(r"[|,;]", text or "")) if p)


def read_pods(path: str | Path, node_models: dict[str, int]) -> list[SimPod]:
    """Pods of the trace. `node_models` maps each GPU model in the cluster to its memory (bytes), for
    the memory rule and to check `gpu_spec`."""
    rows = _Rows(path, POD_REQUIRED)
    pods: list[SimPod] = []
    for i, rec in rows.read():
        name = (rec.get("name") or "").strip() or f"pod-row{i}"
        cpu = rows.number(i, rec, "cpu_milli")
        mem = rows.number(i, rec, "memory_mib")
        num_gpu = rows.number(i, rec, "num_gpu")
        milli = rows.number(i, rec, "gpu_milli", default=0)
        created = rows.number(i, rec, "creation_time", default=float(i))
        deleted = rows.number(i, rec, "deletion_time", default=-1, minimum=-1)
        started = rows.number(i, rec, "scheduled_time", default=created, minimum=-1)
        spec = split_spec(rec.get("gpu_spec") or "")
        if None in (cpu, mem, num_gpu, milli, created, deleted, started):
            continue
        assert cpu is not None and mem is not None and num_gpu is not None and milli is not None
        assert created is not None and deleted is not None and started is not None
        if num_gpu != int(num_gpu):
            rows.bad(i, "num_gpu", num_gpu, "must be a whole number")
            continue
        ask: GpuAsk | None = None
        demand = 0.0
        if num_gpu >= 1:
            if not node_models:
                rows.bad(i, "num_gpu", num_gpu, "the cluster has no GPU nodes")
                continue
            memories = [_model_memory(m, node_models) for m in spec]
            if None in memories:
                unknown = [m for m, mem in zip(spec, memories, strict=True) if mem is None]
                rows.bad(i, "gpu_spec", rec.get("gpu_spec"), f"unknown GPU model(s) {', '.join(unknown)}")
                continue
            # a pod may name models the cluster lacks (it then stays pending, as in kube-scheduler)
            smallest = min(memories) if memories else min(node_models.values())  # type: ignore[type-var]
            if num_gpu == 1:
                if not 0 < milli <= 1000:
                    rows.bad(i, "gpu_milli", milli, "a one-GPU pod needs gpu_milli in 1..1000")
                    continue
                share = int(milli)
                ask = GpuAsk(count=1, compute_millis=share, memory_bytes=max(MIB, smallest * share // 1000),
                             models=tuple(spec))
                demand = share / 1000
            else:
                ask = GpuAsk(count=int(num_gpu), compute_millis=1000, memory_bytes=smallest, models=tuple(spec))
                demand = float(num_gpu)
        start = started if started >= 0 else created
        duration = deleted - start if deleted >= 0 and deleted >= start else None
        pods.append(SimPod(name, created, duration, int(cpu), int(mem) * MIB, ask, demand))
    rows.done()
    pods.sort(key=lambda p: p.arrival)
    return pods


def _model_memory(name: str, node_models: dict[str, int]) -> int | None:
    if name in node_models:
        return node_models[name]
    try:
        return trace_model(name).memory
    except GpusliceError:
        return None


def node_model_memory(nodes: Iterable[SimNode], extra: dict[str, tuple[int, int]] | None = None) -> dict[str, int]:
    return {n.model: trace_model(n.model, extra).memory for n in nodes if n.gpus}


def sample_load(pods: list[SimPod], total_gpus: int, load_pct: float, seed: int) -> list[SimPod]:
    """The published methodology: draw pods (with replacement, seeded) until the GPUs they ask for
    reach `load_pct`% of the cluster's GPUs; they arrive one per time step and never depart."""
    if not any(p.demand > 0 for p in pods):
        raise TraceError("pods", [("pods", "num_gpu", 0, "no pod in the trace asks for a GPU; nothing to load")])
    rng = random.Random(seed)
    target = total_gpus * load_pct / 100
    out: list[SimPod] = []
    arrived = 0.0
    while arrived < target:
        p = rng.choice(pods)
        out.append(replace(p, name=f"{p.name}-s{len(out)}", arrival=float(len(out)), duration=None))
        arrived += p.demand
    return out
