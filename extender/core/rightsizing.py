"""Right-sizing: the slice (and replica count) that meets a workload's observed demand, decided with
hysteresis so a noisy signal does not make pods churn.

The rule: need = peak of the sliding window x (1 + headroom). The fleet is the (replicas, slice) with
the least GPU share that carries the need (at least `minReplicas`), each pod's slice the SLA-sizing
rule's (`sla_size`, the extender's own). Growing happens as soon as the
current fleet no longer covers need; shrinking only when the smaller fleet still covers need x (1 +
hysteresis) at the peak of a longer, fully observed window (`downWindowSeconds`, as HPA's
scale-down stabilisation) — the band and the longer memory keep a noisy signal from flapping. Every change
waits `minIntervalSeconds` after the last one and moves at most `maxStepComputeUnits` per pod and
`maxStepReplicas`. Memory follows the observed per-pod VRAM peak the same way.

What the extender will give for a target is derived from `sla_size` alone (`Ladder`), so the
controller and the extender cannot disagree about a slice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

from extender.core.errors import InputError, SliceRequestError
from extender.core.policy import GpuClass, Policy
from extender.core.rightsize_policy import RightSizing
from extender.core.sizing import gpu_share, size_for_target

GIB = 2**30
STATE_KEY = "rightsize"  # <prefix>/rightsize on the owner: the last change and the recent ones
HISTORY = 10


@dataclass(frozen=True)
class SlaSize:
    cus: int | None  # None: no slice of one GPU meets the target
    predicted_rps: float
    reason: str = ""


def sla_size(policy: Policy, profile_name: str, target_rps: float, workload_class: GpuClass | None = None) -> SlaSize:
    """The one call into the SLA-sizing rule (`core.sizing.size_for_target`, the extender's own, which
    budgets the worst co-tenancy the policy allows), as the ladder's step."""
    try:
        s = size_for_target(policy, profile_name, target_rps, workload_class)
    except SliceRequestError as exc:
        return SlaSize(None, 0.0, exc.reason)
    return SlaSize(s.cus, s.predicted_rps)


SizeFn = Callable[[float], SlaSize]
ShareFn = Callable[[int], float]


@dataclass(frozen=True)
class Step:
    cus: int
    rps: float  # what the sizing rule predicts one pod reaches at `cus`
    share: float  # the fraction of a GPU one pod at `cus` takes from other tenants (`gpu_share`)


def sla_ladder(policy: Policy, profile_name: str, memory: int, workload_class: GpuClass | None = None) -> Ladder:
    """The ladder of the SLA-sizing rule (the extender's) for pods of `memory` bytes and the class the
    extender sizes them with (the pod's when it overrides the profile's), each step with its GPU share:
    what the controller and the replay both decide on."""
    profile = policy.profiles[profile_name]
    model, cls = policy.models[profile.gpuModel], workload_class or profile.workloadClass
    return Ladder(lambda rps: sla_size(policy, profile_name, rps, workload_class),
                  lambda cus: gpu_share(policy, model, cls, cus, memory))


class Ladder:
    """The slices the sizing rule can give one pod, smallest first, each with its predicted req/s and GPU
    share; probed from the rule itself (the smallest slice meeting just above the previous step's req/s)."""

    def __init__(self, sizer: SizeFn, share: ShareFn) -> None:
        self.sizer = sizer
        steps: list[Step] = []
        target = 1e-9
        while len(steps) < 1024:
            s = sizer(target)
            if s.cus is None or (steps and s.cus <= steps[-1].cus):
                break
            steps.append(Step(s.cus, s.predicted_rps, share(s.cus)))
            target = s.predicted_rps * (1 + 1e-9) + 1e-9
        if not steps:
            raise InputError("profile", "", "the sizing rule gives no slice at all")
        self.steps = steps

    @property
    def best(self) -> Step:
        return self.steps[-1]

    def fit(self, rps: float) -> Step:
        """The smallest step reaching `rps`, or the largest when none does."""
        return next((s for s in self.steps if s.rps + 1e-9 >= rps), self.steps[-1])

    def at(self, cus: int) -> Step:
        """The step a pod holding `cus` CUs is worth (the largest step not above it)."""
        below = [s for s in self.steps if s.cus <= cus]
        return below[-1] if below else Step(cus, 0.0, self.steps[0].share)

    def clamp(self, current: int, wanted: int, max_step: int) -> int:
        """`wanted`, moved at most `max_step` CUs from `current` (at least one step, so it progresses)."""
        if wanted > current:
            ok = [s.cus for s in self.steps if current < s.cus <= min(wanted, current + max_step)]
            return ok[-1] if ok else min(s.cus for s in self.steps if s.cus > current)
        if wanted < current:
            ok = [s.cus for s in self.steps if max(wanted, current - max_step) <= s.cus < current]
            return ok[0] if ok else max(s.cus for s in self.steps if s.cus < current)
        return current

    def target_text(self, cus: int) -> str:
        """A target-rps value the sizing rule turns into exactly `cus` (short when possible)."""
        rps = self.at(cus).rps
        for digits in (1, 2, 3, 6):
            text = f"{math.floor(rps * 10**digits) / 10**digits:g}"
            if float(text) > 0 and self.sizer(float(text)).cus == cus:
                return text
        return repr(rps)


