"""The Grafana dashboard in deploy/ only charts metrics the extender really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from extender.engine.solver_placer import SolverPlacer
from tests.http.conftest import MakeExtender, load, with_annotations

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "gpuslice-dashboard.json"


def test_every_dashboard_metric_is_exported(make_extender: MakeExtender) -> None:
    ext = make_extender(engine_kwargs={"bind_placer": SolverPlacer()})
    ext.post("filter", with_annotations(load("ncc-true-filter-01.request.json"), {"gpuslice.io/compute": "100m",
                                                                                "gpuslice.io/memory": "1Gi"}))
    ext.post("bind", load("ncc-true-bind-01.request.json"))
    exported = {s.name for f in text_string_to_metric_families(ext.metrics()) for s in f.samples}
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    charted = {m for e in exprs for m in re.findall(r"gpuslice_[a-z_]+", e)}
    assert charted, "the dashboard charts nothing"
    missing = sorted(charted - exported)
    assert not missing, f"dashboard charts metrics the extender does not export: {missing}"
