"""The device plugin against a test kubelet: real gRPC Registration and PodResources servers on unix
sockets. The hand-off's adversarial orders are in test_handoff.py."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from kubelet_fake import FakeKubelet

from extender.agent.deviceplugin import KUBELET_SOCKET, DeviceList, DevicePlugin, share_devices
from extender.agent.handoff import HandOff
from extender.agent.podresources import PodResourcesClient
from extender.agent.pods import MemoryActions, MemoryPodSource, PodInfo
from extender.agent.proto import api_pb2, api_pb2_grpc
from extender.agent.topology import read_topology
from extender.core.assignment import Assignment, GpuAssignment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sysfs"
GIB = 1 << 30


def assignment(topology_gpu, cus: range, limit: int = 16 * GIB) -> str:
    return Assignment(node="n1", gpus=(GpuAssignment(index=topology_gpu.info.index, id=topology_gpu.info.id,
                                                     cus=frozenset(cus), burstCus=frozenset(), memoryBytes=8 * GIB,
                                                     memoryLimitBytes=limit),),
                      workload_class="memory-bound", policy="p", assignedAt="2026-11-28T19:00:00Z").to_json()


@pytest.fixture
def rig() -> Iterator[tuple[FakeKubelet, DevicePlugin, DeviceList, MemoryPodSource]]:
    short = Path(tempfile.mkdtemp(prefix="dp", dir="/tmp"))  # unix socket paths must stay short
    kubelet = FakeKubelet(short, cdi_dir=short / "cdi")
    kubelet.start()
    topology = read_topology(FIXTURES / "mi300x-spx")
    devices = DeviceList()
    devices.set(share_devices(topology, 4))
    pods = MemoryPodSource()
    handoff = HandOff("n1", pods, PodResourcesClient(str(kubelet.pod_resources_socket)), lambda: topology,
                      short / "cdi", MemoryActions())
    plugin = DevicePlugin(short, devices, handoff)
    yield kubelet, plugin, devices, pods
    plugin.stop()
    kubelet.stop()
    shutil.rmtree(short, ignore_errors=True)


def stub(plugin: DevicePlugin) -> tuple[grpc.Channel, api_pb2_grpc.DevicePluginStub]:
    channel = grpc.insecure_channel(f"unix://{plugin.socket}")
    return channel, api_pb2_grpc.DevicePluginStub(channel)


def test_registers_and_reregisters_after_kubelet_restart(rig) -> None:
    kubelet, plugin, _, _ = rig
    assert plugin.check() is True
    req = kubelet.requests[0]
    assert (req.version, req.endpoint, req.resource_name) == ("v1beta1", "gpuslice-gpu-share.sock",
                                                             "gpuslice.io/gpu-share")
    assert plugin.check() is False  # nothing changed: no churn
    kubelet.restart()  # our socket is wiped and kubelet.sock is new
    assert not plugin.socket.exists()
    assert plugin.check() is True
    assert plugin.socket.exists() and len(kubelet.requests) == 2 and plugin.registrations == 2
    channel, s = stub(plugin)
    with channel:
        assert s.GetDevicePluginOptions(api_pb2.Empty(), timeout=5).pre_start_required is True
    assert req.options.pre_start_required is True  # kubelet reads either; both ask for PreStartContainer


def test_kubelet_absent_is_not_fatal(rig) -> None:
    kubelet, plugin, _, _ = rig
    kubelet.stop()
    (plugin.dir / KUBELET_SOCKET).unlink(missing_ok=True)
    assert plugin.check() is False and plugin.registered is False


def test_list_and_watch_follows_health(rig) -> None:
    _, plugin, devices, _ = rig
    plugin.check()
    channel, s = stub(plugin)
    with channel:
        stream = s.ListAndWatch(api_pb2.Empty(), timeout=10)
        first = next(stream)
        assert len(first.devices) == 32 and {d.health for d in first.devices} == {"Healthy"}
        assert first.devices[0].ID == "0x2c1d5a6b7e8f0000-00" and first.devices[0].topology.nodes[0].ID == 0
        t = read_topology(FIXTURES / "mi300x-spx")
        sick = t.gpus[1].info.__class__(**{**t.gpus[1].info.to_dict(), "healthy": False})
        from dataclasses import replace
        t2 = replace(t, gpus=(t.gpus[0], replace(t.gpus[1], info=sick), *t.gpus[2:7]))  # gpu 7 gone
        devices.set(share_devices(t2, 4))
        second = next(stream)
        assert len(second.devices) == 28
        assert [d.health for d in second.devices if d.ID.startswith(t.gpus[1].info.id)] == ["Unhealthy"] * 4
        stream.cancel()


def test_allocate_answers_a_cdi_device_and_prestart_writes_its_spec(rig) -> None:
    kubelet, plugin, _, pods = rig
    topology = read_topology(FIXTURES / "mi300x-spx")
    pods.pods["u1"] = PodInfo("u1", "ns", "p1", "n1", created="2026-11-28T19:00:00Z",
                              annotations={"gpuslice.io/assignment": assignment(topology.gpus[2], range(32, 64))},
                              share_requests={"main": 1})
    plugin.check()
    channel, s = stub(plugin)
    with channel:
        resp = s.Allocate(api_pb2.AllocateRequest(container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=["0x2c1d5a6b7e8f0700-03"])]), timeout=5)
    c = resp.container_responses[0]
    assert not c.envs and not c.devices and not c.annotations  # nothing pod-specific before PreStart
    (cdi,) = [d.name for d in c.cdi_devices]
    assert cdi.startswith("gpuslice.io/slice=")
    kubelet.pod_devices[("ns", "p1")] = {"main": (["0x2c1d5a6b7e8f0700-03"], c)}  # kubelet records it
    got = kubelet.start_container("ns", "p1", "main")
    assert got.env["HSA_CU_MASK"] == "0:32-63" and got.env["ROCR_VISIBLE_DEVICES"] == "GPU-2C1D5A6B7E8F0200"
    assert got.devices == ["/dev/kfd", "/dev/dri/renderD130"]
    assert [p.name for p in (plugin.dir / "cdi").iterdir()] == [f"gpuslice.io-slice-{cdi.split('=')[1]}.json"]


def test_prestart_for_devices_nobody_holds_fails_loudly(rig) -> None:
    _, plugin, _, _ = rig
    plugin.check()
    channel, s = stub(plugin)
    with channel, pytest.raises(grpc.RpcError) as err:
        s.PreStartContainer(api_pb2.PreStartContainerRequest(devices_ids=["0x2c1d5a6b7e8f0700-01"]), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "refusing to guess" in err.value.details()


def test_concurrent_hand_offs_each_get_their_own_pod(rig) -> None:
    kubelet, plugin, _, pods = rig
    topology = read_topology(FIXTURES / "mi300x-spx")
    for i in range(8):  # 8 pods created in the same second, each with its own slice
        pods.pods[f"u{i}"] = PodInfo(f"u{i}", "ns", f"p{i}", "n1", created="2026-11-28T19:00:00Z",
                                     annotations={"gpuslice.io/assignment": assignment(topology.gpus[i], range(64))},
                                     share_requests={"main": 1})
    plugin.check()
    for i in range(8):
        kubelet.admit("ns", f"p{i}", {"main": [f"0x2c1d5a6b7e8f0000-{(7 - i) % 4:02d}" if i < 4 else
                                               f"0x2c1d5a6b7e8f0100-{i % 4:02d}"]})
    results: dict[int, str] = {}
    errors: list[Exception] = []

    def call(n: int) -> None:
        try:
            results[n] = kubelet.start_container("ns", f"p{n}", "main").env["ROCR_VISIBLE_DEVICES"]
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == {n: topology.gpus[n].uuid for n in range(8)}


def test_two_gpu_pod_and_preferred_allocation(rig) -> None:
    kubelet, plugin, _, pods = rig
    t = read_topology(FIXTURES / "mi300x-spx")
    a = Assignment(node="n1", gpus=tuple(GpuAssignment(index=i, id=t.gpus[i].info.id, cus=frozenset(range(64)),
                                                        burstCus=frozenset(), memoryBytes=GIB, memoryLimitBytes=GIB)
                                          for i in (6, 7)),
                   workload_class="compute-bound", policy="p", assignedAt="2026-11-28T19:00:00Z").to_json()
    pods.pods["u2"] = PodInfo("u2", "ns", "big", "n1", created="2026-11-28T19:00:00Z",
                              annotations={"gpuslice.io/assignment": a}, share_requests={"main": 2})
    plugin.check()
    channel, s = stub(plugin)
    with channel:
        pref = s.GetPreferredAllocation(api_pb2.PreferredAllocationRequest(container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=["a", "b", "c"],
                                                        must_include_deviceIDs=["c"], allocation_size=2)]), timeout=5)
        assert list(pref.container_responses[0].deviceIDs) == ["c", "a"]
    kubelet.admit("ns", "big", {"main": ["a", "c"]})
    got = kubelet.start_container("ns", "big", "main")
    assert got.env["HSA_CU_MASK"] == "0-1:0-63" and got.env["ROCR_VISIBLE_DEVICES"].count("GPU-") == 2
    assert len(got.devices) == 3
