"""The node's GPUs as one DRA ResourceSlice (resource.k8s.io/v1) of driver `gpu.gpuslice.io`.

One device per physical GPU (per KFD node: a CPX partition is its own device), shared by many claims
(`allowMultipleAllocations`, KEP-5075). Two consumable capacities:
- `computeUnits`: the CUs that may be *guaranteed*, i.e. the GPU's CUs less its shared burst region
  (never guaranteed, see the ledger), with a request policy of min = step = one atom (`xcds` CUs), so
  kube-scheduler itself rounds every request up to XCC-complete amounts. Its default is the whole
  capacity: a request that names no CU count consumes the GPU whole, and the agent then hands out every
  CU, burst region included (DESIGN: whole GPU).
- `memory`: the GPU's VRAM in bytes (no request policy: a request that names none takes it all).
Attributes are what a user selects on: model, CU count, XCDs, NUMA node, XGMI hive, PCIe root, health.
An unhealthy GPU stays in the slice with `healthy: false`; the DeviceClass selects healthy ones only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from extender.agent.topology import PCI_DEVICES, KfdGpu, Topology
from extender.core.atoms import round_up_to_atoms
from extender.core.inventory import GpuInfo, device_name
from extender.core.ledger import burst_region

DRIVER = "gpu.gpuslice.io"
API_VERSION = "resource.k8s.io/v1"
COMPUTE_UNITS = "computeUnits"
MEMORY = "memory"
PCIE_ROOT = "resource.kubernetes.io/pcieRoot"  # the standard attribute (k8s.io/dynamic-resource-allocation)
PCI_BUS_ID = "resource.kubernetes.io/pciBusID"
_ROOT_COMPLEX = re.compile(r"^pci[0-9a-f]{4}:[0-9a-f]{2}$")


def guaranteeable_cus(info: GpuInfo, shared_fraction: float) -> int:
    """The `computeUnits` capacity: CUs outside the shared burst region."""
    return info.computeUnits - len(burst_region(info, shared_fraction))


def pcie_root(root: str | Path, bdf: str | None) -> str | None:
    """The PCIe root complex (`pci<domain>:<bus>`) of a PCI device, from its /sys/bus/pci/devices
    symlink into /sys/devices — the way k8s.io/dynamic-resource-allocation/deviceattribute reads it."""
    if bdf is None:
        return None
    link = Path(root) / PCI_DEVICES / bdf
    if not link.is_symlink():
        return None
    parts = Path(link.readlink()).parts
    for i, part in enumerate(parts[:-1]):
        if part == "devices" and _ROOT_COMPLEX.match(parts[i + 1]):
            return parts[i + 1]
    return None


def _attr(value: object) -> dict[str, object]:
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    return {"string": str(value)}


def device(gpu: KfdGpu, shared_fraction: float, root: str | Path = "/") -> dict[str, Any]:
    """One GPU as a ResourceSlice device."""
    info = gpu.info
    atom = round_up_to_atoms(1, info.xcds)
    cus = guaranteeable_cus(info, shared_fraction)
    attrs: dict[str, object] = {"index": info.index, "uuid": gpu.uuid or info.id, "model": info.model,
                                "computeUnits": info.computeUnits, "xcds": info.xcds,
                                "shaderEngines": info.shaderEngines, "healthy": info.healthy}
    optional = {"numaNode": info.numaNode, "hiveId": info.hiveId, "partition": info.partition,
                PCI_BUS_ID: gpu.bdf, PCIE_ROOT: pcie_root(root, gpu.bdf)}
    attrs.update({k: v for k, v in optional.items() if v is not None})
    return {
        "name": device_name(info),
        "allowMultipleAllocations": True,
        "attributes": {k: _attr(v) for k, v in attrs.items()},
        "capacity": {
            COMPUTE_UNITS: {"value": str(cus), "requestPolicy": {
                "default": str(cus), "validRange": {"min": str(atom), "step": str(atom)}}},
            MEMORY: {"value": str(info.memoryBytes)},
        },
    }


def slice_name(node: str) -> str:
    return f"{node}-{DRIVER}"


def resource_slice(node: str, topology: Topology, shared_fraction: float, generation: int,
                   root: str | Path = "/") -> dict[str, Any]:
    """The node's ResourceSlice: its own pool (named for the node) of one slice."""
    return {
        "apiVersion": API_VERSION, "kind": "ResourceSlice",
        "metadata": {"name": slice_name(node)},
        "spec": {"driver": DRIVER, "nodeName": node,
                 "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
                 "devices": [device(g, shared_fraction, root) for g in topology.gpus]},
    }
