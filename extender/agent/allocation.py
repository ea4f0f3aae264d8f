"""What a container gets for its slice: device nodes and environment, from its assignment and the
node's KFD topology. The device plugin's Allocate and `gpuslice agent env` both call this.

Visible GPU order is the assignment's GPUs in KFD node order. `ROCR_VISIBLE_DEVICES` names them by
ROCr UUID ("GPU-" + unique_id), which selects the same GPUs whether or not the container can see
other GPUs; a GPU without a unique_id is named by its position, which is right because the
container's device cgroup hides every GPU but its own and ROCr enumerates in KFD node order.
`HSA_CU_MASK` GPU ids are positions in that list. A GPU handed out whole gets no CU_Set: a mask
over every CU changes nothing but disables cooperative launches in ROCr.

An assignment whose guaranteed CUs, or guaranteed and burst CUs together, are not XCC-complete on
the GPU (extender/core/atoms.py) is refused with AtomError: ROCr would leave the XCDs it misses
unmasked, so the tenant would run on other tenants' CUs. A bad ledger stops here, not in a container.
"""

from __future__ import annotations

from dataclasses import dataclass

from extender.agent.topology import KfdGpu, Topology
from extender.core.assignment import Assignment
from extender.core.atoms import check_xcc_complete
from extender.core.cumask import ENV_CU_MASK, format_cu_mask
from extender.core.errors import AssignmentError
from extender.core.rangelist import format_ranges

ENV_VISIBLE = "ROCR_VISIBLE_DEVICES"
ENV_MEMORY_LIMIT = "GPUSLICE_MEMORY_LIMIT_BYTES"
ENV_MEMORY_FRACTION = "GPUSLICE_MEMORY_FRACTION"
ENV_MEMORY_GUARANTEE = "GPUSLICE_MEMORY_GUARANTEED_BYTES"
KFD_DEVICE = "/dev/kfd"


@dataclass(frozen=True)
class ContainerAllocation:
    envs: dict[str, str]
    devices: tuple[str, ...]  # host paths, mounted at the same path in the container
    gpus: tuple[KfdGpu, ...]  # in visible order


def render_device(gpu: KfdGpu) -> str:
    return f"/dev/dri/renderD{gpu.render_minor}"


def _fraction(limit: int, total: int) -> str:
    """Rounded down to 4 places so a framework sizing itself from it never exceeds the limit."""
    return f"{min(limit * 10000 // total, 10000) / 10000:.4f}"


def _same_or_list(values: list[str]) -> str:
    return values[0] if len(set(values)) == 1 else ",".join(values)


def allocation_for(assignment: Assignment, topology: Topology) -> ContainerAllocation:
    """Raises AssignmentError when the assignment does not fit this node's GPUs as they are now."""
    resolved: list[tuple[KfdGpu, frozenset[int], int, int]] = []
    for i, g in enumerate(assignment.gpus):
        where = f"gpus[{i}]"
        kfd = topology.by_id(g.id)
        if kfd is None:
            raise AssignmentError(f"{where}.id", g.id, "no GPU with this id on this node (removed or repartitioned?)")
        if not kfd.info.healthy:
            raise AssignmentError(f"{where}.id", g.id, f"GPU is unhealthy: {'; '.join(kfd.problems)}")
        if kfd.render_minor is None:
            raise AssignmentError(f"{where}.id", g.id, "GPU has no DRM render node")
        mask = g.cus | g.burstCus
        if max(mask) >= kfd.info.computeUnits:
            raise AssignmentError(f"{where}.cus", format_ranges(mask),
                                  f"CU {max(mask)} is past the GPU's {kfd.info.computeUnits} CUs")
        for key, cus in ((f"{where}.cus", g.cus), (f"{where}.cus+burstCus", mask)):
            if len(cus) < kfd.info.computeUnits:  # the whole GPU gets no mask at all
                check_xcc_complete(cus, kfd.info.xcds, key)
        if g.memoryLimitBytes > kfd.info.memoryBytes:
            raise AssignmentError(f"{where}.memoryLimitBytes", g.memoryLimitBytes,
                                  f"more than the GPU's {kfd.info.memoryBytes} bytes")
        resolved.append((kfd, mask, g.memoryBytes, g.memoryLimitBytes))
    resolved.sort(key=lambda r: r[0].node)
    visible = [kfd.uuid or str(pos) for pos, (kfd, *_rest) in enumerate(resolved)]
    cu_sets = {pos: mask for pos, (kfd, mask, *_r) in enumerate(resolved) if len(mask) < kfd.info.computeUnits}
    envs = {ENV_VISIBLE: ",".join(visible)}
    if cu_sets:
        envs[ENV_CU_MASK] = format_cu_mask(cu_sets)
    envs[ENV_MEMORY_LIMIT] = _same_or_list([str(limit) for *_r, limit in resolved])
    envs[ENV_MEMORY_FRACTION] = _same_or_list([_fraction(limit, kfd.info.memoryBytes)
                                               for kfd, _m, _g, limit in resolved])
    envs[ENV_MEMORY_GUARANTEE] = _same_or_list([str(guaranteed) for _k, _m, guaranteed, _l in resolved])
    devices = (KFD_DEVICE, *(render_device(kfd) for kfd, *_r in resolved))
    return ContainerAllocation(envs=envs, devices=devices, gpus=tuple(kfd for kfd, *_r in resolved))
