"""Per-process VRAM from KFD (`ROOT/sys/class/kfd/kfd/proc/<pid>/vram_<gpu_id>`, bytes in decimal),
summed per pod and GPU through `ROOT/proc/<pid>/cgroup`."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from extender.agent.cgroups import pod_of_process

log = logging.getLogger(__name__)

KFD_PROC = "sys/class/kfd/kfd/proc"


@dataclass(frozen=True)
class ProcessVram:
    pid: int
    gpu_id: int
    bytes: int
    pod_uid: str | None  # None: not a pod's process (or it exited before we read its cgroup)
    pod_cgroup: str | None


@dataclass(frozen=True)
class VramSample:
    processes: tuple[ProcessVram, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def by_pod(self) -> dict[tuple[str, int], int]:
        """(pod uid, gpu_id) -> bytes."""
        out: dict[tuple[str, int], int] = defaultdict(int)
        for p in self.processes:
            if p.pod_uid is not None:
                out[(p.pod_uid, p.gpu_id)] += p.bytes
        return dict(out)

    def pod_cgroups(self) -> dict[str, str]:
        return {p.pod_uid: p.pod_cgroup for p in self.processes if p.pod_uid and p.pod_cgroup}


def sample_vram(root: str | Path) -> VramSample:
    """One pass over KFD's per-process files. Processes come and go while we read: a file that
    vanishes mid-read is skipped with its reason, never counted as zero or guessed."""
    base = Path(root) / KFD_PROC
    procs: list[ProcessVram] = []
    skipped: list[tuple[str, str]] = []
    if not base.is_dir():
        return VramSample((), ((str(base), "no KFD process directory"),))
    for pid_dir in sorted(base.iterdir(), key=lambda p: p.name):
        if not pid_dir.name.isdigit():
            continue
        pid = int(pid_dir.name)
        try:
            cgroup_text = (Path(root) / "proc" / str(pid) / "cgroup").read_text()
        except OSError as exc:
            cgroup_text = ""
            skipped.append((f"proc/{pid}/cgroup", exc.strerror or str(exc)))
        pod = pod_of_process(cgroup_text)
        try:
            files = list(pid_dir.glob("vram_*"))
        except OSError as exc:
            skipped.append((str(pid_dir), exc.strerror or str(exc)))
            continue
        for f in files:
            gpu = f.name.removeprefix("vram_")
            try:
                text = f.read_text().strip()
            except OSError as exc:
                skipped.append((str(f), exc.strerror or str(exc)))
                continue
            if not gpu.isdigit() or not text.isdigit():
                skipped.append((str(f), f"not a byte count: {text!r}"))
                log.warning("skipping %s: not a byte count: %r", f, text)
                continue
            if int(text):
                procs.append(ProcessVram(pid, int(gpu), int(text), pod.pod_uid if pod else None,
                                         pod.path if pod else None))
    return VramSample(tuple(procs), tuple(skipped))
