"""`gpuslice profile sweep --apply`: the sweep's Jobs run one after another, never two at once (a
co-tenant would show up as interference in the measured curve), and each run's result JSON — the last
line of its log that is a JSON object, e.g. `cat result.json` at the end of the benchmark — is saved."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

log = logging.getLogger(__name__)


def last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                return doc
    return None


class SweepRunner:
    def __init__(self, api: client.ApiClient, poll: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.poll = poll
        self.sleep = sleep

    def run(self, jobs: list[dict[str, Any]], timeout: float, out: Path | None) -> list[tuple[str, str]]:
        """(job name, outcome) per Job, in order; stops at the first Job that fails or times out."""
        results = []
        for job in jobs:
            meta = job["metadata"]
            self.batch.create_namespaced_job(meta["namespace"], job)
            outcome = self._wait(meta["namespace"], meta["name"], timeout)
            if outcome == "succeeded" and out is not None:
                outcome = self._save(meta["namespace"], meta["name"], out)
            results.append((meta["name"], outcome))
            log.info("sweep %s: %s", meta["name"], outcome)
            if not outcome.startswith("succeeded"):
                break
        return results

    def _wait(self, namespace: str, name: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.batch.read_namespaced_job_status(name, namespace).status
            if status is not None and (status.succeeded or 0) > 0:
                return "succeeded"
            if status is not None and (status.failed or 0) > 0:
                return "failed"
            self.sleep(self.poll)
        return f"timed out after {timeout:g}s"

    def _save(self, namespace: str, name: str, out: Path) -> str:
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
        for pod in pods:
            doc = last_json_line(self.core.read_namespaced_pod_log(pod.metadata.name, namespace))
            if doc is not None:
                out.mkdir(parents=True, exist_ok=True)
                path = out / f"{name}.json"
                path.write_text(json.dumps(doc))
                return f"succeeded, result in {path}"
        return "succeeded, but no log line was a JSON object (print the result JSON last)"
