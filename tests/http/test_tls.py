"""`gpuslice serve --tls-cert/--tls-key [--tls-client-ca]`: HTTPS for kube-scheduler's tlsConfig."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cert(dir: Path, name: str, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    key, crt = dir / f"{name}.key", dir / f"{name}.crt"
    if ca is None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", crt],
                       check=True, capture_output=True)
    else:
        csr = dir / f"{name}.csr"
        subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key,
                        "-out", csr], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial",
                        "-days", "1", "-out", crt], check=True, capture_output=True)
    return key, crt


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, tuple[Path, Path]]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    d = tmp_path_factory.mktemp("tls")
    server_key, server_crt = _cert(d, "server")
    ca = _cert(d, "client-ca")
    client = _cert(d, "scheduler", ca)
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "extender", "serve", "--demo", "--port", str(port),
                             "--tls-cert", str(server_crt), "--tls-key", str(server_key),
                             "--tls-client-ca", str(ca[1])],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "listening on https://" in line, line
        yield port, server_crt, client
    finally:
        proc.terminate()
        proc.wait(10)


def _ctx(server_crt: Path, client: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server_crt))
    if client:
        ctx.load_cert_chain(str(client[1]), str(client[0]))
    return ctx


def test_https_with_client_certificate(tls_server: tuple[int, Path, tuple[Path, Path]]) -> None:
    port, server_crt, client = tls_server
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", context=_ctx(server_crt, client),
                                        timeout=5) as r:
                assert json.loads(r.read())["status"] == "ready"
                break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    body = json.dumps({"PodName": "p", "PodNamespace": "default", "PodUID": "u", "Node": "n"}).encode()
    req = urllib.request.Request(f"https://127.0.0.1:{port}/bind", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=_ctx(server_crt, client), timeout=5) as r:
        assert "Error" in json.loads(r.read())


def test_client_without_certificate_is_refused(tls_server: tuple[int, Path, tuple[Path, Path]]) -> None:
    port, server_crt, _ = tls_server
    with pytest.raises((ssl.SSLError, ConnectionResetError, urllib.error.URLError)):
        urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=_ctx(server_crt, None), timeout=5)
