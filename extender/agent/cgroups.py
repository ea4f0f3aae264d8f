"""Pods in the host's cgroup tree: pid -> pod through /proc/<pid>/cgroup, and the dmem controller.

kubelet names a pod's cgroup after its UID. cgroupfs driver: `/kubepods[/burstable|/besteffort]/pod<uid>/<container>`;
systemd driver: `/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid with _>.slice/<runtime>-<id>.scope`.

dmem (Linux 6.14+): `cgroup.controllers` lists `dmem`; `dmem.capacity` in the root lists the regions
(`drm/<pci address>/vram` for amdgpu, registered by drmm_cgroup_register_region as "drm/%s/%s" with the
DRM device's unique name); writing `<region> <bytes>` lines to a cgroup's `dmem.max` caps it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = "sys/fs/cgroup"
_UID = r"[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}"
_POD_SEGMENT = re.compile(rf"^(?:kubepods(?:-[a-z]+)?-)?pod(?P<uid>{_UID})(?:\.slice)?$")
_CONTAINER = re.compile(r"^(?:(?:cri-containerd|crio|docker|cri-o)-)?(?P<id>[0-9a-f]{12,64})(?:\.scope)?$")


@dataclass(frozen=True)
class PodCgroup:
    pod_uid: str
    path: str  # the pod's cgroup, relative to the cgroup root, e.g. "kubepods.slice/.../kubepods-...-pod<uid>.slice"
    container_id: str | None


def pod_of_cgroup_path(path: str) -> PodCgroup | None:
    """The pod a cgroup path belongs to, or None for a non-pod cgroup."""
    parts = [p for p in path.strip().split("/") if p]
    if not parts or not parts[0].startswith("kubepods"):
        return None
    for i, part in enumerate(parts):
        m = _POD_SEGMENT.match(part)
        if m:
            container = None
            if i + 1 < len(parts):
                c = _CONTAINER.match(parts[i + 1])
                container = c.group("id") if c else None
            return PodCgroup(m.group("uid").replace("_", "-").lower(), "/".join(parts[: i + 1]), container)
    return None


def pod_of_process(cgroup_text: str) -> PodCgroup | None:
    """Parse /proc/<pid>/cgroup (v2 "0::/path" or v1 "N:ctrl:/path" lines); the unified line wins."""
    found = None
    for line in cgroup_text.splitlines():
        hierarchy, _, rest = line.partition(":")
        _controllers, _, path = rest.partition(":")
        pod = pod_of_cgroup_path(path)
        if pod and (hierarchy == "0" or found is None):
            found = pod
    return found


def dmem_available(root: str | Path) -> bool:
    try:
        return "dmem" in (Path(root) / CGROUP_ROOT / "cgroup.controllers").read_text().split()
    except OSError:
        return False


def dmem_regions(root: str | Path) -> dict[str, int]:
    """Region name -> capacity bytes, from the root cgroup's dmem.capacity."""
    out: dict[str, int] = {}
    try:
        text = (Path(root) / CGROUP_ROOT / "dmem.capacity").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def vram_region(bdf: str, regions: dict[str, int]) -> str | None:
    """The dmem region of a GPU's VRAM: "drm/<bdf>/vram" (or a numbered "vram<N>" if that is all there is)."""
    exact = f"drm/{bdf}/vram"
    if exact in regions:
        return exact
    numbered = sorted(r for r in regions if r.startswith(f"drm/{bdf}/vram"))
    return numbered[0] if numbered else None


def find_pod_cgroup(root: str | Path, pod_uid: str) -> str | None:
    """The pod's cgroup directory (relative to the cgroup root) for either driver, or None."""
    base = Path(root) / CGROUP_ROOT
    underscored = pod_uid.replace("-", "_")
    patterns = (
        f"kubepods/pod{pod_uid}", f"kubepods/*/pod{pod_uid}",
        f"kubepods.slice/kubepods-pod{underscored}.slice", f"kubepods.slice/*/kubepods-*-pod{underscored}.slice",
    )
    for pattern in patterns:
        for match in sorted(base.glob(pattern)):
            if match.is_dir():
                return str(match.relative_to(base))
    return None


def read_dmem_max(root: str | Path, cgroup: str) -> dict[str, str]:
    try:
        text = (Path(root) / CGROUP_ROOT / cgroup / "dmem.max").read_text()
    except OSError:
        return {}
    return dict(line.split(None, 1) for line in text.splitlines() if len(line.split()) == 2)


def write_dmem_max(root: str | Path, cgroup: str, limits: dict[str, int]) -> bool:
    """Set `dmem.max` for each region on the cgroup; returns True when it wrote (False: already so).
    Raises OSError when the kernel refuses."""
    current = read_dmem_max(root, cgroup)
    wanted = {region: str(value) for region, value in limits.items()}
    if all(current.get(r) == v for r, v in wanted.items()):
        return False
    path = Path(root) / CGROUP_ROOT / cgroup / "dmem.max"
    # The kernel parses one "<region> <limit>" per line; unchanged regions are written again as they are,
    # so the file (a plain file in recorded test trees) ends up holding every region.
    merged = {**current, **wanted}
    with open(path, "w") as f:
        f.write("".join(f"{r} {v}\n" for r, v in sorted(merged.items())))
    return True