@dataclass(frozen=True)
class Fleet:
    replicas: int
    cus: int  # per pod
    memory: int  # bytes per pod

    @property
    def footprint(self) -> int:
        return self.replicas * self.cus

    def gpus(self, ladder: Ladder) -> float:
        """GPUs the fleet takes from other tenants: replicas x one pod's GPU share."""
        return self.replicas * ladder.at(self.cus).share


@dataclass(frozen=True)
class Observation:
    peak_rps: float | None  # peak request rate over the window, all replicas together
    down_peak_rps: float | None = None  # peak over the longer window; None until it is fully observed
    vram_peak: int | None = None  # peak VRAM of one pod over the window, bytes


@dataclass(frozen=True)
class Decision:
    action: str  # up | down | hold
    current: Fleet
    wanted: Fleet  # what the rule wants now (before interval and step bounds)
    next: Fleet  # what to apply now (== current when holding)
    target_text: str  # target-rps per pod that makes the extender size `next.cus`
    need_rps: float
    peak_rps: float | None
    reason: str

    @property
    def changed(self) -> bool:
        return self.next != self.current


def plan_fleet(ladder: Ladder, need: float, least: int, most: int, keep: int | None = None) -> tuple[int, int]:
    """(replicas, CUs per pod) carrying `need`: of the replica counts whose pods, each at the smallest
    slice carrying its part, carry it, the one with the least GPU share (then the fewest CUs, then the
    fewest pods) — two memory-bound 128-CU pods share one GPU (22.7 req/s) where one 256-CU pod fills
    it (13.5 req/s), and binpack places a memory-bound pod beside a used GPU's tenants before opening
    an empty one (`engine.placement.empty_complementarity`). Past what `most` pods of the best slice
    carry: `most` of them.

    `keep`: the fleet's current slice. Among the fleets with the least GPU share, one whose pods keep it
    wins: a slice change re-creates every pod (a rolling update, which leaves the old pods' co-tenants
    where they were), a replica change only adds or removes pods — and the same share fills as many
    GPUs (under a class's per-GPU limit, the pod count bounds the GPUs, not the CUs). When the slice must
    change, the pods re-created take the largest slice of the least share (then the one carrying the
    most): it takes nothing more from other tenants, and the next growth inside that share needs no
    rollout (2 x 64 CUs outgrown: 2 x 128, not 2 x 96 and another rollout to 2 x 128 an hour later)."""
    top = max(most, least)
    best: tuple[tuple[float, int, float, int], int, int] | None = None
    for replicas in range(least, top + 1):
        step = ladder.fit(need / replicas)
        if replicas * step.rps + 1e-9 < need:
            continue
        options = [step.cus]
        if keep is not None:  # a running fleet: the larger slices of the same share, and its own if it carries
            options += [s.cus for s in ladder.steps if s.cus > step.cus and s.share <= step.share + 1e-9]
            if keep > step.cus and replicas * ladder.at(keep).rps + 1e-9 >= need:
                options.append(keep)
        for cus in options:
            size = -replicas * ladder.at(cus).rps if keep is not None else replicas * cus
            key = (round(replicas * ladder.at(cus).share, 9), int(cus != keep), size, replicas)
            if best is None or key < best[0]:
                best = (key, replicas, cus)
    return (best[1], best[2]) if best is not None else (top, ladder.best.cus)


def _smaller(fleet: tuple[int, int], current: Fleet) -> bool:
    """Fewer pods without more CUs in all, or as many pods with fewer CUs each: never adds a pod."""
    replicas, cus = fleet
    if replicas < current.replicas:
        return replicas * cus <= current.footprint
    return replicas == current.replicas and cus < current.cus


