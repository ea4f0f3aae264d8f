"""A throughput profile fitted from measurements, validated before it can reach a policy.

Rules, and why:
- repeated runs at one CU count keep the slowest (SLA sizing must not promise the lucky run);
- throughput may not fall as CUs grow: a dip is a broken run or a co-tenant, not a property of the
  model, and interpolation over it would size some targets to the wrong side of it;
- at least MIN_POINTS CU counts spanning at least MIN_SPAN x: sizing interpolates between points and
  is flat past the last, so two points or a narrow span say too little;
- the class, unless given, comes from how throughput scales: near-linear (>= LINEAR_SCALING of ideal
  from the first to the last point) is compute-bound, saturating is memory-bound.
Points off the XCD atom grid are kept (they are what was measured) and listed in the metadata: the
extender only ever hands out whole atoms, so such points serve interpolation only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from extender.core.benchresults import Measurement
from extender.core.errors import InputError
from extender.core.policy import GpuClass, GpuModel, Profile, ThroughputPoint
from extender.core.quantity import parse_bytes

MIN_POINTS = 3
MIN_SPAN = 2.0
LINEAR_SCALING = 0.75


class ProfileFitError(InputError):
    """Measurements that do not make a usable profile."""


@dataclass(frozen=True)
class FittedProfile:
    name: str
    profile: Profile
    min_memory_text: str
    metadata: dict[str, object] = field(default_factory=dict)

    def document(self) -> dict[str, object]:
        """The profile as it is written under `profiles:` in a policy file."""
        return {"gpuModel": self.profile.gpuModel, "class": self.profile.workloadClass,
                "minMemory": self.min_memory_text,
                "points": [{"computeUnits": p.computeUnits, "rps": p.rps} for p in self.profile.points]}


def fit_profile(name: str, runs: list[Measurement], model_name: str, model: GpuModel, min_memory: str,
                workload_class: GpuClass | None = None) -> FittedProfile:
    """The profile the runs support, or ProfileFitError naming the run and the reason."""
    if not runs:
        raise ProfileFitError("results", 0, "no measurements")
    try:
        memory = parse_bytes(min_memory)
    except ValueError as exc:
        raise ProfileFitError("minMemory", min_memory, str(exc)) from None
    if memory <= 0 or memory > model.memory:
        raise ProfileFitError("minMemory", min_memory, f"must be within 1 byte..{model_name}'s {model.memory} bytes")
    by_cus: dict[int, list[Measurement]] = defaultdict(list)
    for run in runs:
        if run.computeUnits > model.computeUnits:
            raise ProfileFitError(run.source, run.computeUnits, f"more CUs than a {model_name} has "
                                  f"({model.computeUnits})")
        by_cus[run.computeUnits].append(run)
    points = [ThroughputPoint(computeUnits=cus, rps=min(r.rps for r in rs)) for cus, rs in sorted(by_cus.items())]
    _check_dense(points)
    _check_monotonic(points, by_cus)
    cls = workload_class or infer_class(points)
    profile = Profile.model_validate({"gpuModel": model_name, "class": cls, "minMemory": memory,
                                      "points": [p.model_dump() for p in points]})
    return FittedProfile(name, profile, min_memory, _metadata(points, by_cus, model, cls, workload_class))


def infer_class(points: list[ThroughputPoint]) -> GpuClass:
    return "compute-bound" if scaling(points) >= LINEAR_SCALING else "memory-bound"


def scaling(points: list[ThroughputPoint]) -> float:
    """Throughput gain from the first to the last point as a fraction of the CU gain (1.0 = linear)."""
    first, last = points[0], points[-1]
    if first.rps <= 0:
        return 1.0
    return (last.rps / first.rps) / (last.computeUnits / first.computeUnits)


def _check_dense(points: list[ThroughputPoint]) -> None:
    cus = [p.computeUnits for p in points]
    if len(points) < MIN_POINTS:
        raise ProfileFitError("results", cus, f"too sparse: {len(points)} CU count(s); measure at least "
                              f"{MIN_POINTS} (e.g. the sweep's sizes)")
    if cus[-1] < MIN_SPAN * cus[0]:
        raise ProfileFitError("results", cus, f"too sparse: {cus[0]}..{cus[-1]} CUs spans less than "
                              f"{MIN_SPAN:g}x; measure a wider range")


def _check_monotonic(points: list[ThroughputPoint], by_cus: dict[int, list[Measurement]]) -> None:
    for lo, hi in zip(points, points[1:], strict=False):
        if hi.rps < lo.rps:
            where = ", ".join(r.source for r in by_cus[hi.computeUnits])
            raise ProfileFitError(where, f"{hi.computeUnits} CUs {hi.rps:g} req/s",
                                  f"non-monotonic: fewer req/s than {lo.computeUnits} CUs ({lo.rps:g}); "
                                  "re-run that size alone on an idle GPU")


def _metadata(points: list[ThroughputPoint], by_cus: dict[int, list[Measurement]], model: GpuModel,
              cls: GpuClass, given: GpuClass | None) -> dict[str, object]:
    meta: dict[str, object] = {
        "runs": sum(len(rs) for rs in by_cus.values()),
        "classFrom": "given" if given else f"scaling {scaling(points):.2f} of linear "
                                             f"({'>=' if cls == 'compute-bound' else '<'} {LINEAR_SCALING})",
    }
    repeats = {cus: [r.rps for r in rs] for cus, rs in by_cus.items() if len(rs) > 1}
    if repeats:
        meta["repeats"] = {str(c): v for c, v in sorted(repeats.items())}
    off = [p.computeUnits for p in points if p.computeUnits % model.xcds]
    if off:
        meta["offAtomGrid"] = off
    shared: dict[str, object] = {}
    for rs in by_cus.values():
        for r in rs:
            for k, v in r.meta.items():
                shared.setdefault(k, v)
                if shared[k] != v and k not in ("date", "duration", "completed"):
                    shared[k] = "(varies)"
    dates = sorted(str(r.meta["date"]) for rs in by_cus.values() for r in rs if "date" in r.meta)
    for k in ("date", "duration", "completed"):
        shared.pop(k, None)
    if dates:
        shared["dates"] = f"{dates[0]}..{dates[-1]}" if dates[0] != dates[-1] else dates[0]
    meta.update(shared)
    return meta
