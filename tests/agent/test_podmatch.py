from __future__ import annotations

from pathlib import Path

import pytest

from extender.agent.podmatch import ALLOCATED_ANNOTATION, AllocationError, MemoryPodSource, PodInfo, PodMatcher
from extender.agent.topology import read_topology
from extender.core.assignment import Assignment, GpuAssignment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sysfs"
TOPOLOGY = read_topology(FIXTURES / "mi300x-spx")
GIB = 1 << 30


def asg(gpu: int, cus: range, mem: int = 8 * GIB, node: str = "n1", at: str = "2026-11-28T19:00:00Z") -> str:
    info = TOPOLOGY.gpus[gpu].info
    return Assignment(node=node, gpus=(GpuAssignment(index=gpu, id=info.id, cus=frozenset(cus), burstCus=frozenset(),
                                                     memoryBytes=mem, memoryLimitBytes=mem),),
                      workload_class="memory-bound", policy="p", assignedAt=at).to_json()


def pod(uid: str, created: str, assignment: str | None, shares: int = 1, **kw) -> PodInfo:
    ann = {"gpuslice.io/assignment": assignment} if assignment else {}
    ann.update(kw.pop("annotations", {}))
    return PodInfo(uid, "ns", uid, kw.pop("node", "n1"), created=created, annotations=ann,
                   share_requests={"main": shares}, **kw)


def matcher(*pods: PodInfo) -> tuple[PodMatcher, MemoryPodSource]:
    source = MemoryPodSource(list(pods))
    return PodMatcher("n1", source, lambda: TOPOLOGY), source


def test_oldest_pending_pod_with_matching_count_wins() -> None:
    m, _ = matcher(pod("b", "2026-11-28T19:00:05Z", asg(1, range(32))),
                   pod("a", "2026-11-28T19:00:01Z", asg(0, range(32))),
                   pod("two", "2026-11-28T19:00:00Z", asg(2, range(32)), shares=2),
                   pod("run", "2026-11-28T18:00:00Z", asg(3, range(32)), started=True),
                   pod("gone", "2026-11-28T18:00:00Z", asg(4, range(32)), deleting=True),
                   pod("done", "2026-11-28T18:00:00Z", asg(5, range(32)), phase="Running"),
                   pod("other", "2026-11-28T18:00:00Z", asg(6, range(32)), node="n2"),
                   pod("plain", "2026-11-28T18:00:00Z", None),
                   pod("marked", "2026-11-28T18:00:00Z", asg(7, range(32)),
                       annotations={ALLOCATED_ANNOTATION: '{"main": ["x"]}'}))
    assert m.allocate(["d1"]).pod.uid == "a"
    assert m.allocate(["d2"]).pod.uid == "b"
    assert m.allocate(["d3", "d4"]).pod.uid == "two"
    with pytest.raises(AllocationError, match="no pending pod"):
        m.allocate(["d5"])


def test_retry_with_same_devices_is_idempotent() -> None:
    m, source = matcher(pod("a", "2026-11-28T19:00:01Z", asg(0, range(32))))
    first = m.allocate(["d1"])
    assert m.allocate(["d1"]) is first and len(source.marks) == 1


def test_same_second_different_slices_is_refused() -> None:
    m, _ = matcher(pod("a", "2026-11-28T19:00:01Z", asg(0, range(32))),
                   pod("b", "2026-11-28T19:00:01Z", asg(1, range(64))))
    with pytest.raises(AllocationError, match="ambiguous.*ns/a.*ns/b"):
        m.allocate(["d1"])


def test_same_second_interchangeable_slices_are_taken_in_name_order() -> None:
    m, _ = matcher(pod("b", "2026-11-28T19:00:01Z", asg(1, range(32, 64))),
                   pod("a", "2026-11-28T19:00:01Z", asg(0, range(32))))
    got = [m.allocate(["d1"]).pod.uid, m.allocate(["d2"]).pod.uid]
    assert got == ["a", "b"]


def test_assignment_for_another_node_or_unreadable_is_explained() -> None:
    m, _ = matcher(pod("a", "2026-11-28T19:00:01Z", asg(0, range(32), node="n9")),
                   pod("b", "2026-11-28T19:00:01Z", "{broken"))
    with pytest.raises(AllocationError, match="assigned to node n9.*unreadable assignment"):
        m.allocate(["d1"])


def test_assignment_that_no_longer_fits_fails_and_claims_nothing() -> None:
    m, _ = matcher(pod("a", "2026-11-28T19:00:01Z", asg(0, range(32), mem=200 * GIB)))
    with pytest.raises(AllocationError, match="ns/a"):
        m.allocate(["d1"])
    assert m.claims() == []


def test_forget_missing_drops_claims() -> None:
    m, source = matcher(pod("a", "2026-11-28T19:00:01Z", asg(0, range(32))))
    m.allocate(["d1"])
    m.forget_missing(set())
    assert m.claims() == []