def repack_hold(rs: RightSizing, ladder: Ladder, current: Fleet, need: float, now: float,
                record: Record, surge: bool = False) -> str | None:
    """Why no pod of this fleet may be deleted now to move it beside other tenants, or None when one
    may. A memory-bound pod alone on its GPU holds the whole GPU for half a GPU's share; scale-downs and
    rollouts leave such pods behind as demand falls (the day replay's "placement history"). Deleting one
    lets its ReplicaSet re-create it and the extender's binpack place the replacement beside other
    tenants, which frees the GPU. The fleet is short one pod until the replacement serves, so only when
    the other pods carry the need on their own (the need the resize rule sizes for), and at most once per
    `minIntervalSeconds` after the last resize or move. Whether a pod is alone, and whether its
    replacement would land beside tenants, is the placement's question (`engine.repack`).

    `surge`: the fleet is one pod whose owner's rolling update adds the new pod before it removes the old
    (a Deployment with maxUnavailable 0 at one replica, the default): it is moved by a restart instead of a
    deletion, and serves throughout."""
    if not rs.repack:
        return "rightsizing.repack is off"
    if current.replicas < 2 and not surge:
        return "a lone replica whose owner does not surge: deleting it would stop the service"
    rest = (current.replicas - 1) * ladder.at(current.cus).rps
    if current.replicas >= 2 and rest + 1e-9 < need:
        return f"the other {current.replicas - 1} pods carry {rest:.2f} req/s < need {need:.2f}"
    last = max((t for t in (record.last_change, record.last_repack) if t is not None), default=None)
    if last is not None and now - last < rs.minIntervalSeconds:
        return f"the last change was {now - last:.0f}s ago (next in {rs.minIntervalSeconds - (now - last):.0f}s)"
    return None


def memory_for(vram_peak: int, headroom: float, floor: int, ceiling: int) -> int:
    """Observed peak plus headroom, in whole GiB, within the profile's minimum and the GPU."""
    return min(max(floor, math.ceil(vram_peak * (1 + headroom) / GIB) * GIB), ceiling)


def decide(rs: RightSizing, ladder: Ladder, current: Fleet, obs: Observation, now: float,
           last_change: float | None, min_memory: int, gpu_memory: int, headroom: float | None = None,
           min_replicas: int | None = None) -> Decision:
    """What to do with one workload now. Pure: the same inputs give the same decision."""
    if obs.peak_rps is None:
        return Decision("hold", current, current, current, ladder.target_text(current.cus), 0.0, None,
                        "no request-rate samples in the window")
    head = rs.headroom if headroom is None else headroom
    least = rs.minReplicas if min_replicas is None else min_replicas
    need = obs.peak_rps * (1 + head)
    capacity = current.replicas * ladder.at(current.cus).rps
    memory = current.memory
    if obs.vram_peak is not None:
        want_mem = memory_for(obs.vram_peak, rs.memoryHeadroom, min_memory, gpu_memory)
        if want_mem > current.memory or want_mem * (1 + rs.hysteresis) < current.memory:
            memory = want_mem
    if capacity + 1e-9 < need:
        replicas, cus = plan_fleet(ladder, need, least, rs.maxReplicas, keep=current.cus)
        why = f"{current.replicas} x {current.cus} CUs carry {capacity:.2f} req/s < need {need:.2f}"
    else:
        replicas, cus = current.replicas, current.cus
        why = f"{current.replicas} x {current.cus} CUs carry {capacity:.2f} req/s >= need {need:.2f}"
        if obs.down_peak_rps is not None:
            down_need = max(need, obs.down_peak_rps * (1 + head)) * (1 + rs.hysteresis)
            smaller = plan_fleet(ladder, down_need, least, rs.maxReplicas, keep=current.cus)
            if _smaller(smaller, current):
                replicas, cus = smaller
                why += f" and {smaller[0]} x {smaller[1]} CUs carry the longer window's need x {1 + rs.hysteresis:g}"
        else:
            why += " (the longer window is not fully observed yet: no shrinking)"
    wanted = Fleet(replicas, cus, memory)
    if wanted == current:
        return Decision("hold", current, wanted, current, ladder.target_text(current.cus), need, obs.peak_rps,
                        f"{why}; the slice fits")
    grows = wanted.replicas * ladder.at(wanted.cus).rps > capacity + 1e-9 or wanted.memory > current.memory
    action = "up" if grows else "down"
    if last_change is not None and now - last_change < rs.minIntervalSeconds:
        wait = rs.minIntervalSeconds - (now - last_change)
        return Decision("hold", current, wanted, current, ladder.target_text(current.cus), need, obs.peak_rps,
                        f"{why}; wants {_fleet(wanted)} but the last change was {now - last_change:.0f}s ago "
                        f"(next in {wait:.0f}s)")
    step_replicas = current.replicas + max(-rs.maxStepReplicas, min(rs.maxStepReplicas,
                                                                   replicas - current.replicas))
    nxt = Fleet(step_replicas, _next_cus(ladder, rs, current, step_replicas, cus, need), memory)
    bounded = "" if nxt == wanted else f" (bounded by the maximum step; wants {_fleet(wanted)})"
    return Decision(action, current, wanted, nxt, ladder.target_text(nxt.cus), need, obs.peak_rps,
                    f"{why}; {_fleet(current)} -> {_fleet(nxt)}{bounded}")


