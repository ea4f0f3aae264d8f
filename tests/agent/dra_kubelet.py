"""A test kubelet for DRA plugins, over real gRPC on unix sockets: what kubelet's plugin watcher does
with a socket in plugins_registry (GetInfo, check the type and pick a gRPC service the way
`DRAPluginManager.validateSupportedServices` does, NotifyRegistrationStatus), then what its DRA
manager does at pod start and stop (NodePrepareResources / NodeUnprepareResources)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from extender.agent.dra.proto import dra_pb2, dra_pb2_grpc, registration_pb2, registration_pb2_grpc

KUBELET_SERVICES = ("v1.DRAPlugin", "v1beta1.DRAPlugin")  # pkg/kubelet/cm/dra/plugin, 1.36


@dataclass
class ClaimRef:
    namespace: str
    uid: str
    name: str

    def pb(self) -> dra_pb2.Claim:
        return dra_pb2.Claim(namespace=self.namespace, uid=self.uid, name=self.name)


class TestKubelet:
    __test__ = False  # not a pytest class

    def __init__(self, registry_dir: Path) -> None:
        self.registry_dir = registry_dir
        self.endpoint: str | None = None
        self.service: str | None = None

    def register(self, timeout: float = 5.0) -> registration_pb2.PluginInfo:
        (sock,) = sorted(self.registry_dir.glob("*-reg.sock"))
        with grpc.insecure_channel(f"unix://{sock}") as ch:
            reg = registration_pb2_grpc.RegistrationStub(ch)
            info = reg.GetInfo(registration_pb2.InfoRequest(), timeout=timeout)
            chosen = next((s for s in info.supported_versions if s in KUBELET_SERVICES), None)
            ok = info.type == "DRAPlugin" and chosen is not None
            error = "" if ok else f"unsupported plugin {info.type} {list(info.supported_versions)}"
            reg.NotifyRegistrationStatus(registration_pb2.RegistrationStatus(plugin_registered=ok, error=error),
                                         timeout=timeout)
        if ok:
            self.endpoint, self.service = info.endpoint, chosen
        return info

    def _stub(self, ch: grpc.Channel) -> Any:
        assert self.endpoint is not None, "not registered"
        return dra_pb2_grpc.DRAPluginStub(ch)

    def prepare(self, *claims: ClaimRef, timeout: float = 10.0) -> dra_pb2.NodePrepareResourcesResponse:
        with grpc.insecure_channel(f"unix://{self.endpoint}") as ch:
            return self._stub(ch).NodePrepareResources(
                dra_pb2.NodePrepareResourcesRequest(claims=[c.pb() for c in claims]), timeout=timeout)

    def unprepare(self, *claims: ClaimRef, timeout: float = 10.0) -> dra_pb2.NodeUnprepareResourcesResponse:
        with grpc.insecure_channel(f"unix://{self.endpoint}") as ch:
            return self._stub(ch).NodeUnprepareResources(
                dra_pb2.NodeUnprepareResourcesRequest(claims=[c.pb() for c in claims]), timeout=timeout)
