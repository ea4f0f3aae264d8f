"""A throwaway control plane (etcd, kube-apiserver, optionally kube-scheduler) on loopback, from
the binaries in $KUBEBUILDER_ASSETS, for integration tests and the scheduler benchmark.

There are no kubelets and no controller-manager, so the API server is told not to taint new nodes
not-ready (TaintNodesByCondition off) and not to require ServiceAccounts for pods (ServiceAccount
admission off). Access is one static admin token.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BINARIES = ("etcd", "kube-apiserver", "kube-scheduler")
TOKEN = "gpuslice-test-admin-token"


# controller-runtime's envtest looks here when KUBEBUILDER_ASSETS is not set; so do we.
ENVTEST_DEFAULT = "/usr/local/kubebuilder/bin"


def _assets_raw() -> str | None:
    raw = os.environ.get("KUBEBUILDER_ASSETS")
    if raw:
        return raw
    return ENVTEST_DEFAULT if Path(ENVTEST_DEFAULT).is_dir() else None


def assets_dir() -> Path | None:
    """The directory named by KUBEBUILDER_ASSETS (else envtest's default), if it holds etcd and
    kube-apiserver."""
    raw = _assets_raw()
    if not raw:
        return None
    path = Path(raw)
    return path if all((path / b).is_file() for b in BINARIES[:2]) else None


def missing_reason() -> str | None:
    raw = _assets_raw()
    if not raw:
        return (f"KUBEBUILDER_ASSETS is not set and {ENVTEST_DEFAULT} does not exist (a directory with etcd, "
                "kube-apiserver and kube-scheduler)")
    missing = [b for b in BINARIES if not (Path(raw) / b).is_file()]
    if missing:
        return f"KUBEBUILDER_ASSETS={raw} lacks {', '.join(missing)}"
    if shutil.which("openssl") is None:
        return "openssl is needed to make the API server's service-account key"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControlPlane:
    assets: Path
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpuslice-cp-")))
    apiserver_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def start(self, timeout: float = 60.0) -> ControlPlane:
        etcd_port, peer_port = free_port(), free_port()
        self._spawn("etcd", [str(self.assets / "etcd"), "--data-dir", str(self.workdir / "etcd"),
                             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
                             "--unsafe-no-fsync", "--log-level", "error"])
        key = self.workdir / "sa.key"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        (self.workdir / "tokens.csv").write_text(f'{TOKEN},admin,admin,"system:masters"\n')
        self._spawn("kube-apiserver", [
            str(self.assets / "kube-apiserver"), "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--bind-address", "127.0.0.1", "--secure-port", str(self.apiserver_port),
            "--cert-dir", str(self.workdir / "certs"), "--token-auth-file", str(self.workdir / "tokens.csv"),
            "--authorization-mode", "RBAC", "--service-cluster-ip-range", "10.0.0.0/24",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(key), "--service-account-signing-key-file", str(key),
            "--disable-admission-plugins", "ServiceAccount,TaintNodesByCondition",
            "--enable-priority-and-fairness=false", "--max-requests-inflight", "0",
            "--max-mutating-requests-inflight", "0", "--watch-cache=true", "--v", "0"])
        self._wait_ready(timeout)
        ca = self.workdir / "certs" / "apiserver.crt"  # self-signed, made by the API server at start
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority": str(ca)}}],
            "users": [{"name": "admin", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}]}))
        return self

    def start_scheduler(self, config_text: str, name: str = "kube-scheduler") -> subprocess.Popen:
        cfg = self.workdir / f"{name}.yaml"
        cfg.write_text(config_text)
        return self._spawn(name, [str(self.assets / "kube-scheduler"), "--config", str(cfg),
                                  "--secure-port", "0", "--v", "1"])

    def start_controller_manager(self, controllers: str) -> subprocess.Popen:
        """kube-controller-manager running only `controllers` (e.g. resourceclaim-controller), if built."""
        return self._spawn("kube-controller-manager", [
            str(self.assets / "kube-controller-manager"), "--kubeconfig", str(self.kubeconfig),
            "--controllers", controllers, "--leader-elect=false", "--secure-port", "0", "--v", "1"])

    def stop_process(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop_process(name)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it open
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir)
        self.procs[name] = proc
        return proc

    def _wait_ready(self, timeout: float) -> None:
        import ssl
        import urllib.request

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
            try:
                req = urllib.request.Request(f"{self.url}/readyz", headers={"Authorization": f"Bearer {TOKEN}"})
                with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except Exception as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready after {timeout}s: {last}\n{self.log('kube-apiserver')[-3000:]}")
