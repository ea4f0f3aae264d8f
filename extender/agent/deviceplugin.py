"""The kubelet device plugin for `gpuslice.io/gpu-share` (device plugin API v1beta1 over gRPC).

The plugin serves DevicePlugin on a unix socket in kubelet's device-plugin directory and registers
it on kubelet's `kubelet.sock` there. It advertises `shares_per_gpu` share devices per GPU (health
follows the GPU's). Which shares kubelet picks does not matter: Allocate answers a CDI device named
after them and PreStartContainer (PreStartRequired) finds the pod holding them and writes that CDI
device's spec from the pod's assignment (see handoff). kubelet wipes the directory when it
restarts, so `check()` re-serves and re-registers when our socket is gone or kubelet's socket was
recreated.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from extender.agent.handoff import HandOff, HandOffError
from extender.agent.metrics import AgentMetrics
from extender.agent.pods import RESOURCE
from extender.agent.proto import api_pb2, api_pb2_grpc
from extender.agent.topology import Topology

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
ENDPOINT = "gpuslice-gpu-share.sock"
HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"
# PreStartContainer is where the hand-off happens; GetPreferredAllocation is not needed.
OPTIONS = api_pb2.DevicePluginOptions(pre_start_required=True, get_preferred_allocation_available=False)


@dataclass(frozen=True)
class ShareDevice:
    id: str
    health: str
    numa: int | None


def share_devices(topology: Topology, per_gpu: int) -> tuple[ShareDevice, ...]:
    """`per_gpu` devices per GPU, ids "<gpu id>-<n>" (well under kubelet's 63 characters)."""
    return tuple(ShareDevice(f"{g.info.id}-{n:02d}", HEALTHY if g.info.healthy else UNHEALTHY, g.info.numaNode)
                 for g in topology.gpus for n in range(per_gpu))


class DeviceList:
    """The advertised devices; ListAndWatch streams wait on it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._devices: tuple[ShareDevice, ...] = ()
        self.version = 0
        self.closed = False

    def set(self, devices: tuple[ShareDevice, ...]) -> bool:
        with self._cond:
            if devices == self._devices:
                return False
            self._devices = devices
            self.version += 1
            self._cond.notify_all()
            return True

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self.closed = False

    def wait_newer(self, version: int, timeout: float) -> tuple[int, tuple[ShareDevice, ...]]:
        with self._cond:
            self._cond.wait_for(lambda: self.version != version or self.closed, timeout=timeout)
            return self.version, self._devices


def _device_pb(d: ShareDevice) -> api_pb2.Device:
    topo = api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=d.numa)]) if d.numa is not None else None
    return api_pb2.Device(ID=d.id, health=d.health, topology=topo)


class DevicePluginService(api_pb2_grpc.DevicePluginServicer):
    def __init__(self, devices: DeviceList, handoff: HandOff, metrics: AgentMetrics | None = None) -> None:
        self.devices = devices
        self.handoff = handoff
        self.metrics = metrics

    def GetDevicePluginOptions(self, request: api_pb2.Empty,
                               context: grpc.ServicerContext) -> api_pb2.DevicePluginOptions:
        return OPTIONS

    def ListAndWatch(self, request: api_pb2.Empty,
                     context: grpc.ServicerContext) -> Iterator[api_pb2.ListAndWatchResponse]:
        seen = -1
        while context.is_active() and not self.devices.closed:
            version, devices = self.devices.wait_newer(seen, timeout=1.0)
            if version != seen and not self.devices.closed:
                seen = version
                yield api_pb2.ListAndWatchResponse(devices=[_device_pb(d) for d in devices])

    def GetPreferredAllocation(self, request: api_pb2.PreferredAllocationRequest,
                               context: grpc.ServicerContext) -> api_pb2.PreferredAllocationResponse:
        # Which shares kubelet picks does not matter (the hand-off follows whichever it picked).
        out = []
        for req in request.container_requests:
            ids = list(req.must_include_deviceIDs)
            ids += [d for d in req.available_deviceIDs if d not in ids][: max(req.allocation_size - len(ids), 0)]
            out.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return api_pb2.PreferredAllocationResponse(container_responses=out)

    def Allocate(self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext) -> api_pb2.AllocateResponse:
        """Nothing pod-specific: kubelet has not said which pod this is. The CDI device named after the
        ids gets its edits in PreStartContainer."""
        responses = []
        for req in request.container_requests:
            name = self.handoff.allocate(list(req.devices_ids))
            if self.metrics:
                self.metrics.allocations.labels("ok").inc()
            responses.append(api_pb2.ContainerAllocateResponse(cdi_devices=[api_pb2.CDIDevice(name=name)]))
        return api_pb2.AllocateResponse(container_responses=responses)

    def PreStartContainer(self, request: api_pb2.PreStartContainerRequest,
                          context: grpc.ServicerContext) -> api_pb2.PreStartContainerResponse:
        try:
            self.handoff.prestart(list(request.devices_ids))
        except HandOffError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return api_pb2.PreStartContainerResponse()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


class DevicePlugin:
    """Serves the plugin socket and keeps it registered with kubelet."""

    def __init__(self, plugin_dir: str | Path, devices: DeviceList, handoff: HandOff,
                 endpoint: str = ENDPOINT, resource: str = RESOURCE, metrics: AgentMetrics | None = None) -> None:
        self.dir = Path(plugin_dir)
        self.endpoint = endpoint
        self.resource = resource
        self.devices = devices
        self.service = DevicePluginService(devices, handoff, metrics)
        self._server: grpc.Server | None = None
        self._kubelet: tuple[int, int] | None = None
        self._served: tuple[int, int] | None = None
        self.registrations = 0
        self.registered = False

    @property
    def socket(self) -> Path:
        return self.dir / self.endpoint

    def serve(self) -> None:
        self.stop_server()
        self.devices.reopen()
        if self.socket.exists() or self.socket.is_symlink():
            self.socket.unlink()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="device-plugin"))
        api_pb2_grpc.add_DevicePluginServicer_to_server(self.service, server)
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server = server
        self._served = _identity(self.socket)
        log.info("device plugin serving on %s", self.socket)

    def register(self, timeout: float = 5.0) -> None:
        """Register with kubelet; raises grpc.RpcError when kubelet is not there or refuses."""
        kubelet = self.dir / KUBELET_SOCKET
        with grpc.insecure_channel(f"unix://{kubelet}") as channel:
            stub = api_pb2_grpc.RegistrationStub(channel)
            stub.Register(api_pb2.RegisterRequest(
                version=API_VERSION, endpoint=self.endpoint, resource_name=self.resource, options=OPTIONS),
                timeout=timeout)
        self._kubelet = _identity(kubelet)
        self.registrations += 1
        self.registered = True
        log.info("registered %s with kubelet at %s", self.resource, kubelet)

    def check(self) -> bool:
        """Re-serve and re-register when kubelet restarted (its socket is new, or ours was removed).
        Returns True when it (re-)registered. Safe to call every poll."""
        kubelet_now = _identity(self.dir / KUBELET_SOCKET)
        ours_gone = _identity(self.socket) != self._served or self._server is None
        if kubelet_now is None:
            self.registered = False
            return False
        if not ours_gone and self.registered and kubelet_now == self._kubelet:
            return False
        log.info("kubelet socket %s; (re-)registering", "recreated" if self.registered else "present")
        if ours_gone or not self.registered:
            self.serve()
        try:
            self.register()
        except grpc.RpcError as exc:
            self.registered = False
            log.warning("registration with kubelet failed: %s", exc.details() if hasattr(exc, "details") else exc)
            return False
        return True

    def stop_server(self) -> None:
        if self._server is not None:
            self.devices.close()
            self._server.stop(grace=0.5).wait()
            self._server = None

    def stop(self) -> None:
        self.stop_server()
        if self.socket.exists():
            os.unlink(self.socket)
