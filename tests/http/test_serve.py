"""`gpuslice serve --demo` as a real process behind waitress, and the curl it prints."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def demo_server() -> Iterator[tuple[int, list[str]]]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "extender", "serve", "--demo", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while not any(line.startswith("curl ") for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stdout.readline())  # type: ignore[union-attr]
        yield port, lines
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.skipif(subprocess.run(["which", "curl"], capture_output=True).returncode != 0, reason="needs curl")
def test_printed_curl_works(demo_server: tuple[int, list[str]]) -> None:
    port, lines = demo_server
    assert f"http://127.0.0.1:{port}" in lines[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
        assert r.status == 200
    curl = next(line for line in lines if line.startswith("curl "))
    out = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30, check=True)
    reply = json.loads(out.stdout)
    assert reply["Error"] == "" and reply["FailedAndUnresolvableNodes"] == {}
    assert "mi300x-3" in reply["NodeNames"] and "node-a" in reply["NodeNames"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert b'gpuslice_extender_request_duration_seconds_count{verb="filter"} 1.0' in r.read()


def test_serve_without_demo_says_which_backend_is_missing() -> None:
    out = subprocess.run([sys.executable, "-m", "extender", "serve", "--port", str(_free_port())], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--demo" in out.stderr and "Kubernetes cluster backend" in out.stderr


def test_serve_with_an_invalid_policy_file_fails_fast(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("burst:\n  sharedFraction: 9\n")
    out = subprocess.run([sys.executable, "-m", "extender", "serve", "--demo", "--policy", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "burst.sharedFraction" in out.stderr
