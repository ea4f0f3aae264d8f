"""The policy: one typed YAML document that platform teams edit (a ConfigMap in the cluster).

Every field has a documented default, so an empty file is a valid policy. Unknown keys are
rejected (a typo must not silently fall back to a default). Errors name the field path and the
bad value.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from extender.core.atoms import round_up_to_atoms
from extender.core.bounds import MAX_POLICY_BYTES, OutOfBounds
from extender.core.errors import SHOWN_CHARS, GpusliceError
from extender.core.quantity import parse_bytes
from extender.core.rightsize_policy import RightSizing

GpuClass = Literal["memory-bound", "compute-bound"]


def _bytes(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    try:
        return parse_bytes(value)
    except ValueError as exc:
        raise ValueError(f"{exc}: expected a byte quantity such as 60Gi or 64G") from exc


Bytes = Annotated[int, BeforeValidator(_bytes)]
# Label and annotation key prefixes must be DNS-1123 subdomains, or the API server rejects the keys.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _field_error(path: tuple[str, ...], value: object, reason: str) -> PydanticCustomError:
    """A cross-field error that still names the exact field (relative to the validated model) and
    its bad value; a plain ValueError from a model validator would only name the whole model."""
    return PydanticCustomError("policy_field", "{reason}", {"path": path, "value": value, "reason": reason})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class GpuModel(_Strict):
    """Static facts of one GPU model (used when inventory lacks them, and for bandwidth)."""

    computeUnits: int = Field(gt=0, description="active CUs of the whole GPU")
    xcds: int = Field(gt=0, description="compute dies (XCC/XCD)")
    shaderEngines: int = Field(gt=0, description="shader engines over all XCDs")
    memory: Bytes = Field(description="HBM capacity")
    bandwidthGBps: float = Field(gt=0, description="HBM bandwidth, GB/s")
    balancedMultiple: int | None = Field(
        default=None, gt=0, description="CU multiple that spreads evenly; default = shaderEngines"
    )

    @property
    def balanced_multiple(self) -> int:
        return self.balancedMultiple or self.shaderEngines

    @model_validator(mode="after")
    def _whole_atoms(self) -> GpuModel:
        # A CU mask must hold the same number of bits on every XCD (core/atoms.py); a model whose CUs or
        # balanced step are not whole atoms could only hand out masks that leave XCDs unmasked.
        if self.computeUnits % self.xcds:
            raise _field_error(("computeUnits",), self.computeUnits,
                               f"must be a whole number of atoms of {self.xcds} CUs (one per XCD)")
        if self.balanced_multiple % self.xcds:
            field = "balancedMultiple" if self.balancedMultiple else "shaderEngines"
            raise _field_error((field,), self.balanced_multiple,
                               f"balanced CU counts must be whole atoms of {self.xcds} CUs (one per XCD), "
                               "or XCDs would get no bit of a mask and run unmasked")
        return self


def _default_models() -> dict[str, GpuModel]:
    return {
        "MI300X": GpuModel(computeUnits=304, xcds=8, shaderEngines=32, memory=206_158_430_208,
                           bandwidthGBps=5300.0),
        "MI325X": GpuModel(computeUnits=304, xcds=8, shaderEngines=32, memory=274_877_906_944,
                           bandwidthGBps=6000.0),
        "MI250X": GpuModel(computeUnits=110, xcds=1, shaderEngines=4, memory=68_719_476_736,
                           bandwidthGBps=1600.0, balancedMultiple=4),
    }


class Rounding(_Strict):
    """How a requested compute share becomes a CU count."""

    mode: Literal["exact", "balanced", "powerOfTwo"] = Field(
        default="balanced",
        description="exact: ceil(share*CUs); balanced: up to the model's balanced multiple; "
        "powerOfTwo: up to the next power of two",
    )
    minComputeUnits: int = Field(default=8, ge=1, description="no guarantee below this many CUs")


NO_XCD_LAYOUT = ("there is no xcd layout: ROCr applies HSA_CU_MASK per XCC and an XCC that gets no bit of "
                 "the mask runs unmasked, so a tenant's bits on one XCD would let it use every other XCD; "
                 "whole XCDs per tenant need CPX compute partitions. Use spread")


def _layout_mode(value: object) -> object:
    if value == "xcd":
        raise PydanticCustomError("no_xcd_layout", NO_XCD_LAYOUT)
    return value


class Layout(_Strict):
    """How guaranteed CU sets are laid out in mask-bit order."""

    mode: Annotated[Literal["spread"], BeforeValidator(_layout_mode)] = Field(
        default="spread",
        description="spread: whole atoms (one CU per XCD), as few contiguous bit ranges as possible",
    )


class Burst(_Strict):
    sharedFraction: float = Field(
        default=0.125, ge=0.0, le=0.5,
        description="fraction of each GPU's CUs kept as a shared burst region, never guaranteed",
    )


class Weights(_Strict):
    packing: float = Field(default=1.0, ge=0)
    complementarity: float = Field(default=1.0, ge=0)
    fragmentation: float = Field(default=0.5, ge=0)
    topology: float = Field(default=0.25, ge=0)


class Fragmentation(_Strict):
    """Placement by the fragmentation it causes for the workload mix seen arriving (engine/fragmentation.py)."""

    enabled: bool = Field(default=False, description="score nodes and choose GPUs by expected fragmentation")
    window: int = Field(default=20000, ge=100, description="pods the observed mix remembers (older ones fade)")
    maxKinds: int = Field(default=48, ge=1, le=512, description="request kinds the mix keeps: every slice "
                          "shape first, then the most frequent host sizes")
    hostCpu: float = Field(default=1.0, ge=0.0, description="weight of the GPUs a node's host CPU cannot feed at "
                           "the mix's CPU per GPU (0: FGD's per-kind test alone)")
    packTieBreak: float = Field(default=0.001, ge=0.0, description="added to a node's rise per free GPU on it, "
                                "so that of nodes the mix rates alike the fullest is chosen (0: kube-scheduler's "
                                "scoring breaks the tie)")
    weighting: Literal["pods", "gpus"] = Field(
        default="pods", description="weigh each kind by how many pods arrive (FGD) or by the GPUs they ask")
    remainders: Literal["fgd", "waste"] = Field(
        default="fgd", description="a part-used GPU's free capacity counts for the one-GPU kinds by the share of "
        "them that cannot use it (fgd), or as the capacity expected to stay unused in the end under the mix "
        "(waste: engine/fragmentation.py final_waste)")
    prioritize: Literal["fragmentation", "packing"] = Field(
        default="fragmentation", description="prioritize's 0..10: the rise of fragmentation, or how full the "
        "node's GPUs are after the placement (with candidates, the rise already chose the nodes)")


DEFAULT_CANDIDATES = 16  # nodes filter passes by default (scoring.candidates): several, never one secret node


class Candidates(_Strict):
    """Filter passes only the nodes whose best placement is within `tolerance` of the best one, at least
    `minNodes` and at most `maxNodes` of them. On by default: on identical nodes nearly every node ties
    for best, and passing all of them makes kube-scheduler encode, decode and score every node name
    twice per pod (README, "Real kube-scheduler throughput"); the 16 best still leave kube-scheduler's
    own scoring (affinity, spreading, image locality) a choice among several nodes."""

    enabled: bool = Field(default=True, description="false: filter passes every node that fits")
    tolerance: float = Field(default=0.05, ge=0.0,
                             description="expected fragmentation, in GPUs, a node may add beyond the best "
                             "(without fragmentation scoring: the share of the 0..10 score, x10, a node may "
                             "fall below the best)")
    minNodes: int = Field(default=DEFAULT_CANDIDATES, ge=1,
                          description="at least this many nodes pass (the best ones)")
    maxNodes: int | None = Field(default=DEFAULT_CANDIDATES, ge=1,
                                 description="at most this many nodes pass (null: no cap; unset: 16, or "
                                 "minNodes if larger); of nodes tied at the cut, a run in name order from where a "
                                 "hash of the pod's UID points (engine/candidates.py)")

    @model_validator(mode="before")
    @classmethod
    def _default_cap_follows_floor(cls, data: Any) -> Any:
        if isinstance(data, dict) and "maxNodes" not in data and isinstance(data.get("minNodes"), int) \
                and data["minNodes"] > DEFAULT_CANDIDATES:
            return {**data, "maxNodes": data["minNodes"]}
        return data

    @model_validator(mode="after")
    def _cap_above_floor(self) -> Candidates:
        if self.maxNodes is not None and self.maxNodes < self.minNodes:
            raise _field_error(("maxNodes",), self.maxNodes, f"must be at least minNodes ({self.minNodes})")
        return self


class Scoring(_Strict):
    strategy: Literal["binpack", "spread"] = Field(
        default="binpack", description="binpack fills used GPUs first; spread prefers empty ones"
    )
    weights: Weights = Weights()
    fragmentation: Fragmentation = Fragmentation()
    candidates: Candidates = Candidates()


class ClassRules(_Strict):
    """Co-location rules per GPU, by workload class."""

    default: GpuClass = Field(
        default="memory-bound",
        description="class of a pod that names none and has no profile (the cautious choice)",
    )
    maxMemoryBoundPerGpu: int | None = Field(default=2, ge=1, description="None: no limit")
    maxComputeBoundPerGpu: int | None = Field(default=None, ge=1, description="None: no limit")
    bandwidthShare: dict[GpuClass, float] = Field(
        default_factory=lambda: {"memory-bound": 0.5, "compute-bound": 0.2},
        description="fraction of a GPU's HBM bandwidth one tenant of the class is expected to use",
    )
    bandwidthBudget: float | None = Field(
        default=None, gt=0,
        description="cap on the summed bandwidthShare of a GPU's tenants; None: no budget",
    )

    @model_validator(mode="after")
    def _shares_in_range(self) -> ClassRules:
        for cls, share in self.bandwidthShare.items():
            if not 0 <= share <= 1:
                raise _field_error(("bandwidthShare", cls), share, "must be within 0..1")
        return self


class Interference(_Strict):
    """Throughput lost per co-tenant (from the MI300X facts: two memory-bound halves lose 13% each)."""

    memoryBoundPenalty: float = Field(default=0.13, ge=0, lt=1)
    computeBoundPenalty: float = Field(default=0.03, ge=0, lt=1)


class Overcommit(_Strict):
    memory: float = Field(
        default=1.0, ge=1.0, le=4.0,
        description="sum of memory limits may reach this times the GPU's memory; guarantees never exceed it",
    )


class Solver(_Strict):
    enabled: bool = Field(default=True, description="false: greedy best-fit only")
    timeLimitMs: int = Field(default=15, ge=1, le=5000, description="wall-clock limit of one solve")
    workers: int = Field(default=1, ge=1, le=8)


class ThroughputPoint(_Strict):
    computeUnits: int = Field(gt=0)
    rps: float = Field(ge=0)


class Profile(_Strict):
    """Measured throughput of a model at CU counts, for right-sizing from a target req/s."""

    gpuModel: str = Field(default="MI300X", description="the GPU model the points were measured on")
    workloadClass: GpuClass = Field(default="memory-bound", alias="class")
    minMemory: Bytes = Field(description="memory the model needs to load and serve")
    points: list[ThroughputPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _increasing(self) -> Profile:
        cus = [p.computeUnits for p in self.points]
        if cus != sorted(cus) or len(set(cus)) != len(cus):
            raise _field_error(("points",), cus, "computeUnits of the points must strictly increase")
        return self


class Quota(_Strict):
    maxCompute: int | None = Field(default=None, ge=0, description="summed compute, millis of a GPU")
    maxMemory: Bytes | None = Field(default=None, description="summed guaranteed memory")
    maxTenants: int | None = Field(default=None, ge=0)


class Reservations(_Strict):
    ttlSeconds: float = Field(default=60.0, gt=0, description="a reservation never bound expires after this")


class MemoryEnforcement(_Strict):
    action: Literal["monitor", "evict"] = Field(
        default="monitor", description="on a VRAM breach: monitor (metric + event) or evict"
    )


class Policy(_Strict):
    apiVersion: Literal["gpuslice.io/v1"] = "gpuslice.io/v1"
    prefix: str = Field(default="gpuslice.io", min_length=1, description="label/annotation key prefix")
    models: dict[str, GpuModel] = Field(default_factory=_default_models)
    defaultModel: str = Field(default="MI300X", description="model assumed when a node names none")
    rounding: Rounding = Rounding()
    layout: Layout = Layout()
    burst: Burst = Burst()
    scoring: Scoring = Scoring()
    classes: ClassRules = ClassRules()
    interference: Interference = Interference()
    overcommit: Overcommit = Overcommit()
    solver: Solver = Solver()
    profiles: dict[str, Profile] = Field(default_factory=dict)
    quotas: dict[str, Quota] = Field(default_factory=dict, description="by namespace")
    reservations: Reservations = Reservations()
    memoryEnforcement: MemoryEnforcement = MemoryEnforcement()
    rightsizing: RightSizing = RightSizing()

    @model_validator(mode="after")
    def _references(self) -> Policy:
        if self.defaultModel not in self.models:
            raise _field_error(("defaultModel",), self.defaultModel, f"not in models {sorted(self.models)}")
        for name, prof in self.profiles.items():
            if prof.gpuModel not in self.models:
                raise _field_error(("profiles", name, "gpuModel"), prof.gpuModel,
                                   f"not in models {sorted(self.models)}")
        if len(self.prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(self.prefix):
            raise _field_error(("prefix",), self.prefix, "must be a DNS subdomain such as gpuslice.io "
                               "(lower-case letters, digits, '-' and '.')")
        return self

    @cached_property
    def version(self) -> str:
        """A short hash of the effective policy; written into every assignment."""
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def model_for(self, name: str | None) -> GpuModel:
        return self.models.get(name or self.defaultModel) or self.models[self.defaultModel]


class PolicyError(GpusliceError):
    """A policy document is invalid. `problems` is a list of (field path, bad value, reason)."""

    def __init__(self, source: str, problems: list[tuple[str, object, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{path}: {reason} (got {_shown(value)})" for path, value, reason in problems[:20]]
        super().__init__(f"invalid policy {source}:\n  " + "\n  ".join(lines))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + f"... ({len(text)} characters)"


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(document)"


def _problem(error: Any) -> tuple[str, object, str]:
    if error["type"] == "policy_field":
        ctx = error["ctx"]
        return _path(tuple(error["loc"]) + tuple(ctx["path"])), ctx["value"], ctx["reason"]
    return _path(error["loc"]), error.get("input"), error["msg"]


def parse_policy(data: object, source: str = "<policy>") -> Policy:
    """Validate a decoded YAML/JSON document."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(source, [("(document)", data, "a policy is a mapping of fields")])
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(e) for e in exc.errors()]
        raise PolicyError(source, problems) from None


