"""A test kubelet: a real gRPC Registration server on a unix socket in a directory."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc

from extender.agent.deviceplugin import KUBELET_SOCKET
from extender.agent.proto import api_pb2, api_pb2_grpc


class FakeKubelet(api_pb2_grpc.RegistrationServicer):
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.requests: list[api_pb2.RegisterRequest] = []
        self.server: grpc.Server | None = None

    def Register(self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext) -> api_pb2.Empty:
        self.requests.append(request)
        return api_pb2.Empty()

    def start(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        api_pb2_grpc.add_RegistrationServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix://{self.dir / KUBELET_SOCKET}")
        self.server.start()

    def restart(self) -> None:
        """What kubelet does on restart: stop, wipe the directory, come back on a new socket."""
        self.stop()
        for entry in self.dir.iterdir():
            entry.unlink()
        self.start()

    def stop(self) -> None:
        if self.server:
            self.server.stop(0).wait()
