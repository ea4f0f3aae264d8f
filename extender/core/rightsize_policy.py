"""The policy's `rightsizing` section: how `gpuslice rightsize` turns observed demand into slices.

Queries are PromQL with three placeholders filled per workload: `$namespace`, `$name` (the
Deployment or StatefulSet) and `$pods` (a regex matching its pods' names). The default request-rate
query reads vLLM's own counter; the default VRAM query reads the node agent's per-pod gauge.
"""

from __future__ import annotations

import string

from pydantic import BaseModel, ConfigDict, Field, field_validator

PLACEHOLDERS = ("namespace", "name", "pods")
DEFAULT_QUERY = 'sum(rate(vllm:request_success_total{namespace="$namespace",pod=~"$pods"}[2m]))'
DEFAULT_VRAM_QUERY = 'max(gpuslice_agent_pod_vram_bytes{namespace="$namespace",pod=~"$pods"})'


def check_query(query: str) -> str:
    names = {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(query)
             if m.group("named") or m.group("braced")}
    unknown = sorted(names - set(PLACEHOLDERS))
    if unknown:
        raise ValueError(f"unknown placeholder(s) {unknown}; use {', '.join('$' + p for p in PLACEHOLDERS)}")
    return query


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class WorkloadRightSizing(_Strict):
    """Overrides for one workload, keyed `namespace/name` under `rightsizing.workloads`."""

    enabled: bool = Field(default=True, description="false: never touch this workload")
    query: str | None = Field(default=None, description="its request rate (req/s, all replicas together)")
    vramQuery: str | None = Field(default=None, description="its per-pod VRAM use in bytes")
    headroom: float | None = Field(default=None, ge=0, le=4)
    minReplicas: int | None = Field(default=None, ge=1)

    @field_validator("query", "vramQuery")
    @classmethod
    def _placeholders(cls, v: str | None) -> str | None:
        return v if v is None else check_query(v)


class RightSizing(_Strict):
    query: str = Field(default=DEFAULT_QUERY, description="request rate of a workload (req/s, all replicas)")
    vramQuery: str = Field(default=DEFAULT_VRAM_QUERY, description="per-pod VRAM use of a workload, bytes")
    windowSeconds: int = Field(default=1800, ge=60, description="size for the peak of this sliding window")
    downWindowSeconds: int = Field(default=3600, ge=60,
                                   description="shrink only on the peak of this longer window, fully observed")
    stepSeconds: int = Field(default=30, ge=1, description="resolution of the window's samples")
    headroom: float = Field(default=0.2, ge=0, le=4, description="size for the window's peak times 1 + this")
    hysteresis: float = Field(default=0.2, ge=0, le=1,
                              description="shrink only when the smaller slice still covers need x (1 + this)")
    minIntervalSeconds: int = Field(default=900, ge=0, description="at least this long between two changes")
    maxStepComputeUnits: int = Field(default=64, ge=1, description="largest CU change per pod in one step "
                                     "(smaller slices for an added pod: at once)")
    maxStepReplicas: int = Field(default=1, ge=1, description="largest replica change in one step")
    minReplicas: int = Field(default=1, ge=1, description="never fewer replicas than this (set it for availability)")
    maxReplicas: int = Field(default=16, ge=1, description="never more replicas than this")
    repack: bool = Field(default=True, description="with --apply, delete a pod alone on its GPU when its "
                         "replacement would land beside other tenants and the rest of its fleet carries the need "
                         "(frees the GPU; the Eviction API honours PodDisruptionBudgets); a one-pod Deployment "
                         "whose rolling update starts the new pod first is restarted instead")
    memoryHeadroom: float = Field(default=0.1, ge=0, le=4, description="memory = observed VRAM peak x (1 + this)")
    workloads: dict[str, WorkloadRightSizing] = Field(default_factory=dict, description="by namespace/name")

    @field_validator("query", "vramQuery")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        return check_query(v)

    @field_validator("workloads")
    @classmethod
    def _keys(cls, v: dict[str, WorkloadRightSizing]) -> dict[str, WorkloadRightSizing]:
        for key in v:
            if key.count("/") != 1 or not all(key.split("/")):
                raise ValueError(f"key {key!r} must be namespace/name")
        return v
