"""Input that used to stall, crash or rewrite the extender (issue 12), through the HTTP face."""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from extender.core.inventory import INVENTORY_ANNOTATION
from extender.engine.demo import GPU_NODES
from extender.engine.policy_store import PolicyStore
from tests.http.conftest import Extender, MakeExtender, load, sample, with_annotations

REFUSED = "beyond gpuslice's bound"


def nodes_form() -> dict[str, Any]:
    return load("ncc-false-filter-01.request.json")


def names_form() -> dict[str, Any]:
    return load("ncc-true-filter-01.request.json")


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"Pod": ' + b"1" * 5000 + b"}",
                                  b'{"Pod": {"metadata": {"name": "\xff\xfe"}}}'])
def test_client_errors_are_400_without_a_traceback(extender: Extender, caplog: pytest.LogCaptureFixture,
                                                   body: bytes) -> None:
    caplog.set_level(logging.DEBUG)
    for verb in ("filter", "prioritize", "preempt", "bind"):
        resp = extender.client.post(f"/scheduler/{verb}", data=body, content_type="application/json")
        assert resp.status_code == 400, resp.get_data(as_text=True)
    assert tracebacks(caplog) == []


def test_integers_beyond_64_bits_in_echoed_fields_are_no_500(extender: Extender) -> None:
    body = nodes_form()
    body["Nodes"]["items"][1]["status"]["someCounter"] = 2**64
    body["Nodes"]["items"][1]["metadata"]["generation"] = -(2**70)
    resp = extender.client.post("/scheduler/filter", json=body)
    assert resp.status_code < 500
    victims = load("ncc-false-preempt-01.request.json")
    for v in (victims.get("NodeNameToMetaVictims") or victims.get("NodeNameToVictims") or {}).values():
        v["NumPDBViolations"] = 2**64
    assert extender.client.post("/scheduler/preempt", json=victims).status_code < 500


@pytest.mark.parametrize("memory", ["8Ei", "9Ei", "1e4300", "1e300000"])
def test_extreme_memory_is_unresolvable_not_an_error(extender: Extender, memory: str) -> None:
    body = with_annotations(names_form(), {"gpuslice.io/compute": "250m", "gpuslice.io/memory": memory})
    body["NodeNames"] = list(GPU_NODES)
    start = time.perf_counter()
    out = extender.post("filter", body)
    assert time.perf_counter() - start < 1.0
    assert out["Error"] == ""
    assert set(out["FailedAndUnresolvableNodes"]) == set(GPU_NODES)
    assert REFUSED in out["FailedAndUnresolvableNodes"][GPU_NODES[0]]
    assert (sample(extender.metrics(), "gpuslice_refused_input_total", key="gpuslice.io/memory") or 0) >= 1


def _as_request_node(name: str, annotations: dict[str, str] | None = None,
                     allocatable: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": annotations or {}},
            "status": {"allocatable": allocatable or {}}}


