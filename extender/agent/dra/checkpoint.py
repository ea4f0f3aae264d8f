"""The prepared-claim checkpoint: what Prepare decided for each claim (its exact CU sets and CDI
devices), one JSON file replaced atomically, read back by a restarted agent before it serves kubelet."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extender.agent.cdi import Kind
from extender.agent.dra.claims import ClaimError
from extender.agent.dra.slices import DRIVER
from extender.core.assignment import Assignment, GpuAssignment, parse_assignment
from extender.core.errors import AssignmentError

CDI_KIND = Kind(DRIVER, "slice")
CHECKPOINT = "checkpoint.json"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class PreparedDevice:
    request: str
    pool: str
    device: str
    share_id: str | None
    gpu_index: int
    cdi_device: str  # the CDI device name (unqualified) of this share's request

    @property
    def cdi_id(self) -> str:
        return CDI_KIND.qualified(self.cdi_device)


@dataclass(frozen=True)
class PreparedClaim:
    uid: str
    namespace: str
    name: str
    assignment: Assignment  # one GPU entry per share, the exact CU sets
    devices: tuple[PreparedDevice, ...]

    def to_dict(self) -> dict[str, object]:
        return {"namespace": self.namespace, "name": self.name, "assignment": self.assignment.to_dict(),
                "devices": [{"request": d.request, "pool": d.pool, "device": d.device, "shareID": d.share_id,
                             "gpu": d.gpu_index, "cdiDevice": d.cdi_device} for d in self.devices]}

    @classmethod
    def from_dict(cls, uid: str, data: dict[str, Any]) -> PreparedClaim:
        return cls(uid, data["namespace"], data["name"], parse_assignment(json.dumps(data["assignment"])),
                   tuple(PreparedDevice(d["request"], d["pool"], d["device"], d.get("shareID"), int(d["gpu"]),
                                        d["cdiDevice"]) for d in data["devices"]))

    def gpu(self, index: int) -> GpuAssignment:
        return next(g for g in self.assignment.gpus if g.index == index)


def cdi_device_name(claim_uid: str, request: str) -> str:
    """One CDI device per (claim, request); subrequest names "main/sub" become "main.sub"."""
    return f"{claim_uid}-{request.replace('/', '.')}"


def save_checkpoint(path: Path, claims: Mapping[str, PreparedClaim]) -> None:
    """Write every prepared claim to `path` (temporary file, fsync, rename: never half written)."""
    text = json.dumps({"version": CHECKPOINT_VERSION,
                       "claims": {uid: c.to_dict() for uid, c in sorted(claims.items())}}, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, PreparedClaim]:
    """The prepared claims in `path` ({} when there is none). An unreadable file or entry raises
    ClaimError: leaving a claim out could hand its CUs, which a running container holds, to another."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ClaimError(str(path), "", f"unreadable checkpoint: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != CHECKPOINT_VERSION:
        raise ClaimError(f"{path}.version", data.get("version") if isinstance(data, dict) else data,
                         f"expected {CHECKPOINT_VERSION}")
    out = {}
    for uid, raw in (data.get("claims") or {}).items():
        try:
            out[uid] = PreparedClaim.from_dict(uid, raw)
        except (KeyError, TypeError, ValueError, AssignmentError) as exc:
            raise ClaimError(f"{path}.claims[{uid}]", raw, f"unreadable entry: {exc}") from None
    return out
