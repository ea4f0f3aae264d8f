"""A real control plane (etcd, kube-apiserver, kube-scheduler from $KUBEBUILDER_ASSETS) and the
extender as a real `gpuslice serve --kubeconfig` process, shared by the integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from extender.core.inventory import INVENTORY_ANNOTATION, GpuInfo, format_inventory
from extender.kube.controlplane import ControlPlane, assets_dir, free_port, missing_reason

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30
LEASE = "kube-system/gpuslice-scheduler"


def scheduler_config(kubeconfig: Path, extender_port: int) -> str:
    """deploy/scheduler-config.yaml, pointed at this control plane and the test's extender."""
    cfg = yaml.safe_load((ROOT / "deploy" / "scheduler-config.yaml").read_text())
    cfg["clientConnection"]["kubeconfig"] = str(kubeconfig)
    cfg["extenders"][0]["urlPrefix"] = f"http://127.0.0.1:{extender_port}/scheduler"
    return yaml.safe_dump(cfg)


class Extender:
    """`gpuslice serve --kubeconfig` as a child process that tests can kill and start again."""

    def __init__(self, kubeconfig: Path, port: int, workdir: Path, extra: tuple[str, ...] = ()) -> None:
        self.extra = extra  # more `gpuslice serve` arguments (e.g. --policy FILE)
        self.kubeconfig = kubeconfig
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.starts += 1
        log = open(self.workdir / f"extender-{self.starts}.log", "wb")  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "extender", "--log-level", "INFO", "serve", "--kubeconfig", str(self.kubeconfig),
             "--port", str(self.port), "--lease", LEASE, "--scheduler-name", "gpuslice", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"extender exited: {self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"extender not ready: {self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no handler, no cleanup, like a crashed or evicted container."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.base}{path}", timeout=5) as resp:
            return json.loads(resp.read())

    def log(self) -> str:
        return (self.workdir / f"extender-{self.starts}.log").read_text(errors="replace")


class Env:
    def __init__(self, cp: ControlPlane, extender: Extender) -> None:
        from extender.kube.client import api_client, core_api

        self.cp = cp
        self.extender = extender
        self.api = core_api(api_client(str(cp.kubeconfig)))


def gpu_node_body(name: str, gpus: int = 2, healthy: tuple[bool, ...] | None = None) -> dict:
    health = healthy or (True,) * gpus
    inv = format_inventory([GpuInfo(index=i, id=f"{name}-g{i}", model="MI300X", computeUnits=304, xcds=8,
                                    shaderEngines=32, memoryBytes=192 * GIB, healthy=health[i])
                            for i in range(gpus)])
    resources = {"cpu": "64", "memory": "512Gi", "pods": "110", "gpuslice.io/gpu-share": str(8 * gpus)}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "gpuslice-test": "true"},
                         "annotations": {INVENTORY_ANNOTATION: inv}},
            "status": {"capacity": resources, "allocatable": resources,
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Test",
                                       "lastHeartbeatTime": "2026-01-01T00:00:00Z"}]}}


def gpu_pod_body(name: str, compute: str = "250m", memory: str = "16Gi", cls: str = "memory-bound",
                 scheduler: str = "gpuslice") -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"gpuslice-test": "true"},
                         "annotations": {"gpuslice.io/compute": compute, "gpuslice.io/memory": memory,
                                         "gpuslice.io/class": cls}},
            "spec": {"schedulerName": scheduler, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "main", "image": "registry.invalid/pause:1",
                                     "resources": {"requests": {"cpu": "100m"},
                                                   "limits": {"gpuslice.io/gpu-share": "1"}}}]}}


def start_control_plane() -> ControlPlane:
    """A started etcd + kube-apiserver from the assets directory, or skip saying what is missing."""
    reason = missing_reason()
    if reason:
        pytest.skip(f"real control plane tests skipped: {reason}")
    assets = assets_dir()
    assert assets is not None
    return ControlPlane(assets).start()


@pytest.fixture(scope="session")
def kube_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    cp = start_control_plane()
    workdir = tmp_path_factory.mktemp("extender")
    extender = Extender(cp.kubeconfig, free_port(), workdir)
    try:
        extender.start()
        cp.start_scheduler(scheduler_config(cp.kubeconfig, extender.port))
        yield Env(cp, extender)
    finally:
        extender.kill()
        cp.stop()
