"""A test kubelet, talking to the plugin only over real gRPC on unix sockets, as kubelet does.

- Registration on `<dir>/kubelet.sock`;
- PodResources v1 (`List`) on `<dir>/pod-resources.sock`, answered from its own podDevices: one
  ContainerDevices entry per (resource, NUMA node) as kubelet's devicemanager reports them;
- a device manager: `admit` calls the plugin's Allocate for each container and records the answer
  right after it returns (manager.go allocateContainerResources -> podDevices.insert); `start` calls
  PreStartContainer when the plugin asked for it (callPreStartContainerIfNeeded) and then does what
  the runtime does at CreateContainer: applies the AllocateResponse's envs and devices and resolves
  its CDI devices from the spec directory, failing on one it cannot resolve.
"""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from extender.agent.cdi import read_spec
from extender.agent.deviceplugin import KUBELET_SOCKET
from extender.agent.podresources import HeldDevices
from extender.agent.pods import RESOURCE
from extender.agent.proto import api_pb2, api_pb2_grpc, podresources_v1_pb2, podresources_v1_pb2_grpc

POD_RESOURCES_SOCKET = "pod-resources.sock"


class CreateContainerError(Exception):
    """What the runtime says when a CDI device cannot be resolved."""


@dataclass
class Container:
    """What a container got: env and device nodes after the AllocateResponse and the CDI edits."""

    env: dict[str, str] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)
    cdi: list[str] = field(default_factory=list)


def resolve_cdi(spec_dir: Path, qualified: str) -> tuple[dict[str, str], list[str]]:
    kind, _, name = qualified.partition("=")
    for path in sorted(spec_dir.glob("*.json")):
        spec_kind, device, edits = read_spec(path)
        if (spec_kind, device) == (kind, name):
            return dict(edits.env), [d.host_path or d.path for d in edits.device_nodes]
    raise CreateContainerError(f"unresolvable CDI devices {qualified}")


class FakeKubelet(api_pb2_grpc.RegistrationServicer, podresources_v1_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, directory: Path, cdi_dir: Path | None = None, numa: dict[str, int] | None = None) -> None:
        self.dir = directory
        self.cdi_dir = cdi_dir
        self.numa = numa or {}  # device id -> NUMA node, for the per-NUMA ContainerDevices entries
        self.requests: list[api_pb2.RegisterRequest] = []
        self.server: grpc.Server | None = None
        # podDevices: (namespace, pod) -> container -> (device ids, the plugin's answer)
        self.pod_devices: dict[tuple[str, str], dict[str, tuple[list[str], api_pb2.ContainerAllocateResponse]]] = {}
        self.list_calls = 0
        self.init_containers: set[tuple[str, str, str]] = set()  # regular init containers: not in List

    @property
    def pod_resources_socket(self) -> Path:
        return self.dir / POD_RESOURCES_SOCKET

    # --- kubelet's gRPC services ---
    def Register(self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext) -> api_pb2.Empty:
        self.requests.append(request)
        return api_pb2.Empty()

    def List(self, request: podresources_v1_pb2.ListPodResourcesRequest,
             context: grpc.ServicerContext) -> podresources_v1_pb2.ListPodResourcesResponse:
        self.list_calls += 1
        pods = []
        for (namespace, name), containers in sorted(self.pod_devices.items()):
            out = []
            for cname, (ids, _) in sorted(containers.items()):
                if (namespace, name, cname) in self.init_containers:
                    continue  # server_v1.go lists only restartable init containers
                by_numa: dict[int, list[str]] = {}
                for i in ids:
                    by_numa.setdefault(self.numa.get(i, -1), []).append(i)
                entries = [podresources_v1_pb2.ContainerDevices(resource_name=RESOURCE, device_ids=d)
                           for d in by_numa.values()]
                out.append(podresources_v1_pb2.ContainerResources(name=cname, devices=entries))
            pods.append(podresources_v1_pb2.PodResources(name=name, namespace=namespace, containers=out))
        return podresources_v1_pb2.ListPodResourcesResponse(pod_resources=pods)

    def start(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(self, self.server)
        podresources_v1_pb2_grpc.add_PodResourcesListerServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix://{self.dir / KUBELET_SOCKET}")
        self.server.add_insecure_port(f"unix://{self.pod_resources_socket}")
        self.server.start()

    def restart(self) -> None:
        """What kubelet does on restart: stop, wipe the directory, come back on a new socket."""
        self.stop()
        for entry in self.dir.iterdir():
            if entry.is_socket() or entry.is_file():
                entry.unlink()
        self.start()

    def stop(self) -> None:
        if self.server:
            self.server.stop(0).wait()

    # --- kubelet's device manager, calling the plugin ---
    def _plugin(self) -> tuple[grpc.Channel, api_pb2_grpc.DevicePluginStub]:
        channel = grpc.insecure_channel(f"unix://{self.dir / self.requests[-1].endpoint}")
        return channel, api_pb2_grpc.DevicePluginStub(channel)

    def admit(self, namespace: str, pod: str, containers: dict[str, list[str]], init: tuple[str, ...] = ()) -> None:
        """Allocate each container's devices and record the answer with the pod (at admission).
        `init` names the regular init containers among them."""
        self.init_containers |= {(namespace, pod, c) for c in init}
        channel, stub = self._plugin()
        with channel:
            for cname, ids in containers.items():
                resp = stub.Allocate(api_pb2.AllocateRequest(container_requests=[
                    api_pb2.ContainerAllocateRequest(devices_ids=ids)]), timeout=10)
                self.pod_devices.setdefault((namespace, pod), {})[cname] = (list(ids), resp.container_responses[0])

    def start_container(self, namespace: str, pod: str, container: str) -> Container:
        """PreStartContainer (when required), then CreateContainer as the runtime builds it."""
        ids, resp = self.pod_devices[(namespace, pod)][container]
        channel, stub = self._plugin()
        with channel:
            if stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=10).pre_start_required:
                stub.PreStartContainer(api_pb2.PreStartContainerRequest(devices_ids=ids), timeout=10)
        out = Container(env=dict(resp.envs), devices=[d.host_path for d in resp.devices],
                        cdi=[d.name for d in resp.cdi_devices])
        for name in out.cdi:
            assert self.cdi_dir is not None, "the plugin answered a CDI device and this kubelet has no CDI directory"
            env, devices = resolve_cdi(self.cdi_dir, name)
            out.env.update(env)
            out.devices.extend(devices)
        return out

    def remove_pod(self, namespace: str, pod: str) -> None:
        """The pod terminated: kubelet frees its devices (UpdateAllocatedDevices)."""
        self.pod_devices.pop((namespace, pod), None)


class StaticHolders:
    """A DeviceHolders with a fixed answer, for tests that do not need a kubelet."""

    def __init__(self, held: list[HeldDevices] | None = None) -> None:
        self.held_list = held or []

    def held(self, resource: str) -> list[HeldDevices]:
        return list(self.held_list)
