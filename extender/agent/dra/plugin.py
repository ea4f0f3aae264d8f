"""The DRA kubelet plugin over gRPC: plugin registration v1 and the DRAPlugin v1 service.

kubelet's plugin watcher finds `<registry dir>/gpu.gpuslice.io-reg.sock`, calls GetInfo (type
`DRAPlugin`, driver name, the DRA endpoint, the gRPC services we speak — `v1.DRAPlugin`, the newest the
1.36 kubelet knows) and reports the outcome with NotifyRegistrationStatus; it then calls
NodePrepareResources / NodeUnprepareResources on the endpoint. A claim that fails carries its error in
its own response entry (kubelet retries it); the call itself fails only on a malformed request.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from pathlib import Path

import grpc

from extender.agent.dra.claims import ClaimError
from extender.agent.dra.prepare import Preparer
from extender.agent.dra.proto import dra_pb2, dra_pb2_grpc, registration_pb2, registration_pb2_grpc
from extender.agent.dra.slices import DRIVER
from extender.core.errors import GpusliceError

log = logging.getLogger(__name__)

PLUGIN_TYPE = "DRAPlugin"
SERVICES = ("v1.DRAPlugin",)
DEFAULT_REGISTRY_DIR = "/var/lib/kubelet/plugins_registry"
DEFAULT_PLUGIN_DIR = f"/var/lib/kubelet/plugins/{DRIVER}"


class RegistrationService(registration_pb2_grpc.RegistrationServicer):
    def __init__(self, endpoint: Path) -> None:
        self.endpoint = endpoint
        self.registered = threading.Event()
        self.last_error = ""

    def GetInfo(self, request: registration_pb2.InfoRequest,
                context: grpc.ServicerContext) -> registration_pb2.PluginInfo:
        return registration_pb2.PluginInfo(type=PLUGIN_TYPE, name=DRIVER, endpoint=str(self.endpoint),
                                           supported_versions=list(SERVICES))

    def NotifyRegistrationStatus(self, request: registration_pb2.RegistrationStatus,
                                 context: grpc.ServicerContext) -> registration_pb2.RegistrationStatusResponse:
        if request.plugin_registered:
            self.registered.set()
            self.last_error = ""
            log.info("kubelet registered DRA driver %s", DRIVER)
        else:
            self.registered.clear()
            self.last_error = request.error
            log.error("kubelet refused DRA driver %s: %s", DRIVER, request.error)
        return registration_pb2.RegistrationStatusResponse()


class DraService(dra_pb2_grpc.DRAPluginServicer):
    def __init__(self, preparer: Preparer) -> None:
        self.preparer = preparer

    def NodePrepareResources(self, request: dra_pb2.NodePrepareResourcesRequest,
                             context: grpc.ServicerContext) -> dra_pb2.NodePrepareResourcesResponse:
        out = {}
        for claim in request.claims:
            try:
                prepared = self.preparer.prepare(claim.uid, claim.namespace, claim.name)
            except (GpusliceError, OSError) as exc:
                log.error("prepare %s/%s (%s) failed: %s", claim.namespace, claim.name, claim.uid, exc)
                out[claim.uid] = dra_pb2.NodePrepareResourceResponse(error=_words(exc))
                continue
            except Exception as exc:  # e.g. the API server unreachable: this claim fails, kubelet retries it
                log.exception("prepare %s/%s (%s) failed", claim.namespace, claim.name, claim.uid)
                out[claim.uid] = dra_pb2.NodePrepareResourceResponse(error=f"{type(exc).__name__}: {exc}")
                continue
            out[claim.uid] = dra_pb2.NodePrepareResourceResponse(devices=[
                dra_pb2.Device(request_names=[d.request], pool_name=d.pool, device_name=d.device,
                               cdi_device_ids=[d.cdi_id], **({"share_id": d.share_id} if d.share_id else {}))
                for d in prepared.devices])
        return dra_pb2.NodePrepareResourcesResponse(claims=out)

    def NodeUnprepareResources(self, request: dra_pb2.NodeUnprepareResourcesRequest,
                               context: grpc.ServicerContext) -> dra_pb2.NodeUnprepareResourcesResponse:
        out = {}
        for claim in request.claims:
            try:
                self.preparer.unprepare(claim.uid)
                out[claim.uid] = dra_pb2.NodeUnprepareResourceResponse()
            except OSError as exc:
                out[claim.uid] = dra_pb2.NodeUnprepareResourceResponse(error=_words(exc))
        return dra_pb2.NodeUnprepareResourcesResponse(claims=out)


def _words(exc: Exception) -> str:
    if isinstance(exc, ClaimError):
        return f"{exc.key}: {exc.reason} (got {exc.value!r})"
    return str(exc)


class DraPlugin:
    """Serves the registration socket and the DRA socket; re-serves when either file disappears."""

    def __init__(self, preparer: Preparer, registry_dir: str | Path = DEFAULT_REGISTRY_DIR,
                 plugin_dir: str | Path = DEFAULT_PLUGIN_DIR) -> None:
        self.registry_socket = Path(registry_dir) / f"{DRIVER}-reg.sock"
        self.dra_socket = Path(plugin_dir) / "dra.sock"
        self.registration = RegistrationService(self.dra_socket)
        self.service = DraService(preparer)
        self._servers: list[grpc.Server] = []

    def serve(self) -> None:
        self.stop()
        for path, add in ((self.dra_socket, lambda s: dra_pb2_grpc.add_DRAPluginServicer_to_server(self.service, s)),
                          (self.registry_socket, lambda s: registration_pb2_grpc.add_RegistrationServicer_to_server(
                              self.registration, s))):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="dra-plugin"))
            add(server)
            server.add_insecure_port(f"unix://{path}")
            server.start()
            self._servers.append(server)
        log.info("DRA plugin serving on %s (registration %s)", self.dra_socket, self.registry_socket)

    def check(self) -> bool:
        """Re-serve when a socket file is gone (kubelet or a person cleaned the directory). True if it did."""
        if self._servers and self.dra_socket.is_socket() and self.registry_socket.is_socket():
            return False
        self.serve()
        return True

    def stop(self) -> None:
        for server in self._servers:
            server.stop(grace=0.5).wait()
        self._servers = []
        for path in (self.registry_socket, self.dra_socket):
            path.unlink(missing_ok=True)