class _NoAliasLoader(yaml.SafeLoader):
    """A safe loader that refuses aliases: a few hundred bytes of nested aliases expand to gigabytes
    (a "billion laughs"), and a policy has no need of them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} refused: a policy may not use "
                                              "YAML aliases", event.start_mark)
        return super().compose_node(parent, index)


def load_policy_text(text: str, source: str = "<policy>") -> Policy:
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyError(source, [("(document)", f"{len(text)} characters",
                                    str(OutOfBounds(f"longer than {MAX_POLICY_BYTES} characters")))])
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, RecursionError) as exc:
        raise PolicyError(source, [("(document)", None, f"not valid YAML: {str(exc)[:500]}")]) from None
    return parse_policy(data, source)


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PolicyError(str(p), [("(file)", str(p), f"cannot read: {exc.strerror}")]) from None
    return load_policy_text(text, str(p))


def profile_rps(profile: Profile, cus: int) -> float:
    """Throughput at `cus` CUs by linear interpolation between measured points (flat past the ends,
    zero below the first point scaled linearly from the origin)."""
    pts = profile.points
    if cus <= pts[0].computeUnits:
        return pts[0].rps * cus / pts[0].computeUnits
    for lo, hi in zip(pts, pts[1:], strict=False):
        if cus <= hi.computeUnits:
            frac = (cus - lo.computeUnits) / (hi.computeUnits - lo.computeUnits)
            return lo.rps + frac * (hi.rps - lo.rps)
    return pts[-1].rps


def region_size(total_cus: int, xcds: int, fraction: float) -> int:
    """CUs of a GPU's shared burst region: the policy's fraction, rounded down to whole atoms."""
    return int(total_cus * fraction) // xcds * xcds


def guaranteeable(policy: Policy, total_cus: int, xcds: int) -> int:
    """The largest guarantee short of the whole GPU: the CUs outside the burst region, in whole atoms."""
    return (total_cus - region_size(total_cus, xcds, policy.burst.sharedFraction)) // xcds * xcds


def round_cus(policy: Policy, model: GpuModel, total_cus: int, wanted: int, xcds: int | None = None) -> int:
    """Apply the policy's rounding and minimum to a CU count, then round up to whole atoms (one CU per
    XCD: `xcds`, default the model's); a count past the guaranteeable region becomes the whole GPU
    (`total_cus`), which only an empty GPU can give (DESIGN, whole GPUs)."""
    xcds = xcds or model.xcds
    wanted = max(wanted, policy.rounding.minComputeUnits, 1)
    mode = policy.rounding.mode
    if mode == "balanced":
        step = model.balanced_multiple
        wanted = math.ceil(wanted / step) * step
    elif mode == "powerOfTwo":
        wanted = 1 << (wanted - 1).bit_length()
    wanted = round_up_to_atoms(wanted, xcds)
    return total_cus if wanted > guaranteeable(policy, total_cus, xcds) else wanted
