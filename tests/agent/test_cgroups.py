"""Per-pod VRAM attribution and dmem.max on every recorded cgroup layout (tests/fixtures/cgroups,
written by tests/fixtures/make_cgroups.py): cgroup v1 and v2, containerd and CRI-O, systemd and
cgroupfs drivers, the agent in the host's cgroup namespace or in a private one (`0::/../../..`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from extender.agent.cgroups import dmem_available, find_pod_cgroup, pod_of_cgroup_path, pod_of_process, read_dmem_max
from extender.agent.enforcement import MemoryEnforcer
from extender.agent.metrics import AgentMetrics
from extender.agent.pods import MemoryActions, PodInfo
from extender.agent.topology import read_topology
from extender.agent.vram import sample_vram
from extender.core.assignment import Assignment, GpuAssignment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LAYOUTS = sorted(p.name for p in (FIXTURES / "cgroups").iterdir())
TOPOLOGY = read_topology(FIXTURES / "sysfs" / "mi300x-spx")
G0, G1 = TOPOLOGY.gpus[0].gpu_id, TOPOLOGY.gpus[1].gpu_id
GIB = 1 << 30
POD_A = "0a0a0a0a-1111-4222-8333-444455556666"
POD_B = "0b0b0b0b-1111-4222-8333-444455556666"
POD_C = "0c0c0c0c-1111-4222-8333-444455556666"


def test_every_layout_is_recorded() -> None:
    assert LAYOUTS == sorted([
        "v1-containerd-cgroupfs", "v1-crio-systemd", "v2-containerd-cgroupfs-cgroupns", "v2-containerd-systemd",
        "v2-containerd-systemd-cgroupns", "v2-crio-systemd", "v2-crio-systemd-cgroupns",
        "v2-kind-containerd-systemd-cgroupns"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_vram_is_attributed_to_pods(layout: str) -> None:
    sample = sample_vram(FIXTURES / "cgroups" / layout)
    assert sample.by_pod() == {(POD_A, G0): 3 * GIB, (POD_B, G1): 5 * GIB, (POD_C, G0): 7 * GIB, (POD_C, G1): GIB}
    assert [(p.pid, p.pod_uid) for p in sample.processes if p.pod_uid is None] == [(5005, None)]
    assert sample.skipped == ()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_container_ids_and_host_paths(layout: str) -> None:
    text = (FIXTURES / "cgroups" / layout / "proc/5004/cgroup").read_text()
    pod = pod_of_process(text)
    assert pod is not None and pod.pod_uid == POD_C
    assert pod.container_id == "0c0c0c0c00" * 6 + "abcd"
    if "cgroupns" in layout:
        assert pod.path is None  # relative to the agent's namespace: found by UID instead
    else:
        assert pod.path is not None and pod.path.endswith((f"pod{POD_C}", f"pod{POD_C.replace('-', '_')}.slice"))


def assigned(uid: str, limits: dict[int, int]) -> PodInfo:
    a = Assignment(node="n1", gpus=tuple(GpuAssignment(index=i, id=TOPOLOGY.gpus[i].info.id, cus=frozenset(range(32)),
                                                         burstCus=frozenset(), memoryBytes=lim, memoryLimitBytes=lim)
                                          for i, lim in limits.items()),
                   workload_class="memory-bound", policy="p", assignedAt="x")
    return PodInfo(uid, "ns", f"pod-{uid[:2]}", "n1", phase="Running",
                   annotations={"gpuslice.io/assignment": a.to_json()})


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name.startswith("v2")])
def test_dmem_max_is_written_on_each_pods_cgroup(layout: str, tmp_path: Path) -> None:
    root = tmp_path / layout
    shutil.copytree(FIXTURES / "cgroups" / layout, root)
    pods = [assigned(POD_A, {0: 4 * GIB}), assigned(POD_B, {1: 6 * GIB}), assigned(POD_C, {0: 6 * GIB, 1: 2 * GIB})]
    actions = MemoryActions()
    enforcer = MemoryEnforcer(root, actions, AgentMetrics())
    assert enforcer.dmem
    written = enforcer.apply_dmem(pods, TOPOLOGY)
    assert len(written) == 3
    for uid, limits in ((POD_A, {"0000:05:00.0": 4 * GIB}), (POD_B, {"0000:26:00.0": 6 * GIB}),
                        (POD_C, {"0000:05:00.0": 6 * GIB, "0000:26:00.0": 2 * GIB})):
        cgroup = find_pod_cgroup(root, uid)
        assert cgroup is not None and pod_of_cgroup_path(cgroup).pod_uid == uid
        on_disk = read_dmem_max(root, cgroup)
        assert {r: on_disk[f"drm/{r}/vram"] for r in limits} == {r: str(v) for r, v in limits.items()}
    breaches = enforcer.check(sample_vram(root), pods, TOPOLOGY)  # C uses 7 GiB of its 6 on GPU 0
    assert [(b.pod, b.used, b.limit) for b in breaches] == [("ns/pod-0c", 7 * GIB, 6 * GIB)]


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name.startswith("v1")])
def test_no_dmem_on_cgroup_v1(layout: str) -> None:
    root = FIXTURES / "cgroups" / layout
    assert not dmem_available(root)
    assert MemoryEnforcer(root, MemoryActions(), AgentMetrics()).apply_dmem([assigned(POD_A, {0: GIB})], TOPOLOGY) == {}


@pytest.mark.parametrize("path", [
    "/../../pod0a0a0a0a-1111-4222-8333-444455556666/abc",  # cgroupfs, namespaced
    "/../../../kubepods-besteffort.slice/kubepods-besteffort-pod0a0a0a0a_1111_4222_8333_444455556666.slice",
    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod0a0a0a0a_1111_4222_8333_444455556666.slice",
])
def test_pod_paths_seen_from_anywhere(path: str) -> None:
    assert pod_of_cgroup_path(path).pod_uid == POD_A


@pytest.mark.parametrize("path", [
    "/user.slice/pod0a0a0a0a-1111-4222-8333-444455556666",  # a pod-looking name outside kubelet's tree
    "/system.slice/foo-pod0a0a0a0a_1111_4222_8333_444455556666.slice",
    "/../system.slice/containerd.service", "/..", "/",
])
def test_non_pod_paths(path: str) -> None:
    assert pod_of_cgroup_path(path) is None
