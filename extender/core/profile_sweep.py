"""A profiling sweep: the slice sizes to measure a model at, and one Job manifest per size.

Sizes are CU counts on the policy's balanced grid (multiples of the model's balanced multiple, each a
whole number of XCD atoms) up to what one GPU can guarantee (its CUs less the shared burst region).
Every run gets the same memory, so only compute varies. The runs must not overlap on a GPU (a
co-tenant would show up as interference in the curve), so they are meant to run one after another on
one node: `gpuslice profile sweep --apply` does that; printed manifests say so. The benchmark reads
its size from GPUSLICE_SWEEP_COMPUTE_UNITS and passes it on (vLLM: `--metadata computeUnits=...`),
which is how `gpuslice profile fit` learns each run's CU count.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from extender.core.atoms import round_up_to_atoms
from extender.core.errors import InputError
from extender.core.inventory import GpuInfo
from extender.core.ledger import burst_region
from extender.core.policy import GpuClass, Policy, round_cus
from extender.core.quantity import parse_bytes

SIZE_ENV = "GPUSLICE_SWEEP_COMPUTE_UNITS"
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class SweepError(InputError):
    """A sweep that cannot be run as asked."""


@dataclass(frozen=True)
class SweepSpec:
    name: str
    image: str
    command: tuple[str, ...]
    memory: str
    gpu_model: str
    workload_class: GpuClass
    namespace: str = "default"
    node: str | None = None
    scheduler: str = "gpuslice"


def usable_cus(policy: Policy, gpu_model: str) -> int:
    """CUs one GPU can guarantee to one tenant: all of them less the shared burst region."""
    m = policy.models[gpu_model]
    info = GpuInfo(index=0, id="", model=gpu_model, computeUnits=m.computeUnits, xcds=m.xcds,
                   shaderEngines=m.shaderEngines, memoryBytes=m.memory, healthy=True)
    return m.computeUnits - len(burst_region(info, policy.burst.sharedFraction))


def sweep_sizes(policy: Policy, gpu_model: str, sizes: list[int] | None = None) -> list[int]:
    """The CU counts to measure: the given ones (checked) or every balanced step up to one GPU."""
    if gpu_model not in policy.models:
        raise SweepError("--gpu-model", gpu_model, f"not in the policy's models {sorted(policy.models)}")
    model = policy.models[gpu_model]
    top = usable_cus(policy, gpu_model)
    if not sizes:
        step = model.balanced_multiple
        sizes = list(range(round_cus(policy, model, model.computeUnits, step), top + 1, step))
    for cus in sizes:
        if cus < 1 or cus > top:
            raise SweepError("--sizes", cus, f"must be within 1..{top} CUs (one {gpu_model} less its burst region)")
        if round_up_to_atoms(cus, model.xcds) != cus:
            raise SweepError("--sizes", cus, f"not a whole number of atoms of {model.xcds} CUs (one per XCD): "
                             "a partial mask leaves XCDs unmasked")
        if round_cus(policy, model, model.computeUnits, cus) != cus:
            raise SweepError("--sizes", cus, f"the policy's rounding ({policy.rounding.mode}) would give "
                             f"{round_cus(policy, model, model.computeUnits, cus)} CUs, not {cus}")
    if len(set(sizes)) != len(sizes):
        raise SweepError("--sizes", sizes, "repeated size")
    return sorted(sizes)


def compute_millis(policy: Policy, gpu_model: str, cus: int) -> int:
    """The share (millis) the extender turns back into exactly `cus` CUs on this model."""
    model = policy.models[gpu_model]
    millis = max(1, math.floor(cus * 1000 / model.computeUnits))
    got = round_cus(policy, model, model.computeUnits, math.ceil(millis * model.computeUnits / 1000))
    if got != cus:
        raise SweepError("--sizes", cus, f"no share in millis gives exactly {cus} CUs (got {got})")
    return millis


def job_name(spec: SweepSpec, cus: int) -> str:
    return f"{spec.name}-sweep-{cus}cu"


def sweep_jobs(policy: Policy, spec: SweepSpec, sizes: list[int]) -> list[dict[str, object]]:
    """One batch/v1 Job per size, in the order they should run."""
    if not _NAME.fullmatch(spec.name) or len(spec.name) > 40:
        raise SweepError("--name", spec.name, "must be a DNS label of at most 40 characters")
    try:
        parse_bytes(spec.memory)
    except ValueError as exc:
        raise SweepError("--memory", spec.memory, str(exc)) from None
    if not spec.command:
        raise SweepError("command", "", "give the benchmark command after --")
    return [_job(policy, spec, cus, compute_millis(policy, spec.gpu_model, cus)) for cus in sizes]


def _job(policy: Policy, spec: SweepSpec, cus: int, millis: int) -> dict[str, object]:
    p = policy.prefix
    labels = {f"{p}/sweep": spec.name, f"{p}/sweep-cus": str(cus)}
    pod_spec: dict[str, object] = {
        "schedulerName": spec.scheduler,
        "restartPolicy": "Never",
        "containers": [{
            "name": "benchmark", "image": spec.image, "command": list(spec.command),
            "env": [{"name": SIZE_ENV, "value": str(cus)}],
            "resources": {"limits": {f"{p}/gpu-share": "1"}},
        }],
    }
    if spec.node:
        pod_spec["nodeSelector"] = {"kubernetes.io/hostname": spec.node}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(spec, cus), "namespace": spec.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels, "annotations": {
                    f"{p}/compute": f"{millis}m", f"{p}/memory": spec.memory, f"{p}/class": spec.workload_class,
                    f"{p}/count": "1"}},
                "spec": pod_spec,
            },
        },
    }
