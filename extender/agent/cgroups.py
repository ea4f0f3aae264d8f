"""Pods in the host's cgroup tree: pid -> pod through /proc/<pid>/cgroup, and the dmem controller.

kubelet names a pod's cgroup after its UID. cgroupfs driver: `/kubepods[/burstable|/besteffort]/pod<uid>/<container>`;
systemd driver: `/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid with _>.slice/<runtime>-<id>.scope`
(containerd `cri-containerd-<id>`, CRI-O `crio-<id>`, cri-dockerd `docker-<id>`; cgroupfs: the bare id or
`crio-<id>`); a kubelet with another cgroup root prefixes it (kind: `/kubelet.slice/kubelet-kubepods.slice/
kubelet-kubepods-<qos>.slice/kubelet-kubepods-<qos>-pod<uid>.slice/...`). cgroup v1 shows one such path
per hierarchy (`N:controllers:/path`), v2 one (`0::/path`).

/proc/<pid>/cgroup shows the path relative to the *reader's* cgroup namespace. An agent in its own
namespace (containerd and CRI-O on cgroup v2 give containers a private one by default) sees another
pod's process as `0::/../../../kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/...`:
the pod is found from its own segment wherever it is, and the pod's cgroup directory is then found
by UID in the host's cgroup tree (mounted whole from the host), never by resolving `..`.

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
# `pod<uid>` (cgroupfs) or `<prefix>-pod<uid>.slice` (systemd; the prefix names kubepods)
_POD_SEGMENT = re.compile(rf"^(?:(?P<prefix>[a-z0-9]+(?:-[a-z0-9]+)*)-)?pod(?P<uid>{_UID})(?P<slice>\.slice)?$")
_CONTAINER = re.compile(r"^(?:(?:cri-containerd|crio|docker|cri-o)-)?(?P<id>[0-9a-f]{12,64})(?:\.scope)?$")


@dataclass(frozen=True)
class PodCgroup:
    pod_uid: str
    # The pod's cgroup relative to the host's cgroup root, e.g. "kubepods.slice/.../kubepods-...-pod<uid>.slice";
    # None when the path was relative to a cgroup namespace (find_pod_cgroup finds it by UID).
    path: str | None
    container_id: str | None


def _pod_segment(part: str, ancestors: list[str], namespaced: bool) -> str | None:
    """The pod UID when `part` is a pod's cgroup under kubelet's hierarchy."""
    m = _POD_SEGMENT.match(part)
    if not m:
        return None
    if m.group("prefix") is not None:  # systemd: "kubepods[-qos]-pod<uid>.slice"
        return m.group("uid") if "kubepods" in m.group("prefix") and m.group("slice") else None
    under_kubepods = any("kubepods" in a for a in ancestors)
    return m.group("uid") if under_kubepods or namespaced else None


def pod_of_cgroup_path(path: str) -> PodCgroup | None:
    """The pod a cgroup path belongs to, or None for a non-pod cgroup. The path may be the host's
    (`/kubepods...`) or relative to a cgroup namespace (`/../../kubepods...`)."""
    parts = [p for p in path.strip().split("/") if p and p != "."]
    namespaced = bool(parts) and parts[0] == ".."
    for i, part in enumerate(parts):
        uid = _pod_segment(part, parts[:i], namespaced)
        if uid is None:
            continue
        container = None
        if i + 1 < len(parts):
            c = _CONTAINER.match(parts[i + 1])
            container = c.group("id") if c else None
        host_path = None if ".." in parts[: i + 1] else "/".join(parts[: i + 1])
        return PodCgroup(uid.replace("_", "-").lower(), host_path, container)
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


_KUBELET_DIRS = re.compile(r"kubepods|kubelet|^burstable$|^besteffort$")
_MAX_DEPTH = 4  # <kubelet root>/<kubepods>/<qos>/<pod>


def find_pod_cgroup(root: str | Path, pod_uid: str) -> str | None:
    """The pod's cgroup directory (relative to the cgroup root) for either driver and any kubelet
    cgroup root, or None. Walks only kubelet's part of the tree (directories named for kubepods,
    kubelet or a QoS class), a few levels deep."""
    base = Path(root) / CGROUP_ROOT
    uid = pod_uid.lower()
    level = [base]
    for _ in range(_MAX_DEPTH):
        below: list[Path] = []
        for d in level:
            try:
                children = sorted(c for c in d.iterdir() if c.is_dir())
            except OSError:
                continue
            for c in children:
                pod = pod_of_cgroup_path(str(c.relative_to(base)))
                if pod is not None and pod.pod_uid == uid and pod.path == str(c.relative_to(base)):
                    return pod.path
                if _KUBELET_DIRS.search(c.name) and pod is None:
                    below.append(c)
        level = below
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
