"""GPU models a simulated inventory may hold, beyond the policy's own table.

Public traces (openb) name NVIDIA models. The simulator treats a node's `model` as its GPU model and
uses this table for the model's compute units (NVIDIA: SMs) and memory, so a trace's fractional
shares become CU counts the same way an AMD share does. G2 and G3 are anonymised in the trace;
they are assumed to be V100-class parts (80 SMs, 32 GiB) — an assumption, stated in the help.
"""

from __future__ import annotations

from pathlib import Path

from extender.core.errors import InputError
from extender.core.policy import GpuModel, Policy, parse_policy

GIB = 2**30
DATA = Path(__file__).parent / "data"

# name: (compute units, memory GiB, bandwidth GB/s). NVIDIA parts have one die; their CUs are SMs.
TRACE_MODELS: dict[str, tuple[int, int, float]] = {
    "V100M16": (80, 16, 900.0),
    "V100M32": (80, 32, 900.0),
    "V100": (80, 16, 900.0),
    "P100": (56, 16, 732.0),
    "T4": (40, 16, 320.0),
    "A10": (72, 24, 600.0),
    "A100": (108, 80, 2039.0),
    "H100": (132, 80, 3350.0),
    "G2": (80, 32, 900.0),
    "G3": (80, 32, 900.0),
}


def model_table_text() -> str:
    return ", ".join(f"{n} {c} CUs/{m} GiB" for n, (c, m, _) in TRACE_MODELS.items())


def trace_model(name: str, extra: dict[str, tuple[int, int]] | None = None) -> GpuModel:
    """The GpuModel for a trace's GPU model name (extra = user-defined NAME -> (CUs, GiB))."""
    if extra and name in extra:
        cus, gib = extra[name]
        return GpuModel(computeUnits=cus, xcds=1, shaderEngines=1, memory=gib * GIB, bandwidthGBps=1000.0,
                        balancedMultiple=1)
    if name not in TRACE_MODELS:
        raise InputError("model", name, f"unknown GPU model; known: {', '.join(TRACE_MODELS)} "
                                        "(add one with --gpu-model NAME=CUS:GIB)")
    cus, gib, bw = TRACE_MODELS[name]
    return GpuModel(computeUnits=cus, xcds=1, shaderEngines=1, memory=gib * GIB, bandwidthGBps=bw,
                    balancedMultiple=2)


def parse_model_option(text: str) -> tuple[str, tuple[int, int]]:
    """`NAME=CUS:GIB` from the command line."""
    try:
        name, spec = text.split("=", 1)
        cus, gib = spec.split(":", 1)
        return name.strip(), (int(cus), int(gib))
    except ValueError:
        raise InputError("--gpu-model", text, "expected NAME=CUS:GIB, e.g. L4=58:24") from None


def with_models(policy: Policy, names: set[str], extra: dict[str, tuple[int, int]] | None = None) -> Policy:
    """The policy with every GPU model in `names` that it lacks added from the trace table."""
    missing = sorted(n for n in names if n and n not in policy.models)
    if not missing:
        return policy
    data = policy.model_dump(mode="json", by_alias=True)
    for name in missing:
        data["models"][name] = trace_model(name, extra).model_dump(mode="json", by_alias=True)
    return parse_policy(data, "<policy with trace GPU models>")


def builtin_policy_path(name: str) -> Path:
    return DATA / f"{name}.yaml"
