"""Every command runs the way deploy/ runs it: read-only root filesystem, uid 65532, no HOME.

The console script is started in a private mount namespace where every mount is read-only (as a
container with `readOnlyRootFilesystem: true` and no writable volume sees it), as uid 65532 with an
empty environment. Needs root and util-linux `unshare`/`setpriv` (CI runs as root); skips otherwise.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UID = 65532
FIXTURE = ROOT / "tests" / "fixtures" / "sysfs" / "mi300x-spx"


def _console_script() -> Path:
    script = Path(sys.executable).parent / "gpuslice"
    if not script.is_file():
        pytest.skip(f"console script not installed next to {sys.executable}")
    return script


def _closed_ancestors(paths: list[Path]) -> dict[Path, set[Path]]:
    """{dir: children to keep} for directories on the way to `paths` that other users may not enter
    (this machine's pyenv under /root, or a clone under a private home)."""
    out: dict[Path, set[Path]] = {}
    for path in paths:
        real = path.resolve()
        for parent in [*reversed(real.parents), real]:
            if parent != Path("/") and parent.is_dir() and not parent.stat().st_mode & stat.S_IXOTH:
                # the path itself closed (a checkout made by `mktemp -d`, mode 0700): keep all it holds
                kept = set(real.iterdir()) if parent == real else {parent / real.relative_to(parent).parts[0]}
                out.setdefault(parent, set()).update(kept)
                break
    return out


def _sandbox(argv: list[str]) -> list[str]:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("needs root with unshare and setpriv to build a read-only, non-root sandbox")
    steps = ["set -e"]
    keep = [Path(sys.executable), Path(sys.executable).parent, ROOT]
    for n, (closed, children) in enumerate(sorted(_closed_ancestors(keep).items())):
        # uid 65532 may not enter `closed`: replace it by an empty directory holding only what we need
        names = [f"keep{n}_{i}" for i in range(len(children))]
        for name, child in zip(names, sorted(children), strict=True):
            make = "mktemp -d" if child.is_dir() else "mktemp"
            steps += [f"{name}=$({make})", f"mount --bind {shlex.quote(str(child))} ${name}"]
        steps.append(f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(str(closed))}")
        for name, child in zip(names, sorted(children), strict=True):
            place = "mkdir -p" if child.is_dir() else "touch"
            steps += [f"{place} {shlex.quote(str(child))}", f"mount --move ${name} {shlex.quote(str(child))}"]
    steps += [
        "awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r mp; do "
        'mount -o remount,bind,ro "$mp" 2>/dev/null || true; done',
        "cd /",
        f"exec setpriv --reuid {UID} --regid {UID} --clear-groups -- "
        f"env -i PATH=/usr/bin:/bin PYTHONPATH={shlex.quote(str(ROOT))} \"$@\"",
    ]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(steps), "sandbox", *argv]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_sandbox([str(_console_script()), *args]), capture_output=True, text=True,
                          timeout=timeout)


def test_the_sandbox_is_read_only_and_not_root() -> None:
    """The conditions are real: nothing is writable, not even /tmp, and we are not root."""
    out = subprocess.run(_sandbox(["sh", "-c", 'id -u; echo "HOME=${HOME-unset}"; touch /tmp/x 2>&1 || true; '
                                   f"touch {shlex.quote(str(ROOT))}/x 2>&1 || true"]),
                         capture_output=True, text=True, timeout=30)
    lines = out.stdout.splitlines()
    assert lines[0] == str(UID) and lines[1] == "HOME=unset", out
    assert out.stdout.count("Read-only file system") == 2, out


COMMANDS = {
    "version": ["--version"],
    "help": ["--help"],
    "policy check": ["policy", "check", str(ROOT / "policies" / "mi300x-inference.yaml")],
    "agent inventory": ["agent", "inventory", "--root", str(FIXTURE)],
    "plan": ["plan", "--cluster", str(ROOT / "examples" / "cluster-8node.yaml"), "--workloads",
             str(ROOT / "examples" / "workloads-40.yaml"), "--policy", str(ROOT / "examples" / "policy-profiles.yaml"),
             "--time-limit", "2", "--allow-partial"],
    "simulate": ["simulate", "--scenario", "seed-llm-only", "--bind-placer", "greedy", "--json"],
    "explain": ["explain", "--demo", "serving/llama-8b-decode-3"],
    "top": ["top", "--demo", "--once"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_runs_read_only_as_non_root(name: str) -> None:
    out = _run(*COMMANDS[name])
    assert out.returncode == 0, f"{name}: exit {out.returncode}\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("sub", ["serve", "plan", "policy", "agent", "simulate", "explain", "top", "webhook"])
def test_every_subcommand_help_runs_read_only(sub: str) -> None:
    out = _run(sub, "--help")
    assert out.returncode == 0 and "usage: gpuslice" in out.stdout, out.stderr[-2000:]


def test_cli_start_up_does_not_import_plotting() -> None:
    """Runs everywhere (no sandbox needed): matplotlib wants a writable cache directory at import."""
    code = "import sys, extender.cli; print(sorted(m for m in sys.modules if m.startswith('matplotlib')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_serve_starts_read_only_as_non_root() -> None:
    """The extender's own start-up (policy, engine, WSGI server) under the same conditions, until it
    says where it listens."""
    proc = subprocess.Popen(_sandbox([str(_console_script()), "serve", "--demo", "--port", "0"]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        assert "gpuslice extender listening on http://127.0.0.1:" in first, first + (proc.stdout.read(3000)
                                                                                     if proc.poll() is not None else "")
    finally:
        proc.kill()
        proc.wait(timeout=10)