def _next_cus(ladder: Ladder, rs: RightSizing, current: Fleet, replicas: int, cus: int, need: float) -> int:
    """Each pod's slice after this change. A fleet that grows by a pod may want smaller slices: they are
    taken at once, at the size `replicas` pods need, not `maxStepComputeUnits` at a time — a stop at a
    larger slice would carry more than the hysteresis band and be shrunk by the next pass (one rollout
    too many, capacity up then down)."""
    if replicas > current.replicas:
        each = max(cus, ladder.fit(need / replicas).cus)
        if each < current.cus:
            return each
    return ladder.clamp(current.cus, cus, rs.maxStepComputeUnits)


def _fleet(f: Fleet) -> str:
    return f"{f.replicas} x {f.cus} CUs/{f.memory / GIB:g}Gi"


def window_peak(samples: Sequence[tuple[float, float]], now: float, window: float,
                full: bool = False) -> float | None:
    """Largest value among (time, value) samples inside (now - window, now]; None if there are none or,
    with `full`, if they do not reach back to within a tenth of the window of its start."""
    inside = [(t, v) for t, v in samples if now - window < t <= now and math.isfinite(v)]
    if not inside or (full and inside[0][0] > now - window * 0.9):
        return None
    return max(v for _, v in inside)


# --- the owner's record of changes (the source `gpuslice explain` reads) ------------------------------
@dataclass(frozen=True)
class Change:
    at: float
    action: str
    before: Fleet
    after: Fleet
    peak_rps: float | None
    need_rps: float
    reason: str


@dataclass(frozen=True)
class Record:
    last_change: float | None = None  # the last resize: the minimum interval counts from it
    changes: tuple[Change, ...] = field(default_factory=tuple)
    last_repack: float | None = None  # the last pod re-created to move it (`repack_hold`); resizes ignore it

    def with_change(self, change: Change) -> Record:
        return replace(self, last_change=change.at, changes=(self.changes + (change,))[-HISTORY:])

    def with_repack(self, change: Change) -> Record:
        return replace(self, last_repack=change.at, changes=(self.changes + (change,))[-HISTORY:])

    def to_text(self) -> str:
        doc = {"lastChange": self.last_change, "lastRepack": self.last_repack,
               "changes": [{**asdict(c), "before": asdict(c.before), "after": asdict(c.after)}
                           for c in self.changes]}
        return json.dumps(doc, separators=(",", ":"))


def read_record(annotations: Mapping[str, str] | None, prefix: str) -> Record:
    """The owner's record of changes (empty when it has none)."""
    text = (annotations or {}).get(f"{prefix}/{STATE_KEY}")
    if not text:
        return Record()
    try:
        doc = json.loads(text)
        changes = tuple(Change(c["at"], c["action"], Fleet(**c["before"]), Fleet(**c["after"]), c["peak_rps"],
                               c["need_rps"], c["reason"]) for c in doc.get("changes", []))
        times = [doc.get(key) for key in ("lastChange", "lastRepack")]
        for key, t in zip(("lastChange", "lastRepack"), times, strict=True):
            if t is not None and (isinstance(t, bool) or not isinstance(t, int | float)):
                raise ValueError(f"{key} must be a number of seconds or null, not {t!r}")
        return Record(times[0], changes, times[1])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{prefix}/{STATE_KEY}", text[:80], f"unreadable right-sizing record: {exc}") from None


def rfc3339(t: float) -> str:
    """A Unix time as Kubernetes writes times (seconds, UTC)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def explain_lines(annotations: Mapping[str, str] | None, prefix: str = "gpuslice.io") -> list[str]:
    """One line per right-sizing change recorded on a Deployment/StatefulSet, oldest first — for
    `gpuslice explain` on a pod whose owner `gpuslice rightsize --apply` manages."""
    if not (annotations or {}).get(f"{prefix}/{STATE_KEY}"):
        return []
    record = read_record(annotations, prefix)
    lines = []
    for c in record.changes:
        at = rfc3339(c.at)
        peak = "no samples" if c.peak_rps is None else f"window peak {c.peak_rps:.2f} req/s"
        if c.action == "repack":
            lines.append(f"{at} rightsize repack: {c.reason}")
            continue
        lines.append(f"{at} rightsize {c.action}: {_fleet(c.before)} -> {_fleet(c.after)} ({peak}, need "
                     f"{c.need_rps:.2f})")
    return lines
