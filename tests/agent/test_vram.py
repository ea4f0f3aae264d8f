"""VRAM accounting and dmem against the recorded proc/cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from extender.agent.cgroups import (
    dmem_available,
    dmem_regions,
    find_pod_cgroup,
    pod_of_cgroup_path,
    pod_of_process,
    read_dmem_max,
    vram_region,
)
from extender.agent.enforcement import MemoryEnforcer
from extender.agent.metrics import AgentMetrics
from extender.agent.pods import MemoryActions, PodInfo
from extender.agent.topology import read_topology
from extender.agent.vram import sample_vram
from extender.core.assignment import Assignment, GpuAssignment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sysfs"
GIB = 1 << 30
SYSTEMD = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d"
CGROUPFS = "7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d"
GUARANTEED = "c0ffee00-1111-4222-8333-944445555666"


@pytest.mark.parametrize(("path", "uid", "pod_path", "container"), [
    ("/kubepods/burstable/pod7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d/" + "ab" * 32,
     CGROUPFS, "kubepods/burstable/pod" + CGROUPFS, "ab" * 32),
    ("/kubepods/pod" + CGROUPFS, CGROUPFS, "kubepods/pod" + CGROUPFS, None),
    ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_5f60_4a7b_8c9d_0e1f2a3b4c5d.slice/"
     "cri-containerd-" + "cd" * 32 + ".scope", SYSTEMD,
     "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_5f60_4a7b_8c9d_0e1f2a3b4c5d.slice",
     "cd" * 32),
    ("/kubepods.slice/kubepods-podC0FFEE00_1111_4222_8333_944445555666.slice/crio-" + "ef" * 32 + ".scope",
     GUARANTEED, "kubepods.slice/kubepods-podC0FFEE00_1111_4222_8333_944445555666.slice", "ef" * 32),
])
def test_pod_of_cgroup_path(path: str, uid: str, pod_path: str, container: str | None) -> None:
    pod = pod_of_cgroup_path(path)
    assert pod is not None and (pod.pod_uid, pod.path, pod.container_id) == (uid, pod_path, container)


@pytest.mark.parametrize("path", ["/system.slice/kubelet.service", "/", "/user.slice/pod1234", "/kubepods.slice"])
def test_non_pod_cgroups(path: str) -> None:
    assert pod_of_cgroup_path(path) is None


def test_cgroup_v1_lines() -> None:
    text = f"12:memory:/kubepods/besteffort/pod{CGROUPFS}/abc123abc123\n1:name=systemd:/system.slice\n"
    assert pod_of_process(text).pod_uid == CGROUPFS
    assert pod_of_process("0::/init.scope\n") is None


def test_sample_sums_per_pod_and_gpu() -> None:
    root = FIXTURES / "mi300x-spx"
    t = read_topology(root)
    g0, g1 = t.gpus[0].gpu_id, t.gpus[1].gpu_id
    sample = sample_vram(root)
    assert sample.by_pod() == {(SYSTEMD, g0): 32 * GIB, (CGROUPFS, g1): 9 * GIB,
                               (GUARANTEED, g0): GIB, (GUARANTEED, g1): GIB}
    host = [p for p in sample.processes if p.pod_uid is None]
    assert [(p.pid, p.bytes) for p in host] == [(1717, 512 << 20)]


def test_sample_skips_malformed_and_vanished(host) -> None:
    root = host("mi300x-spx")
    t = read_topology(root)
    (root / f"sys/class/kfd/kfd/proc/4343/vram_{t.gpus[1].gpu_id}").write_text("lots\n")
    (root / "proc/4444/cgroup").unlink()
    sample = sample_vram(root)
    assert (CGROUPFS, t.gpus[1].gpu_id) not in sample.by_pod()
    assert not any(p.pod_uid == GUARANTEED for p in sample.processes)  # its process is no longer a pod's
    reasons = dict(sample.skipped)
    assert any("not a byte count" in r for r in reasons.values()) and "proc/4444/cgroup" in reasons


def assigned(uid: str, gpus: list[tuple[int, int]], t) -> PodInfo:
    a = Assignment(node="n1", gpus=tuple(GpuAssignment(index=i, id=t.gpus[i].info.id, cus=frozenset(range(32)),
                                                         burstCus=frozenset(), memoryBytes=limit,
                                                         memoryLimitBytes=limit) for i, limit in gpus),
                   workload_class="memory-bound", policy="p", assignedAt="x")
    return PodInfo(uid, "ns", f"pod-{uid[:4]}", "n1", phase="Running",
                   annotations={"gpuslice.io/assignment": a.to_json()})


def test_monitor_reports_breach_once_and_exports_usage() -> None:
    root = FIXTURES / "mi300x-spx"
    t = read_topology(root)
    pods = [assigned(SYSTEMD, [(0, 24 * GIB)], t), assigned(CGROUPFS, [(1, 16 * GIB)], t),
            assigned(GUARANTEED, [(0, 4 * GIB)], t)]  # uses gpu 1 too, which it was not given
    actions, metrics = MemoryActions(), AgentMetrics()
    enforcer = MemoryEnforcer(root, actions, metrics, "monitor")
    breaches = enforcer.check(sample_vram(root), pods, t)
    assert sorted((b.pod, b.gpu, b.used, b.limit) for b in breaches) == [
        ("ns/pod-1b2c", t.gpus[0].info.id, 32 * GIB, 24 * GIB), ("ns/pod-c0ff", t.gpus[1].info.id, GIB, 0)]
    assert [e[1] for e in actions.events] == ["GpuMemoryLimitExceeded"] * 2 and actions.evictions == []
    value = metrics.registry.get_sample_value
    assert value("gpuslice_agent_pod_vram_bytes", {"namespace": "ns", "pod": "pod-7a8b",
                                                   "gpu": t.gpus[1].info.id}) == 9 * GIB
    assert value("gpuslice_agent_vram_breaches_total", {"action": "monitor"}) == 2
    assert enforcer.check(sample_vram(root), pods, t) == []  # still over: not reported again
    assert len(actions.events) == 2


def test_evict_policy_evicts() -> None:
    root = FIXTURES / "mi300x-spx"
    t = read_topology(root)
    actions = MemoryActions()
    MemoryEnforcer(root, actions, AgentMetrics(), "evict").check(
        sample_vram(root), [assigned(SYSTEMD, [(0, 24 * GIB)], t)], t)
    assert actions.evictions == [("ns/pod-1b2c", actions.events[0][2])]


def test_dmem_limits_written_on_pod_cgroups(host) -> None:
    root = host("mi300x-spx")
    t = read_topology(root)
    assert dmem_available(root) and vram_region("0000:05:00.0", dmem_regions(root)) == "drm/0000:05:00.0/vram"
    enforcer = MemoryEnforcer(root, MemoryActions(), AgentMetrics())
    assert "kernel" in enforcer.startup_message()
    pods = [assigned(SYSTEMD, [(0, 24 * GIB), (1, 8 * GIB)], t), assigned(CGROUPFS, [(1, 16 * GIB)], t),
            assigned("99999999-9999-4999-8999-999999999999", [(2, GIB)], t)]  # no cgroup yet: skipped
    written = enforcer.apply_dmem(pods, t)
    assert len(written) == 2
    cg = find_pod_cgroup(root, SYSTEMD)
    limits = read_dmem_max(root, cg)
    assert limits["drm/0000:05:00.0/vram"] == str(24 * GIB) and limits["drm/0000:26:00.0/vram"] == str(8 * GIB)
    assert limits["drm/0000:46:00.0/vram"] == "max"
    assert enforcer.apply_dmem(pods, t) == {}  # already in force: no rewrite


def test_no_dmem_on_cpx_host_says_so() -> None:
    enforcer = MemoryEnforcer(FIXTURES / "mi300x-cpx", MemoryActions(), AgentMetrics())
    assert not enforcer.dmem and "cooperative" in enforcer.startup_message()
    assert enforcer.apply_dmem([], read_topology(FIXTURES / "mi300x-cpx")) == {}
