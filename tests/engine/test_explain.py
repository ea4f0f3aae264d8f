"""`explain`: the pod's request, the best nodes with the binding constraint, what would make it fit —
from the engine's own filter, so it never disagrees with the extender."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from werkzeug.serving import make_server

from extender.cli import main
from extender.core.policy import Policy, parse_policy
from extender.engine.cluster import MemoryCluster, PodView
from extender.engine.demo import demo_cluster, gpu_node
from extender.engine.explain import explain
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.explain_cli import gpu_rows
from extender.http.app import create_app

P = "gpuslice.io"


def pod(name: str, ns: str = "t", **keys: str) -> PodView:
    return PodView(uid=f"uid-{ns}-{name}", namespace=ns, name=name,
                   annotations={f"{P}/{k}": v for k, v in keys.items()})


def engine_with(*pods: PodView, policy: Policy | None = None, cluster: MemoryCluster | None = None) -> Engine:
    policy = policy or parse_policy({})
    cluster = cluster or demo_cluster(policy)
    for p in pods:
        cluster.add_pod(p)
    engine = Engine(cluster, PolicyStore(policy))
    engine.sync()
    return engine


def test_a_pod_that_fits_lists_the_best_scored_nodes() -> None:
    p = pod("small", compute="125m", memory="8Gi", **{"class": "compute-bound"})
    e = explain(engine_with(p), p)
    assert e.request is not None and e.request.compute_millis == 125
    assert e.fitting > 0 and all(v.fits for v in e.best) and len(e.best) == 3
    assert [v.score for v in e.best] == sorted((v.score for v in e.best), reverse=True)


def _one_gpu_with_a_tenant(*pods: PodView) -> Engine:
    """One MI300X already holding a 250m tenant: a big request is short of CUs, not of a whole GPU."""
    one = MemoryCluster()
    one.add_node(gpu_node("one", gpus=1))
    filler = pod("filler", compute="250m", memory="8Gi")
    engine = engine_with(filler, *pods, cluster=one)
    assert engine.bind("t", "filler", filler.uid, "one") == ""
    return engine


def test_compute_is_named_and_the_hint_respects_rounding() -> None:
    p = pod("big", compute="900m", memory="100Gi")  # past the guaranteeable region: the whole GPU, which is taken
    e = explain(_one_gpu_with_a_tenant(p), p)
    assert e.fitting == 0 and {v.constraint for v in e.best} == {"compute"}
    hint = next(h for h in e.hints if "compute <=" in h)
    millis = int(hint.rsplit("<= ", 1)[1].rstrip("m"))
    smaller = pod("smaller", compute=f"{millis}m", memory="100Gi")
    assert explain(_one_gpu_with_a_tenant(smaller), smaller).fitting > 0  # the advice works
    too_big = pod("too-big", compute=f"{millis + 1}m", memory="100Gi")
    assert explain(_one_gpu_with_a_tenant(too_big), too_big).fitting == 0  # and is the largest that does


def test_memory_class_rule_and_gpu_count() -> None:
    cluster = MemoryCluster()
    cluster.add_node(gpu_node("n", gpus=2))
    mem = pod("mem", compute="100m", memory="300Gi")
    e = explain(engine_with(mem, cluster=cluster), mem)
    assert e.best[0].constraint == "memory" and any(f"{P}/memory <=" in h for h in e.hints)

    count = pod("count", compute="100m", memory="1Gi", count="3")
    e = explain(engine_with(count, cluster=cluster), count)
    assert e.best[0].constraint == "gpu-count" and any("more GPUs than any node has" in h for h in e.hints)

    one = MemoryCluster()
    one.add_node(gpu_node("one", gpus=1))
    policy = parse_policy({"classes": {"maxMemoryBoundPerGpu": 1}})
    first, second = (pod(n, compute="100m", memory="1Gi", **{"class": "memory-bound"}) for n in ("first", "second"))
    engine = engine_with(first, second, cluster=one, policy=policy)
    assert engine.bind("t", "first", first.uid, "one") == ""
    e = explain(engine, second)
    assert e.best[0].constraint == "class-rule" and "policy max 1" in e.best[0].detail


def test_quota_and_invalid_requests_and_pass_through() -> None:
    policy = parse_policy({"quotas": {"q": {"maxTenants": 0}}})
    q = pod("q", ns="q", compute="100m", memory="1Gi")
    e = explain(engine_with(q, policy=policy), q)
    assert e.fitting == 0 and "quota" in e.quota and any("quotas.q" in h for h in e.hints)

    typo = pod("typo", compute="100m", memroy="1Gi")
    e = explain(engine_with(typo), typo)
    assert e.request is None and f"did you mean {P}/memory?" in e.request_error

    plain = PodView(uid="u", namespace="t", name="plain")
    e = explain(engine_with(plain), plain)
    assert e.request is None and not e.request_error and "passes it through" in e.hints[0]


def test_cli_explains_a_demo_pod(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--demo", "serving/llama-8b-decode-3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["request"]["memoryBytes"] == 60 * 2**30 and doc["fittingNodes"] > 0 and len(doc["best"]) == 3
    assert main(["explain", "--demo", "serving/nope"]) == 2
    assert "not found" in capsys.readouterr().err


def test_top_rows_add_up() -> None:
    engine = engine_with()
    rows = gpu_rows(engine.ledger.snapshot(), engine.policies.current)
    assert len(rows) >= 32
    for r in rows:
        assert r["guaranteed"] + r["burst"] + r["free"] <= r["total"]
        assert 0.0 <= r["fragmentation"] <= 1.0
    assert sum(len(r["tenants"]) for r in rows) >= 10


@pytest.fixture
def running_extender() -> Iterator[str]:
    engine = engine_with()
    server = make_server("127.0.0.1", 0, create_app(engine), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_top_reads_a_running_extender(running_extender: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--url", running_extender, "--once"]) == 0
    out = capsys.readouterr().out
    assert "mi300x-0" in out and "memory-bound" in out and "of CUs guaranteed" in out
    assert main(["top", "--url", "http://127.0.0.1:9", "--once"]) == 2
    assert "is `gpuslice serve` listening there?" in capsys.readouterr().err
