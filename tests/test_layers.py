"""The layering of DESIGN.md ("arrows point down only"), enforced by import-linter's contracts in
pyproject.toml. Also proves the contracts bite: a copy of the package with a forbidden import fails."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(LINT_IMPORTS), "--config", "pyproject.toml", "--no-cache"]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_contracts_are_kept() -> None:
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "layers: faces -> engine -> core KEPT" in out.stdout
    assert "core knows nothing of HTTP, Kubernetes or gRPC KEPT" in out.stdout
    assert "0 broken" in out.stdout


def _copy(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "extender", tmp_path / "extender", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_a_core_module_importing_kubernetes_breaks_the_contract(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "extender" / "core" / "leak.py").write_text("import kubernetes.client\n")
    out = _lint(root)
    assert out.returncode != 0
    assert "core knows nothing of HTTP, Kubernetes or gRPC BROKEN" in out.stdout
    assert "extender.core.leak -> kubernetes" in out.stdout


def test_core_importing_the_engine_breaks_the_layers(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "extender" / "core" / "upward.py").write_text("import extender.engine.scheduler\n")
    out = _lint(root)
    assert out.returncode != 0
    assert "layers: faces -> engine -> core BROKEN" in out.stdout
