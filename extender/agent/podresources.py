"""kubelet's PodResources API (v1, `List`): which pod and container hold which devices.

kubelet serves it on a unix socket (/var/lib/kubelet/pod-resources/kubelet.sock) from its own
device-manager state, the same record it passes to the runtime, so the answer is kubelet's, not a
guess. A container's devices of one resource come as one ContainerDevices entry per NUMA node;
they are joined here. Only pods kubelet admitted are listed, and of their init containers only the
restartable ones (sidecars).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import grpc

from extender.agent.proto import podresources_v1_pb2, podresources_v1_pb2_grpc

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"


@dataclass(frozen=True)
class HeldDevices:
    namespace: str
    pod: str
    container: str
    device_ids: frozenset[str]


class DeviceHolders(Protocol):
    def held(self, resource: str) -> list[HeldDevices]:
        """Every container holding devices of `resource`; raises grpc.RpcError when kubelet does not answer."""
        ...


def held_devices(response: podresources_v1_pb2.ListPodResourcesResponse, resource: str) -> list[HeldDevices]:
    out = []
    for pod in response.pod_resources:
        for container in pod.containers:
            ids = frozenset(i for d in container.devices if d.resource_name == resource for i in d.device_ids)
            if ids:
                out.append(HeldDevices(pod.namespace, pod.name, container.name, ids))
    return out


class PodResourcesClient:
    def __init__(self, socket: str = DEFAULT_SOCKET, timeout: float = 5.0) -> None:
        self.socket = socket
        self.timeout = timeout

    def held(self, resource: str) -> list[HeldDevices]:
        # A channel a call: kubelet re-creates the socket when it restarts.
        with grpc.insecure_channel(f"unix://{self.socket}") as channel:
            stub = podresources_v1_pb2_grpc.PodResourcesListerStub(channel)
            response = stub.List(podresources_v1_pb2.ListPodResourcesRequest(), timeout=self.timeout)
        return held_devices(response, resource)
