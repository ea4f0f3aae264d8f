"""The right-sizing controller against a stub Prometheus on loopback (and an in-memory stand-in for
the Kubernetes side; tests/kube/test_rightsize_real.py runs the same against a real API server)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from extender.core.policy import Policy, load_policy
from extender.core.rightsizing import explain_lines, sla_ladder
from extender.rightsize.controller import RightSizer
from extender.rightsize.metrics import RightsizeMetrics
from extender.rightsize.prometheus import Prometheus, PrometheusError
from extender.rightsize.workloads import Workload, selects
from tests.rightsize.prom_stub import PromStub, prometheus

POLICY = load_policy(Path(__file__).resolve().parents[2] / "policies" / "mi300x-inference.yaml")
NOW = 1_767_225_600.0
GIB = 2**30
LADDER = sla_ladder(POLICY, "llama-3.1-8b", POLICY.profiles["llama-3.1-8b"].minMemory)
AT_32, AT_64, AT_96 = (LADDER.target_text(c) for c in (32, 64, 96))  # the target-rps the extender sizes them for
UP = 1 + POLICY.rightsizing.headroom
# 13 req/s: 2 x 32 CUs fall short of the need (13 x UP), 2 x 64 carry it
assert 2 * LADDER.at(32).rps < 13.0 * UP <= 2 * LADDER.at(64).rps


class FakeWorkloads:
    """What the controller asks of the cluster, kept in memory; a patch changes the stored workload."""

    def __init__(self) -> None:
        self.items: dict[str, Workload] = {}
        self.patches: list[tuple[str, int, dict, dict]] = []
        self.events: list[tuple[str, str, str]] = []
        self.blocked: str | None = None

    def add(self, name: str, target: str = AT_32, replicas: int = 2, rolled_out: bool = True, **extra: str) -> None:
        ann = {"gpuslice.io/profile": "llama-3.1-8b", "gpuslice.io/target-rps": target, **extra}
        self.items[name] = Workload("Deployment", "ml", name, f"uid-{name}", "1", replicas, {}, {"app": name},
                                    ann, rolled_out)

    def list(self, namespace: str | None = None) -> list[Workload]:
        return list(self.items.values())

    def disruption_blocked(self, w: Workload) -> str | None:
        return self.blocked

    def patch(self, w: Workload, replicas: int, template: dict, annotations: dict) -> None:
        self.patches.append((w.name, replicas, template, annotations))
        self.items[w.name] = replace(w, replicas=replicas, annotations={**w.annotations, **annotations},
                                     template_annotations={**w.template_annotations, **template.get("annotations", {})},
                                     resource_version=str(int(w.resource_version) + 1))

    def event(self, w: Workload, reason: str, message: str) -> None:
        self.events.append((w.name, reason, message))


@pytest.fixture
def prom() -> Iterator[PromStub]:
    with prometheus() as stub:
        yield stub


def sizer(prom: PromStub, fake: FakeWorkloads, apply: bool, clock: list[float] | None = None,
          policy: Policy = POLICY) -> RightSizer:
    t = clock or [NOW]
    return RightSizer(lambda: policy, fake, Prometheus(prom.url), RightsizeMetrics(), apply=apply,
                      clock=lambda: t[0])


def steady(rps: float):  # noqa: ANN201
    return lambda t: rps


def test_dry_run_recommends_and_patches_nothing(prom: PromStub) -> None:
    prom.series["vllm:request_success_total"] = [steady(2.0), steady(1.5)]  # two pods' series, summed
    fake = FakeWorkloads()
    fake.add("chat", target=AT_64)  # 2 x 64 CUs for 3.5 req/s: too big
    assert 3.5 * UP * (1 + POLICY.rightsizing.hysteresis) <= LADDER.at(32).rps  # one pod of 32 CUs carries it
    rs = sizer(prom, fake, apply=False)
    [out] = rs.run_once()
    assert out.decision is not None and out.decision.action == "down" and not out.applied
    # one pod fewer at the slice it has (one pod of 32 CUs would be the same GPU share: no rollout for it)
    assert (out.decision.next.replicas, out.decision.next.cus) == (1, 64) and "dry run" in out.note
    assert fake.patches == [] and fake.events == []
    assert 'namespace="ml",pod=~"chat-[a-z0-9]+-[a-z0-9]+"' in prom.queries[0]
    assert rs.metrics.changes.labels("ml", "chat", "down", "recommended")._value.get() == 1


def test_apply_patches_the_template_records_the_change_and_emits_an_event(prom: PromStub) -> None:
    prom.series["vllm:request_success_total"] = [steady(13.0)]
    prom.series["gpuslice_agent_pod_vram_bytes"] = [steady(70 * GIB), steady(80 * GIB)]  # the larger pod counts
    fake = FakeWorkloads()
    fake.add("chat", target=AT_32)  # 2 x 32 CUs fall short of need 15.6
    rs = sizer(prom, fake, apply=True)
    [out] = rs.run_once()
    assert out.applied and out.decision is not None and out.decision.action == "up"
    [(name, replicas, template, annotations)] = fake.patches
    assert (name, replicas) == ("chat", 2)
    # the largest slice of the same GPU share (128 CUs), 64 CUs at most per step
    assert template == {"annotations": {"gpuslice.io/target-rps": AT_96, "gpuslice.io/memory": "88Gi"}}
    [line] = explain_lines(annotations)
    assert "rightsize up: 2 x 32 CUs/55.8794Gi -> 2 x 96 CUs/88Gi (window peak 13.00 req/s, need 15.60)" in line
    assert fake.events[0][:2] == ("chat", "RightSized")
    assert rs.metrics.changes.labels("ml", "chat", "up", "applied")._value.get() == 1


def test_no_second_change_inside_the_minimum_interval(prom: PromStub) -> None:
    level = [13.0]
    prom.series["vllm:request_success_total"] = [lambda t: level[0]]
    fake = FakeWorkloads()
    fake.add("chat", target=AT_32)
    clock = [NOW]
    rs = sizer(prom, fake, apply=True, clock=clock)
    rs.run_once()
    level[0], clock[0] = 30.0, NOW + 300  # demand jumps again 5 minutes later
    [out] = rs.run_once()
    assert not out.applied and "last change was 300s ago" in out.note
    assert len(fake.patches) == 1
    clock[0] = NOW + POLICY.rightsizing.minIntervalSeconds + 1
    [out] = rs.run_once()
    assert out.applied and len(fake.patches) == 2


def test_rollouts_and_disruption_budgets_hold_changes(prom: PromStub) -> None:
    prom.series["vllm:request_success_total"] = [steady(13.0)]
    fake = FakeWorkloads()
    fake.add("chat", target=AT_32, rolled_out=False)
    rs = sizer(prom, fake, apply=True)
    [out] = rs.run_once()
    assert not out.applied and "a rollout is in progress" in out.note
    fake.add("chat", target=AT_32)
    fake.blocked = "PodDisruptionBudget chat allows no disruption now"
    [out] = rs.run_once()
    assert not out.applied and "PodDisruptionBudget chat" in out.note
    assert fake.patches == []


def test_only_sla_workloads_sized_from_target_rps_are_touched(prom: PromStub) -> None:
    prom.series["vllm:request_success_total"] = [steady(13.0)]
    fake = FakeWorkloads()
    fake.add("explicit", target=AT_32, **{"gpuslice.io/compute": "200m"})
    fake.items["plain"] = Workload("Deployment", "ml", "plain", "u", "1", 1, {}, {}, {}, True)
    fake.items["broken"] = Workload("Deployment", "ml", "broken", "u", "1", 1, {}, {},
                                    {"gpuslice.io/profile": "nope", "gpuslice.io/target-rps": "3"}, True)
    outs = {o.workload: o.note for o in sizer(prom, fake, apply=True).run_once()}
    assert set(outs) == {"ml/explicit", "ml/broken"}  # "plain" asks for no slice: not ours
    assert "gpuslice.io/compute is set" in outs["ml/explicit"]
    assert "unknown profile" in outs["ml/broken"]
    assert fake.patches == []


def test_prometheus_errors_are_reported_per_workload(prom: PromStub) -> None:
    fake = FakeWorkloads()
    fake.add("chat")
    rs = RightSizer(lambda: POLICY, fake, Prometheus("http://127.0.0.1:9"), RightsizeMetrics(), apply=True,
                    clock=lambda: NOW)
    [out] = rs.run_once()
    assert out.note.startswith("error: prometheus at http://127.0.0.1:9 unreachable")
    prom.fail = "1:5: parse error: unexpected character"
    with pytest.raises(PrometheusError, match="prometheus 400 for 'x': 1:5: parse error"):
        Prometheus(prom.url).range("x", NOW - 60, NOW, 30)


def test_label_selectors_match_as_kubernetes_does() -> None:
    labels = {"app": "chat", "tier": "prod"}
    assert selects({"matchLabels": {"app": "chat"}}, labels)
    assert not selects({"matchLabels": {"app": "rag"}}, labels)
    assert selects({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["prod", "dev"]}]}, labels)
    assert not selects({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, labels)
    assert selects(None, labels)


def test_a_pod_class_override_is_sized_as_the_extender_sizes_it(prom: PromStub) -> None:
    # the pod says compute-bound; the profile says memory-bound. The extender budgets a compute-bound pod's
    # worst co-tenancy, so the target the controller writes must give, by that rule, the slice it decided
    from extender.core.sizing import size_for_target

    prom.series["vllm:request_success_total"] = [steady(13.0)]
    fake = FakeWorkloads()
    cb = sla_ladder(POLICY, "llama-3.1-8b", POLICY.profiles["llama-3.1-8b"].minMemory, "compute-bound")
    fake.add("chat", target=cb.target_text(32), **{"gpuslice.io/class": "compute-bound"})
    [out] = sizer(prom, fake, True).run_once()
    assert out.applied and out.decision is not None, out.note
    [(_, replicas, template, _)] = fake.patches
    written = float(template["annotations"]["gpuslice.io/target-rps"])
    assert size_for_target(POLICY, "llama-3.1-8b", written, "compute-bound").cus == out.decision.next.cus
    assert replicas * cb.at(out.decision.next.cus).rps >= 13.0 * UP