def _filter_nodes(extender: Extender, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    body = with_annotations(nodes_form(), {"gpuslice.io/compute": "125m", "gpuslice.io/memory": "8Gi"})
    body["Nodes"]["items"] = nodes
    return extender.post("filter", body)


def test_request_nodes_never_rewrite_the_ledger(extender: Extender) -> None:
    before = extender.ledger()
    known = GPU_NODES[0]
    sick = json.dumps([{"index": i, "id": f"x{i}", "model": "MI300X", "computeUnits": 304, "xcds": 8,
                        "shaderEngines": 32, "memoryBytes": 2**30, "healthy": False} for i in range(8)])
    out = _filter_nodes(extender, [_as_request_node(known),
                                   _as_request_node(GPU_NODES[1], {INVENTORY_ANNOTATION: sick}),
                                   _as_request_node("phantom", allocatable={"amd.com/gpu": "2"})])
    assert known in [n["metadata"]["name"] for n in out["Nodes"]["items"]]
    assert "phantom" in [n["metadata"]["name"] for n in out["Nodes"]["items"]]  # judged from the request
    after = extender.ledger()
    assert after["nodes"] == before["nodes"]  # a bare Node erased nothing, no GPU turned unhealthy, no phantom
    assert extender.engine.ledger.node("phantom") is None


def test_request_nodes_are_bounded(extender: Extender) -> None:
    start = time.perf_counter()
    out = _filter_nodes(extender, [_as_request_node("phantom", allocatable={"amd.com/gpu": "100000"}),
                                   _as_request_node("wide", {INVENTORY_ANNOTATION: json.dumps(
                                       [{"index": 0, "id": "w", "model": "MI300X", "computeUnits": 3040000, "xcds": 8,
                                         "shaderEngines": 32, "memoryBytes": 2**30, "healthy": True}])})])
    assert time.perf_counter() - start < 1.0
    assert REFUSED in out["FailedNodes"]["phantom"] and REFUSED in out["FailedNodes"]["wide"]
    assert extender.engine.ledger.node("phantom") is None and extender.engine.ledger.node("wide") is None


def test_kept_node_name_lists_are_bounded_by_bytes(extender: Extender) -> None:
    index = extender.engine.ledger.gpu_index
    for i in range(8):
        names = [f"node-{i}-{j:07d}-{'x' * 24}" for j in range(60_000)]
        index.slots_of(names)
    kept = sum(len(n) for key in index._slot_lists for n in key)
    assert kept <= 16 * 2**20


def test_pending_pods_are_bounded_by_bytes(extender: Extender) -> None:
    body = names_form()
    big = "x" * 200_000
    for i in range(400):
        b = copy.deepcopy(body)
        b["Pod"]["metadata"]["uid"] = f"uid-{i}"
        b["Pod"]["metadata"]["annotations"] = {"note": big}
        extender.post("filter", b)
    held = sum(len(v) for p in extender.engine._pending.values() for v in p.annotations.values())
    assert held <= 64 * 2**20


def test_non_utf8_policy_file_is_counted_as_rejected(make_extender: MakeExtender, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("burst:\n  sharedFraction: 0.125\n")
    store = PolicyStore.from_file(path)
    path.write_bytes(b"burst:\n  sharedFraction: \xff\xfe\n")
    assert store.reload() is False
    assert store.reload() is False  # the same bad file: counted and logged once
    assert store.reloads["rejected"] == 1
    assert "UTF-8" in (store.last_error or "")
    assert tracebacks(caplog) == []
    path.write_text("burst:\n  sharedFraction: 0.25\n")
    assert store.reload() is True


def test_policy_watch_survives_an_alias_bomb(make_extender: MakeExtender, tmp_path: Path) -> None:
    from tests.core.test_bounds import BOMB

    path = tmp_path / "policy.yaml"
    path.write_text("burst:\n  sharedFraction: 0.125\n")
    store = PolicyStore.from_file(path)
    ext = make_extender(policies=store)
    watcher = store.watch(0.02)
    try:
        path.write_text(BOMB)
        deadline = time.monotonic() + 5
        while store.reloads["rejected"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.reloads["rejected"] == 1
        assert len(ext.client.get("/debug/ledger").get_data()) < 1_000_000
        path.write_text("burst:\n  sharedFraction: 0.25\n")
        while store.current.burst.sharedFraction != 0.25 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.current.burst.sharedFraction == 0.25
        assert watcher.is_alive()
    finally:
        watcher.stop.set()  # type: ignore[attr-defined]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_policy_watcher_fails_readyz_and_shows_in_metrics(make_extender: MakeExtender, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("burst:\n  sharedFraction: 0.125\n")
    store = PolicyStore.from_file(path)
    ext = make_extender(policies=store)

    class Fatal(BaseException):
        pass

    def die() -> bool:
        raise Fatal()

    store.reload = die  # type: ignore[method-assign]
    watcher = store.watch(0.01)
    watcher.join(5)
    assert not watcher.is_alive()
    assert ext.client.get("/readyz").status_code == 503
    assert sample(ext.metrics(), "gpuslice_policy_watch_up") == 0
