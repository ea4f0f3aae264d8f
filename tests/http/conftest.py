from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from extender.engine.cluster import MemoryCluster
from extender.engine.demo import demo_cluster
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.http.app import create_app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kube-scheduler"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def with_annotations(request: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
    """A recorded ExtenderArgs with gpuslice annotations added to its pod."""
    out = copy.deepcopy(request)
    meta = out["Pod"]["metadata"]
    meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
    return out


@dataclass
class Extender:
    engine: Engine
    cluster: MemoryCluster
    policies: PolicyStore
    app: Flask
    client: FlaskClient

    def post(self, verb: str, body: Any, prefix: str = "/scheduler") -> Any:
        resp = self.client.post(f"{prefix}/{verb}", json=body)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_json()

    def ledger(self) -> Any:
        return self.client.get("/debug/ledger").get_json()

    def metrics(self) -> str:
        return self.client.get("/metrics").get_data(as_text=True)


MakeExtender = Callable[..., Extender]


@pytest.fixture
def make_extender() -> MakeExtender:
    """Build an app over a fresh demo cluster (or a given cluster/engine); every call is independent."""

    def make(cluster: MemoryCluster | None = None, policies: PolicyStore | None = None, sync: bool = True,
             **app_kwargs: Any) -> Extender:
        cluster = cluster if cluster is not None else demo_cluster()
        policies = policies or PolicyStore()
        engine = Engine(cluster, policies, **app_kwargs.pop("engine_kwargs", {}))
        if sync:
            assert engine.sync() == []
        app = create_app(engine, **app_kwargs)
        return Extender(engine, cluster, policies, app, app.test_client())

    return make


@pytest.fixture
def extender(make_extender: MakeExtender) -> Extender:
    return make_extender()


def sample(metrics_text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition (None if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None
