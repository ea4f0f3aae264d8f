"""The agent loop: inventory change detection with tree edits, health endpoints, the kube adapter."""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from kubelet_fake import StaticHolders
from kubernetes import client

from extender.agent.kube import KubeAdapter, pod_info
from extender.agent.pods import MemoryActions, MemoryPodSource, PodInfo
from extender.agent.runner import Agent, AgentConfig, MemoryPublisher, health_app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sysfs"
NODES = "sys/class/kfd/kfd/topology/nodes"


def make_agent(root: Path) -> tuple[Agent, MemoryPublisher]:
    plugin_dir = Path(tempfile.mkdtemp(prefix="dp", dir="/tmp"))
    publisher = MemoryPublisher()
    agent = Agent(AgentConfig(node="n1", root=str(root), plugin_dir=str(plugin_dir), shares_per_gpu=2, interval=1,
                              cdi_dir=str(plugin_dir / "cdi")),
                  MemoryPodSource(), MemoryActions(), publisher, holders=StaticHolders())
    return agent, publisher


def test_inventory_republished_only_on_change(host) -> None:
    root = host("mi300x-spx")
    agent, pub = make_agent(root)
    try:
        agent.poll_once()
        assert len(pub.published) == 1 and len(json.loads(pub.published[0])) == 8
        assert agent.devices.version == 1
        agent.poll_once()
        assert len(pub.published) == 1 and agent.devices.version == 1  # nothing changed: no patch, no update

        shutil.rmtree(root / NODES / "9")  # a GPU disappears
        agent.poll_once()
        assert len(json.loads(pub.published[-1])) == 7 and agent.devices.version == 2

        (root / "sys/bus/pci/devices/0000:26:00.0/ras/umc_err_count").write_text("ue: 1\nce: 0\n")
        agent.poll_once()
        inv = json.loads(pub.published[-1])
        assert [g["healthy"] for g in inv][:3] == [True, False, True]
        assert len(pub.published) == 3

        # the partition mode changes: the box comes back in CPX with 64 partitions
        shutil.rmtree(root / NODES)
        shutil.copytree(FIXTURES / "mi300x-cpx" / NODES, root / NODES)
        for bdf in (root / "sys/bus/pci/devices").iterdir():
            (bdf / "current_compute_partition").write_text("CPX\n")
            (bdf / "current_memory_partition").write_text("NPS4\n")
        agent.poll_once()
        inv = json.loads(pub.published[-1])
        assert len(inv) == 64 and {g["partition"] for g in inv} == {"CPX/NPS4"} and inv[0]["computeUnits"] == 38
        assert agent.metrics.registry.get_sample_value("gpuslice_agent_gpus", {"health": "healthy"}) == 56
    finally:
        agent.plugin.stop()
        shutil.rmtree(agent.plugin.dir, ignore_errors=True)


def test_publish_failure_is_retried(host) -> None:
    root = host("mi250x")
    agent, pub = make_agent(root)

    class Flaky(MemoryPublisher):
        fail = True

        def publish_inventory(self, node: str, text: str) -> None:
            if self.fail:
                self.fail = False
                raise RuntimeError("API down")
            super().publish_inventory(node, text)

    agent.publisher = flaky = Flaky()
    assert agent.refresh_inventory() is False and agent.published is None
    assert agent.refresh_inventory() is True and len(flaky.published) == 1


def test_health_endpoints(host) -> None:
    agent, _ = make_agent(host("mi250x"))
    web = health_app(agent).test_client()
    assert web.get("/healthz").status_code == 503 and web.get("/readyz").status_code == 503
    agent.poll_once()
    assert web.get("/healthz").status_code == 200
    r = web.get("/readyz")
    assert r.status_code == 503 and b"not registered" in r.data  # no kubelet in this test
    metrics = web.get("/metrics").data.decode()
    assert "gpuslice_agent_gpus" in metrics and "gpuslice_agent_dmem_enforced 0.0" in metrics
    agent.plugin.stop()


def v1pod(**status) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(uid="u1", namespace="ns", name="p1", annotations={"a": "b"},
                                     creation_timestamp=datetime(2026, 11, 28, 19, 0, 5, tzinfo=UTC)),
        spec=client.V1PodSpec(node_name="n1", init_containers=[
            client.V1Container(name="warm",
                               resources=client.V1ResourceRequirements(limits={"gpuslice.io/gpu-share": "2"}))
        ], containers=[
            client.V1Container(name="main",
                               resources=client.V1ResourceRequirements(limits={"gpuslice.io/gpu-share": "1"})),
            client.V1Container(name="sidecar")]),
        status=client.V1PodStatus(phase="Pending", **status))


def test_pod_info_from_v1pod() -> None:
    p = pod_info(v1pod())
    assert (p.uid, p.key, p.node, p.created, dict(p.share_requests), p.started) == (
        "u1", "ns/p1", "n1", "2026-11-28T19:00:05Z", {"warm": 2, "main": 1}, False)
    running = client.V1ContainerStatus(name="main", image="i", image_id="", ready=True, restart_count=0,
                                       state=client.V1ContainerState(running=client.V1ContainerStateRunning()))
    assert pod_info(v1pod(container_statuses=[running])).started is True


class FakeCore:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, name: str):
        def record(*args, **kwargs):
            self.calls.append((name, args))
            if name == "read_namespaced_pod" and args[0] == "gone":
                raise client.ApiException(status=404)
            if name == "read_namespaced_pod":
                return v1pod()
            return client.V1PodList(items=[v1pod()]) if name == "list_pod_for_all_namespaces" else None
        return record


def test_kube_adapter_calls() -> None:
    core = FakeCore()
    kube = KubeAdapter(core, "n1")  # type: ignore[arg-type]
    assert [p.uid for p in kube.pods_on_node("n1")] == ["u1"]
    pod = kube.get_pod("ns", "p1")
    assert pod is not None and pod.uid == "u1" and kube.get_pod("ns", "gone") is None
    kube.publish_inventory("n1", "[]")
    kube.event(pod, "GpuMemoryLimitExceeded", "too much")
    kube.evict(pod, "too much")
    kube.event(PodInfo("", "ns", "not-yet", None), "GpusliceHandOffRefused", "not shown yet")
    names = [c[0] for c in core.calls]
    assert names == ["list_pod_for_all_namespaces", "read_namespaced_pod", "read_namespaced_pod", "patch_node",
                     "create_namespaced_event", "create_namespaced_pod_eviction", "create_namespaced_event"]
    assert core.calls[1][1] == ("p1", "ns")
    event = core.calls[4][1][1]
    assert event.involved_object.uid == "u1" and event.reason == "GpuMemoryLimitExceeded"
    assert core.calls[5][1][:2] == ("p1", "ns")
    assert core.calls[6][1][1].involved_object.uid is None  # a pod known by name only


def test_agent_registers_with_kubelet_and_becomes_ready(host) -> None:
    from kubelet_fake import FakeKubelet

    agent, _ = make_agent(host("mi300x-spx"))
    kubelet = FakeKubelet(agent.plugin.dir)
    kubelet.start()
    try:
        agent.poll_once()
        assert agent.ready() and len(kubelet.requests) == 1
        assert health_app(agent).test_client().get("/readyz").status_code == 200
        kubelet.restart()
        agent.poll_once()
        assert len(kubelet.requests) == 2
        assert agent.metrics.registry.get_sample_value("gpuslice_agent_kubelet_registrations_total") == 2
    finally:
        agent.plugin.stop()
        kubelet.stop()
        shutil.rmtree(agent.plugin.dir, ignore_errors=True)
