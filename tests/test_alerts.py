"""deploy/monitoring: every alert names only metrics the extender and the agent really export, and
the PrometheusRule carries exactly the plain rules file's groups."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from extender.agent.metrics import AgentMetrics
from extender.engine.demo import demo_cluster
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.http.app import create_app

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
RULES = yaml.safe_load((MONITORING / "gpuslice-alerts.rules.yaml").read_text())
ALERTS = [r for g in RULES["groups"] for r in g["rules"]]
# PromQL words that look like metric names but are functions, keywords or label names.
PROMQL = {"increase", "rate", "sum", "absent", "clamp_min", "by", "without", "on", "and", "or", "unless",
          "result", "reason", "action", "verb", "max", "min", "avg", "absent_over_time"}


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, scraped from a running extender app and the agent's registry."""
    engine = Engine(demo_cluster(), PolicyStore())
    engine.sync()
    text = create_app(engine).test_client().get("/metrics").get_data(as_text=True)
    text += generate_latest(AgentMetrics().registry).decode()
    out: dict[str, set[str]] = {}
    agent = AgentMetrics()
    for metric in vars(agent).values():  # a labelled agent family has no sample until first used
        if isinstance(metric, MetricWrapperBase):
            name = metric._name + ("_total" if metric._type == "counter" else "")
            out.setdefault(name, set()).update(metric._labelnames)
    for family in text_string_to_metric_families(text):
        # a labelled family with no child yet has no samples, but is exported (HELP/TYPE) all the same
        out.setdefault(family.name + ("_total" if family.type == "counter" else ""), set())
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


EXPORTED = exported()


def metric_names(expr: str) -> set[str]:
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b\d+(\.\d+)?(e-?\d+)?\b", " ", expr)  # selectors, ranges, numbers
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare) if w not in PROMQL}


@pytest.mark.parametrize("alert", ALERTS, ids=[a["alert"] for a in ALERTS])
def test_alert_names_only_exported_metrics(alert: dict) -> None:
    names = metric_names(alert["expr"])
    assert names and names <= set(EXPORTED), names - set(EXPORTED)
    for name, labels in re.findall(r"([a-z_:]+)\{([^}]*)\}", alert["expr"]):
        for label in re.findall(r"(\w+)\s*!?=~?", labels):
            assert label in EXPORTED[name], (name, label)


def test_every_alert_has_severity_and_words() -> None:
    assert {a["alert"] for a in ALERTS} >= {"GpuslicePolicyReloadRejected", "GpusliceLedgerNotSynced",
                                            "GpusliceReservationsExpiring", "GpusliceBindsFailing",
                                            "GpusliceVramBreach", "GpusliceAgentMaskRefused"}
    for a in ALERTS:
        assert a["labels"]["severity"] in ("warning", "critical") and a["annotations"]["summary"]


def test_prometheusrule_carries_the_rules_file() -> None:
    docs = [d for d in yaml.safe_load_all((MONITORING / "prometheusrule.yaml").read_text()) if d]
    (rule,) = docs
    assert rule["kind"] == "PrometheusRule" and rule["spec"] == RULES


def test_the_checker_sees_a_made_up_metric() -> None:
    assert metric_names('sum(rate(gpuslice_bind_total{result!="ok"}[5m])) / gpuslice_nope > 1e-9') == {
        "gpuslice_bind_total", "gpuslice_nope"}
