"""Predictable misconfiguration: one line naming the problem and the fix, exit 2, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from extender.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def gpuslice(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "extender", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**base, **(env or {})})


def one_line_exit_2(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for word in words:
        assert word in out.stderr, out.stderr


def test_serve_with_a_missing_kubeconfig() -> None:
    one_line_exit_2(gpuslice("serve", "--kubeconfig", "/missing/kubeconfig"), "--kubeconfig /missing/kubeconfig",
                    "no such file")


def test_serve_with_a_kubeconfig_that_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("just some text\n")
    one_line_exit_2(gpuslice("serve", "--kubeconfig", str(tmp_path / "k")), "not a usable kubeconfig")


def test_serve_in_cluster_outside_a_cluster() -> None:
    one_line_exit_2(gpuslice("serve", "--in-cluster"), "--in-cluster", "use --kubeconfig FILE")


def test_serve_on_a_port_in_use() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        one_line_exit_2(gpuslice("serve", "--demo", "--port", str(port)), f"127.0.0.1:{port}", "already in use",
                        "--port")


def test_agent_inventory_on_a_missing_root() -> None:
    one_line_exit_2(gpuslice("agent", "inventory", "--root", "/nonexistent"), "--root /nonexistent")


def test_plan_exits_1_when_something_is_unplaced_unless_partial_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"nodes": [{"name": "a", "gpus": 1}]}))
    (tmp_path / "w.yaml").write_text(yaml.safe_dump({"workloads": [
        {"name": "big", "replicas": 3, "compute": "250m", "memory": "100Gi", "class": "compute-bound"}]}))
    args = ["plan", "--cluster", str(tmp_path / "c.yaml"), "--workloads", str(tmp_path / "w.yaml"), "--time-limit", "2"]
    out = gpuslice(*args)
    assert out.returncode == 1 and "2 replica(s) not placed" in out.stderr and "--allow-partial" in out.stderr
    assert gpuslice(*args, "--allow-partial").returncode == 0


def test_plan_that_places_everything_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"nodes": [{"name": "a", "gpus": 1}]}))
    (tmp_path / "w.yaml").write_text(yaml.safe_dump({"workloads": [
        {"name": "s", "replicas": 2, "compute": "250m", "memory": "8Gi", "class": "compute-bound"}]}))
    assert main(["plan", "--cluster", str(tmp_path / "c.yaml"), "--workloads", str(tmp_path / "w.yaml"),
                 "--time-limit", "2"]) == 0


def test_policy_check_on_a_file_that_is_not_a_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(ROOT / "examples" / "cluster-8node.yaml")]) == 1
    err = capsys.readouterr().err
    assert "unknown top-level key(s): nodes;" in err and "a policy's keys are apiVersion" in err
    assert len(err) < 400, err  # not the whole file in one line


def test_policy_check_suggests_the_key_meant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.yaml").write_text("scorng: {strategy: binpack}\n")
    assert main(["policy", "check", str(tmp_path / "p.yaml")]) == 1
    assert "scorng (did you mean scoring?)" in capsys.readouterr().err


def _subparsers(parser: object) -> list:
    actions = getattr(parser, "_subparsers", None)
    found = []
    for action in getattr(actions, "_group_actions", []) if actions else []:
        for child in action.choices.values():
            found += [child, *_subparsers(child)]
    return found


def test_every_help_shows_defaults() -> None:
    parser = build_parser()
    assert "(default: 8888)" in next(p for p in _subparsers(parser) if p.prog == "gpuslice serve").format_help()
    for sub in _subparsers(parser):
        text = sub.format_help()
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, [], "==SUPPRESS=="):
                flag = action.option_strings[-1]
                assert "default" in (action.help or "") or "(default: " in text, (sub.prog, flag)
