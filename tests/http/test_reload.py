"""Policy hot reload through the store's file watcher: a valid change applies, an invalid one is
rejected, counted and reported, and the last good policy stays in force."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from extender.engine.policy_store import PolicyStore
from tests.http.conftest import MakeExtender, sample


def _wait(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _write(path: Path, text: str) -> None:
    """Replace the file atomically, as a ConfigMap volume does (a half-written file is a different test)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_hot_reload_applies_valid_and_rejects_invalid(make_extender: MakeExtender, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    _write(path, "scoring:\n  strategy: binpack\n")
    store = PolicyStore.from_file(path)
    ext = make_extender(policies=store)
    watcher = store.watch(0.05)
    try:
        v0 = ext.client.get("/version").get_json()["policyVersion"]

        _write(path, "scoring:\n  strategy: spread\nburst:\n  sharedFraction: 0.25\n")
        _wait(lambda: ext.client.get("/version").get_json()["policyVersion"] != v0)
        v1 = store.current.version
        assert store.current.scoring.strategy == "spread"
        assert ext.engine.ledger.shared_fraction == 0.25  # listeners saw the new policy
        m = ext.metrics()
        assert sample(m, "gpuslice_policy_reloads_total", result="applied") == 1

        _write(path, "scoring:\n  strategy: sideways\nburst:\n  sharedFraction: 7\n")
        _wait(lambda: store.reloads["rejected"] == 1)
        assert store.current.version == v1  # the last good policy stays
        d = ext.ledger()
        assert d["policyVersion"] == v1
        assert "scoring.strategy" in d["policyReloadError"] and "burst.sharedFraction" in d["policyReloadError"]
        assert sample(ext.metrics(), "gpuslice_policy_reloads_total", result="rejected") == 1

        # verbs keep working under the last good policy
        resp = ext.client.post("/filter", json={"Pod": {"metadata": {"name": "p", "uid": "u1", "annotations": {
            "gpuslice.io/compute": "250m", "gpuslice.io/memory": "8Gi"}}}, "NodeNames": ["node-a"]})
        assert resp.get_json()["NodeNames"] == ["node-a"]

        _write(path, "scoring:\n  strategy: binpack\n")
        _wait(lambda: store.current.version == v0)
        assert ext.ledger()["policyReloadError"] is None
    finally:
        watcher.stop.set()  # type: ignore[attr-defined]
