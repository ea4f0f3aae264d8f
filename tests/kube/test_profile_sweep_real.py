"""`gpuslice profile sweep --apply` against the real API server: the Jobs it creates are the manifests
it prints, created one at a time (the next only once the previous has finished), and a failed run
stops the sweep. There is no job controller here, so the test plays its part (Job status)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client import ApiException

from extender.cli import main
from extender.kube.client import api_client
from extender.kube.raw import read_json
from tests.kube.conftest import Env

ROOT = Path(__file__).resolve().parents[2]
NS = "sweep-test"


class JobController:
    """Finishes each Job once it exists (failing those named in `fail`), recording which Jobs were
    unfinished whenever a new one appeared."""

    def __init__(self, batch: client.BatchV1Api, fail: set[str]) -> None:
        self.batch, self.fail = batch, fail
        self.seen: list[str] = []
        self.overlaps: list[tuple[str, list[str]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        while not self.stop.is_set():
            for job in self.batch.list_namespaced_job(NS).items:
                name = job.metadata.name
                if name in self.seen:
                    continue
                open_ = [n for n in self.seen if not self.done(n)]
                if open_:
                    self.overlaps.append((name, open_))
                self.seen.append(name)
                time.sleep(0.3)  # the run takes a while
                self.finish(job)
            time.sleep(0.05)

    def done(self, name: str) -> bool:
        status = self.batch.read_namespaced_job_status(name, NS).status
        return bool(status and ((status.succeeded or 0) or (status.failed or 0)))

    def finish(self, job: client.V1Job) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        failed = job.metadata.name in self.fail
        kind = "Failed" if failed else "Complete"
        conditions = [{"type": "FailureTarget" if failed else "SuccessCriteriaMet", "status": "True",
                       "lastTransitionTime": now, "lastProbeTime": now},
                      {"type": kind, "status": "True", "lastTransitionTime": now, "lastProbeTime": now}]
        status: dict[str, Any] = {"startTime": now, "conditions": conditions,
                                  "failed" if failed else "succeeded": 1}
        if not failed:
            status["completionTime"] = now
        self.batch.patch_namespaced_job_status(job.metadata.name, NS, {"status": status})


@pytest.fixture
def batch(kube_env: Env) -> Iterator[client.BatchV1Api]:
    api = api_client(str(kube_env.cp.kubeconfig))
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NS}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    b = client.BatchV1Api(api)
    yield b
    b.delete_collection_namespaced_job(NS, propagation_policy="Background")


def sweep_args(name: str, *extra: str) -> list[str]:
    return ["profile", "sweep", *extra, "--name", name, "--image", "registry.invalid/bench:1", "--memory", "60Gi",
            "--policy", str(ROOT / "policies" / "mi300x-inference.yaml"), "--sizes", "32,64,128", "--namespace", NS,
            "--node", "gpu-7", "--", "sh", "-c", "bench --metadata computeUnits=$GPUSLICE_COMPUTE_UNITS"]


def contains(have: Any, want: Any) -> bool:
    """Every field of `want` is in `have` with the same value (the server adds defaults, never changes ours)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and contains(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(map(contains, have, want))
    return have == want


def run_sweep(kube_env: Env, batch: client.BatchV1Api, name: str, fail: set[str],
              capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, Any]], JobController]:
    assert main(sweep_args(name)) == 0
    printed = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    controller = JobController(batch, fail)
    controller.thread.start()
    try:
        code = main(sweep_args(name, "--apply", "--kubeconfig", str(kube_env.cp.kubeconfig), "--timeout", "60"))
    finally:
        controller.stop.set()
        controller.thread.join()
    return code, printed, controller


def test_apply_creates_the_printed_jobs_one_at_a_time(kube_env: Env, batch: client.BatchV1Api,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, printed, controller = run_sweep(kube_env, batch, "llama", set(), capsys)
    assert code == 0
    assert "llama-sweep-128cu: succeeded" in capsys.readouterr().out
    assert controller.seen == [d["metadata"]["name"] for d in printed] == [
        "llama-sweep-32cu", "llama-sweep-64cu", "llama-sweep-128cu"]
    assert controller.overlaps == []  # never two runs at once
    for want in printed:
        have = read_json(batch.read_namespaced_job(want["metadata"]["name"], NS, _preload_content=False))
        assert contains(have, want), (want, have)


def test_a_failed_run_stops_the_sweep(kube_env: Env, batch: client.BatchV1Api,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, controller = run_sweep(kube_env, batch, "qwen", {"qwen-sweep-64cu"}, capsys)
    assert code == 1
    assert "qwen-sweep-64cu: failed" in capsys.readouterr().out
    assert controller.seen == ["qwen-sweep-32cu", "qwen-sweep-64cu"]  # 128 CUs never created
