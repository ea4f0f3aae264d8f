"""What a replay is made of: nodes (host CPU/memory and GPUs of one model) and pods (host requests,
an optional GPU slice, arrival and departure times)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimNode:
    name: str
    cpu_millis: int
    memory_bytes: int
    gpus: int
    model: str  # GPU model ("" when the node has no GPUs)


@dataclass(frozen=True)
class GpuAsk:
    """A pod's GPU request in simulator terms; translated to gpuslice keys per policy."""

    count: int = 1
    compute_millis: int | None = None  # share of one GPU; None when sized from profile + target
    memory_bytes: int | None = None  # None = the profile's minimum
    workload_class: str | None = None  # None = from the profile, else the policy's default
    profile: str | None = None
    target_rps: float | None = None
    models: tuple[str, ...] = ()  # allowed GPU models (empty = any)


@dataclass(frozen=True)
class SimPod:
    name: str
    arrival: float
    duration: float | None  # None: never departs
    cpu_millis: int
    memory_bytes: int
    gpu: GpuAsk | None  # None: a pod without GPUs (passes gpuslice through)
    demand: float  # GPUs asked, in whole-GPU units (trace accounting: num_gpu x gpu_milli / 1000)
    service: str = ""  # group for reports


def pod_demand(ask: GpuAsk | None, share: float | None = None) -> float:
    if ask is None:
        return 0.0
    if share is None:
        share = (ask.compute_millis or 0) / 1000
    return ask.count * share
