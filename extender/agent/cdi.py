"""Container Device Interface (CDI) spec files: one file per named device, written atomically.

A CDI spec (github.com/cncf-tags/container-device-interface, SPEC.md) names devices
`<vendor>/<class>=<name>` and says what the runtime does to a container that asks for one:
environment, device nodes, mounts ("containerEdits"). containerd (>= 1.7 with `enable_cdi`, on by
default in 2.x) and CRI-O read the files from /etc/cdi and /var/run/cdi (the latter wins) when they
create a container, so a file written before CreateContainer decides what that container gets.

Each device gets a file of its own (`<vendor>-<class>-<name>.json`): CDI refuses a device name
defined twice, and one file a device lets a writer replace or remove it without touching any other.
A file is written to a hidden temporary name (not `*.json`, so a runtime never loads it half
written) in the same directory and renamed into place: the CDI cache's directory watcher refreshes
on Rename, Remove and `*.json` Write events (pkg/cdi/cache.go), and a rename within the directory
is a Rename event for it. cdiVersion 0.5.0 is the newest the CDI library in containerd 1.7
accepts and covers everything written here (env, device nodes, bind mounts).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extender.core.errors import InputError

CDI_VERSION = "0.5.0"
DEFAULT_SPEC_DIR = "/var/run/cdi"
# CDI's name rules (pkg/parser): vendor is a DNS-ish name, class and device names are alphanumeric
# with '-', '_' ('.' and ':' too for device names) and start and end with a letter or digit.
_VENDOR = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_CLASS = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?$")
_DEVICE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")


class CdiError(InputError):
    """A device name, kind or spec file CDI would refuse."""


@dataclass(frozen=True)
class DeviceNode:
    path: str  # path in the container
    host_path: str | None = None  # None: the same path on the host
    permissions: str = "rw"


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    options: tuple[str, ...] = ("ro", "nosuid", "nodev", "bind")


@dataclass(frozen=True)
class ContainerEdits:
    env: Mapping[str, str] = field(default_factory=dict)
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.env:
            out["env"] = [f"{k}={v}" for k, v in self.env.items()]
        if self.device_nodes:
            out["deviceNodes"] = [{"path": d.path, **({"hostPath": d.host_path} if d.host_path else {}),
                                   "permissions": d.permissions} for d in self.device_nodes]
        if self.mounts:
            out["mounts"] = [{"hostPath": m.host_path, "containerPath": m.container_path,
                              "options": list(m.options)} for m in self.mounts]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContainerEdits:
        env = dict(str(e).split("=", 1) for e in data.get("env", []) or [])
        nodes = tuple(DeviceNode(d["path"], d.get("hostPath"), d.get("permissions", "rw"))
                      for d in data.get("deviceNodes", []) or [])
        mounts = tuple(Mount(m["hostPath"], m["containerPath"], tuple(m.get("options", ())))
                       for m in data.get("mounts", []) or [])
        return cls(env=env, device_nodes=nodes, mounts=mounts)


@dataclass(frozen=True)
class Kind:
    """`<vendor>/<class>`, e.g. gpuslice.io/slice."""

    vendor: str
    cls: str

    def __post_init__(self) -> None:
        if not _VENDOR.match(self.vendor) or "." not in self.vendor:
            raise CdiError("cdi.vendor", self.vendor, "must be a domain name (letters, digits, '.', '-', '_')")
        if not _CLASS.match(self.cls):
            raise CdiError("cdi.class", self.cls, "must be letters, digits, '-' or '_'")

    def __str__(self) -> str:
        return f"{self.vendor}/{self.cls}"

    def qualified(self, device: str) -> str:
        """The fully qualified device name a runtime is asked for: `<vendor>/<class>=<device>`."""
        check_device_name(device)
        return f"{self}={device}"

    def file_name(self, device: str) -> str:
        check_device_name(device)
        return f"{self.vendor}-{self.cls}-{device}.json"


def check_device_name(device: str) -> None:
    if not _DEVICE.match(device):
        raise CdiError("cdi.device", device, "must start and end with a letter or digit and hold only "
                       "letters, digits, '-', '_', '.', ':'")


def spec_document(kind: Kind, device: str, edits: ContainerEdits) -> dict[str, object]:
    check_device_name(device)
    return {"cdiVersion": CDI_VERSION, "kind": str(kind),
            "devices": [{"name": device, "containerEdits": edits.to_dict()}]}


def write_spec(directory: str | Path, kind: Kind, device: str, edits: ContainerEdits) -> Path:
    """Write (or replace) the spec file of one device atomically; returns its path."""
    text = json.dumps(spec_document(kind, device, edits), indent=2) + "\n"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / kind.file_name(device)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_spec(path: str | Path) -> tuple[str, str, ContainerEdits]:
    """(kind, device name, edits) of a one-device spec file; CdiError when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
        (device,) = data["devices"]
        return data["kind"], device["name"], ContainerEdits.from_dict(device.get("containerEdits", {}))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CdiError("cdi.spec", str(path), f"not a one-device CDI spec: {exc}") from None


def remove_spec(directory: str | Path, kind: Kind, device: str) -> bool:
    """Remove one device's spec file; True when there was one."""
    try:
        (Path(directory) / kind.file_name(device)).unlink()
    except FileNotFoundError:
        return False
    return True


def spec_devices(directory: str | Path, kind: Kind) -> dict[str, Path]:
    """Device name -> spec file, for every file this kind's writer put in `directory`."""
    prefix = f"{kind.vendor}-{kind.cls}-"
    try:
        entries = sorted(Path(directory).iterdir())
    except FileNotFoundError:
        return {}
    return {p.name[len(prefix):-len(".json")]: p for p in entries
            if p.name.startswith(prefix) and p.name.endswith(".json")}
