"""Our YAML scenario format: a cluster and the pods that arrive on it.

```yaml
name: my-cluster
policy: mi300x-inference   # optional: a built-in policy name or a file relative to this one
nodes:                     # each entry is `count` identical nodes named <name>-0, <name>-1, ...
  - {name: mi300x, count: 4, gpus: 8, model: MI300X, cpu: "192", memory: 2Ti}
pods:                      # each entry is `replicas` identical pods named <name>-0, ...
  - name: chat             # GPU keys as in the pod-facing API:
    replicas: 3
    profile: llama-3.1-8b  #   profile + targetRps: sized for the SLA (see `gpuslice simulate --help`)
    targetRps: 8
    # compute: 250m        #   or an explicit share of one GPU
    # memory: 16Gi         #   GPU memory (default: the profile's minimum)
    # class: memory-bound  #   default: from the profile, else the policy's default class
    # count: 1             #   GPUs per pod
    # gpuModels: [MI300X]  #   only nodes of these GPU models
    cpu: "4"               # host requests, as kube-scheduler sees them
    hostMemory: 32Gi
    arrival: 0             # seconds; replicas arrive `interval` seconds apart
    interval: 1
    duration: null         # seconds until the pod ends; null = it stays
    demand: {swing: 4}     # req/s over a day, for `simulate --demand` (extender/sim/demand.py)
```
A pod entry with neither `compute` nor `profile` asks for no GPU (host only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from extender.core.errors import GpusliceError
from extender.core.quantity import parse_bytes, parse_millis
from extender.sim.demand import DemandCurve
from extender.sim.workload import GpuAsk, SimNode, SimPod, pod_demand

DATA = Path(__file__).parent / "data"


def _millis(value: object) -> int:
    return parse_millis(str(value))


def _bytes(value: object) -> int:
    return parse_bytes(value if isinstance(value, int) else str(value))


Millis = Annotated[int, BeforeValidator(_millis)]
Bytes = Annotated[int, BeforeValidator(_bytes)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NodeGroup(_Strict):
    name: str = Field(min_length=1)
    count: int = Field(default=1, ge=1)
    gpus: int = Field(default=8, ge=0)
    model: str = "MI300X"
    cpu: Millis = Field(default=192_000, description="host CPU, cores or millicores")
    memory: Bytes = Field(default=2 * 2**40, description="host memory")


class PodGroup(_Strict):
    name: str = Field(min_length=1)
    replicas: int = Field(default=1, ge=1)
    profile: str | None = None
    targetRps: float | None = Field(default=None, gt=0)
    compute: Millis | None = None
    memory: Bytes | None = None
    workloadClass: Literal["memory-bound", "compute-bound"] | None = Field(default=None, alias="class")
    count: int = Field(default=1, ge=1)
    gpuModels: list[str] = Field(default_factory=list)
    cpu: Millis = 4000
    hostMemory: Bytes = 32 * 2**30
    arrival: float = Field(default=0.0, ge=0)
    interval: float = Field(default=1.0, ge=0)
    duration: float | None = Field(default=None, gt=0)
    demand: DemandCurve | None = Field(default=None, description="req/s over a day (`simulate --demand`)")

    @model_validator(mode="after")
    def _consistent(self) -> PodGroup:
        if self.targetRps is not None and self.profile is None:
            raise ValueError("targetRps needs a profile to size from")
        if self.demand is not None and self.targetRps is None:
            raise ValueError("demand needs profile + targetRps (the service is sized from req/s)")
        if self.compute is not None and not 0 < self.compute <= 1000:
            raise ValueError(f"compute {self.compute}m must be within 1m..1000m (use count for more GPUs)")
        if self.compute is None and self.profile is None and self.memory is not None:
            raise ValueError("memory without compute or profile: say how much compute the pod needs")
        return self

    @property
    def wants_gpu(self) -> bool:
        return self.compute is not None or self.profile is not None


class Scenario(_Strict):
    name: str = "scenario"
    description: str = ""
    policy: str | None = None
    nodes: list[NodeGroup] = Field(min_length=1)
    pods: list[PodGroup] = Field(default_factory=list)


class ScenarioError(GpusliceError):
    def __init__(self, source: str, problems: list[tuple[str, object, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{path}: {reason} (got {value!r})" for path, value, reason in problems]
        super().__init__(f"invalid scenario {source}:\n  " + "\n  ".join(lines))


def load_scenario(path: str | Path) -> tuple[Scenario, Path]:
    """A scenario file, or a built-in one by name (`seed`). Returns it and the directory it lives in."""
    p = Path(path)
    if not p.exists() and (DATA / f"{path}.scenario.yaml").exists():
        p = DATA / f"{path}.scenario.yaml"
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ScenarioError(str(p), [("(file)", str(p), f"cannot read: {exc.strerror}; built-in: seed")]) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(str(p), [("(document)", None, f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise ScenarioError(str(p), [("(document)", data, "a scenario is a mapping with nodes and pods")])
    try:
        return Scenario.model_validate(data), p.parent
    except ValidationError as exc:
        problems = [(".".join(str(x) for x in e["loc"]) or "(document)", e.get("input"), e["msg"])
                    for e in exc.errors()]
        raise ScenarioError(str(p), problems) from None


def scenario_nodes(s: Scenario) -> list[SimNode]:
    return [SimNode(f"{g.name}-{i}", g.cpu, g.memory, g.gpus, g.model if g.gpus else "")
            for g in s.nodes for i in range(g.count)]


def scenario_pods(s: Scenario) -> list[SimPod]:
    pods: list[SimPod] = []
    for g in s.pods:
        ask = None
        if g.wants_gpu:
            ask = GpuAsk(count=g.count, compute_millis=g.compute, memory_bytes=g.memory,
                         workload_class=g.workloadClass, profile=g.profile, target_rps=g.targetRps,
                         models=tuple(g.gpuModels))
        for i in range(g.replicas):
            # demand of a profile-sized pod is only known per policy; the replay fills it in
            pods.append(SimPod(f"{g.name}-{i}", g.arrival + i * g.interval, g.duration, g.cpu, g.hostMemory,
                               ask, pod_demand(ask) if g.compute is not None else 0.0, service=g.name))
    pods.sort(key=lambda p: p.arrival)
    return pods
