"""The node's GPUs as the kernel's KFD topology describes them, read from sysfs under a root.

File formats (amdkfd `kfd_topology.c`, read the same way by libhsakmt `topology.c`):
`ROOT/sys/class/kfd/kfd/topology/nodes/<n>/properties` holds one `name value` pair a line, values
unsigned decimal (`unique_id` and `hive_id` are 64-bit). `.../nodes/<n>/gpu_id` holds the KFD
gpu_id (0 on CPU nodes). `.../nodes/<n>/mem_banks/<b>/properties` holds `heap_type`,
`size_in_bytes`, `flags`, `width`, `mem_clk_max`; heap types 1 and 2 (frame buffer public/private)
are VRAM. CUs = simd_count / simd_per_cu; shader engines = array_count / simd_arrays_per_engine
(both counts already summed over the node's XCCs). CPU-only nodes have simd_count 0.

A node that cannot be read is left out with a logged reason, never guessed at.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from extender.core.inventory import GpuInfo

log = logging.getLogger(__name__)

KFD_TOPOLOGY = "sys/class/kfd/kfd/topology/nodes"
PCI_DEVICES = "sys/bus/pci/devices"
VRAM_HEAP_TYPES = (1, 2)  # HSA_HEAPTYPE_FRAME_BUFFER_PUBLIC / _PRIVATE

# PCI device id -> marketing model (the policy's model table is keyed by these names).
MODELS_BY_DEVICE_ID = {
    0x74A1: "MI300X", 0x74A9: "MI300X", 0x74B5: "MI300X", 0x74A5: "MI325X", 0x74A0: "MI300A",
    0x7408: "MI250X", 0x740C: "MI250X", 0x740F: "MI210",
}
# Without these the published inventory would be a guess; everything else only adds detail.
_REQUIRED = ("simd_count", "simd_per_cu", "array_count", "simd_arrays_per_engine")
_RAS_BLOCKS = ("umc", "gfx", "sdma", "mmhub", "xgmi_wafl", "pcie_bif", "hdp")


@dataclass(frozen=True)
class KfdGpu:
    """One GPU (or one compute partition) as KFD sees it, plus what the inventory publishes."""

    info: GpuInfo
    node: int
    gpu_id: int | None  # None when the gpu_id file is unreadable: no VRAM accounting for this GPU
    unique_id: int
    render_minor: int | None
    bdf: str | None
    device_id: int | None
    problems: tuple[str, ...] = ()

    @property
    def uuid(self) -> str | None:
        """ROCr's UUID for ROCR_VISIBLE_DEVICES ("GPU-" + 16 upper-case hex digits); None when 0."""
        return f"GPU-{self.unique_id:016X}" if self.unique_id else None


@dataclass(frozen=True)
class Topology:
    gpus: tuple[KfdGpu, ...]
    skipped: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (path, reason)

    def inventory(self) -> list[GpuInfo]:
        return [g.info for g in self.gpus]

    def by_id(self, gpu: str) -> KfdGpu | None:
        return next((g for g in self.gpus if g.info.id == gpu), None)

    def by_gpu_id(self, gpu_id: int) -> KfdGpu | None:
        return next((g for g in self.gpus if g.gpu_id == gpu_id), None)


class _Skip(Exception):
    """A node or file that cannot be used; the message is the reason."""


def parse_properties(text: str) -> dict[str, int]:
    """`name value` lines, values unsigned decimal. A malformed line raises _Skip (the whole file is
    then untrustworthy: it is either truncated or not a KFD properties file)."""
    props: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise _Skip(f"line {n} is not 'name <unsigned int>': {line.strip()!r}")
        props[parts[0]] = int(parts[1])
    return props


def _read_props(path: Path) -> dict[str, int]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise _Skip(f"cannot read: {exc.strerror or exc}") from None
    return parse_properties(text)


def _read_int(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise _Skip(f"cannot read {path.name}: {exc.strerror or exc}") from None
    if not text.lstrip("-").isdigit():
        raise _Skip(f"{path.name} is not an integer: {text!r}")
    return int(text)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def bdf_of(domain: int, location_id: int) -> str:
    """PCI address from KFD's domain and location_id (bus << 8 | devfn; partitions add the partition
    number above bit 27, which is not part of the address)."""
    pci = location_id & 0xFFFF
    return f"{domain:04x}:{pci >> 8:02x}:{(pci >> 3) & 0x1F:02x}.{pci & 0x7}"


def _vram_bytes(node_dir: Path, skipped: list[tuple[str, str]]) -> int:
    total = 0
    banks = node_dir / "mem_banks"
    for bank in sorted(banks.iterdir(), key=lambda p: p.name) if banks.is_dir() else []:
        path = bank / "properties"
        try:
            props = _read_props(path)
        except _Skip as exc:
            skipped.append((str(path), str(exc)))
            log.warning("skipping memory bank %s: %s", path, exc)
            continue
        if props.get("heap_type") in VRAM_HEAP_TYPES:
            total += props.get("size_in_bytes", 0)
    return total


def _ras_problems(pci_dir: Path) -> list[str]:
    """Uncorrectable RAS errors make a GPU unhealthy (amdgpu `ras/<block>_err_count`: "ue: N\nce: M")."""
    problems = []
    for block in _RAS_BLOCKS:
        text = _read_text(pci_dir / "ras" / f"{block}_err_count")
        if not text:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "ue" and value.strip().isdigit() and int(value) > 0:
                problems.append(f"{block}: {int(value)} uncorrectable RAS errors")
    return problems


def _model(device_id: int | None, gfx_target: int | None) -> str:
    if device_id in MODELS_BY_DEVICE_ID:
        return MODELS_BY_DEVICE_ID[device_id]
    if gfx_target:  # e.g. 90402 -> gfx942 (major, minor, stepping; minor/stepping in hex)
        return f"gfx{gfx_target // 10000}{(gfx_target // 100) % 100:x}{gfx_target % 100:x}"
    return f"0x{device_id:04x}" if device_id else "unknown"


def _read_node(root: Path, node_dir: Path, skipped: list[tuple[str, str]]) -> KfdGpu | None:
    props = _read_props(node_dir / "properties")
    if props.get("simd_count", 0) == 0:
        return None  # a CPU-only node
    missing = [k for k in _REQUIRED if k not in props]
    if missing:
        raise _Skip(f"properties lack {', '.join(missing)}")
    if not props["simd_per_cu"] or not props["simd_arrays_per_engine"]:
        raise _Skip("simd_per_cu and simd_arrays_per_engine must be non-zero")
    gpu_id: int | None = None
    try:
        gpu_id = _read_int(node_dir / "gpu_id")
        if gpu_id <= 0:
            raise _Skip(f"gpu_id {gpu_id} on a node with SIMDs")
    except _Skip as exc:
        skipped.append((str(node_dir / "gpu_id"), str(exc)))
        log.warning("KFD node %s: %s; its VRAM cannot be accounted", node_dir.name, exc)
        gpu_id = None
    cus = props["simd_count"] // props["simd_per_cu"]
    engines = props["array_count"] // props["simd_arrays_per_engine"]
    if cus <= 0 or engines <= 0:
        raise _Skip(f"no compute units ({cus}) or shader engines ({engines})")
    memory = _vram_bytes(node_dir, skipped)
    if memory <= 0:
        raise _Skip("no VRAM memory bank (heap_type 1 or 2)")
    unique_id = props.get("unique_id", 0)
    bdf = bdf_of(props.get("domain", 0), props["location_id"]) if "location_id" in props else None
    partition, numa, problems = None, None, []
    if bdf is not None:
        pci_dir = root / PCI_DEVICES / bdf
        compute = _read_text(pci_dir / "current_compute_partition")
        memory_mode = _read_text(pci_dir / "current_memory_partition")
        partition = "/".join(p for p in (compute, memory_mode) if p) or None
        numa_text = _read_text(pci_dir / "numa_node")
        if numa_text is not None and numa_text.lstrip("-").isdigit() and int(numa_text) >= 0:
            numa = int(numa_text)
        problems = _ras_problems(pci_dir)
        if not pci_dir.is_dir() and (root / PCI_DEVICES).is_dir():
            problems.append(f"PCI device {bdf} is gone")
    info = GpuInfo(
        index=0,  # set by read_topology from the node order
        id=f"0x{unique_id:x}" if unique_id else f"kfd-node-{node_dir.name}",
        model=_model(props.get("device_id"), props.get("gfx_target_version")),
        computeUnits=cus, xcds=props.get("num_xcc", 1) or 1, shaderEngines=engines, memoryBytes=memory,
        healthy=not problems, numaNode=numa,
        hiveId=f"0x{props['hive_id']:x}" if props.get("hive_id") else None,
        renderMinor=props.get("drm_render_minor") or None, partition=partition,
    )
    return KfdGpu(info=info, node=int(node_dir.name), gpu_id=gpu_id, unique_id=unique_id,
                  render_minor=info.renderMinor, bdf=bdf, device_id=props.get("device_id"), problems=tuple(problems))


def read_topology(root: str | Path) -> Topology:
    """Every GPU node under ROOT/sys/class/kfd/kfd/topology/nodes, in KFD node order (= ROCr's
    enumeration order on the host). Unreadable nodes are skipped with a logged reason."""
    base = Path(root) / KFD_TOPOLOGY
    skipped: list[tuple[str, str]] = []
    gpus: list[KfdGpu] = []
    if not base.is_dir():
        skipped.append((str(base), "no KFD topology (amdgpu not loaded, or wrong --root)"))
        log.warning("no KFD topology at %s", base)
        return Topology((), tuple(skipped))
    nodes = [p for p in base.iterdir() if p.is_dir()]
    for node_dir in sorted(nodes, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0)):
        if not node_dir.name.isdigit():
            skipped.append((str(node_dir), "node directory name is not a number"))
            continue
        try:
            gpu = _read_node(Path(root), node_dir, skipped)
        except _Skip as exc:
            skipped.append((str(node_dir), str(exc)))
            log.warning("skipping KFD node %s: %s", node_dir, exc)
            continue
        if gpu is not None:
            gpus.append(gpu)
    seen: dict[str, int] = {}
    out: list[KfdGpu] = []
    for gpu in gpus:
        if gpu.info.id in seen:
            reason = f"unique_id {gpu.info.id} repeats KFD node {seen[gpu.info.id]}"
            skipped.append((str(base / str(gpu.node)), reason))
            log.warning("skipping KFD node %s: %s", gpu.node, reason)
            continue
        seen[gpu.info.id] = gpu.node
        out.append(replace(gpu, info=replace(gpu.info, index=len(out))))
    return Topology(tuple(out), tuple(skipped))
