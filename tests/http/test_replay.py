"""Replay every request a real kube-scheduler sent (tests/fixtures/kube-scheduler) against the app over
the demo cluster. The recorded pods ask for `amd.com/gpu` but name no gpuslice key, so gpuslice passes
them through: filter keeps every node, prioritize is neutral, bind just records the binding."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import pytest

from extender.engine.scheduler import NEUTRAL_SCORE
from tests.http.conftest import FIXTURES, Extender, MakeExtender, load

VERB_ORDER = {"filter": 0, "prioritize": 1, "preempt": 2, "bind": 3}
NAME = re.compile(r"^(?P<tag>.+)-(?P<verb>filter|prioritize|preempt|bind)-(?P<n>\d+)\.request\.json$")


def _sessions() -> dict[str, list[tuple[str, str]]]:
    """Recorded requests by tag, in the order a scheduling cycle makes them: filter, prioritize,
    (preempt), bind."""
    out: dict[str, list[tuple[int, int, str, str]]] = defaultdict(list)
    for path in FIXTURES.glob("*.request.json"):
        m = NAME.match(path.name)
        assert m, path.name
        out[m["tag"]].append((VERB_ORDER[m["verb"]], int(m["n"]), m["verb"], path.name))
    return {tag: [(verb, name) for _, _, verb, name in sorted(items)] for tag, items in out.items()}


SESSIONS = _sessions()


def test_every_recorded_request_is_replayed() -> None:
    replayed = {name for session in SESSIONS.values() for _, name in session}
    assert replayed == {p.name for p in FIXTURES.glob("*.request.json")}
    assert set(SESSIONS) == {"ncc-false", "ncc-true", "smoke-ncc-false", "smoke-ncc-true"}


def _request_nodes(req: dict[str, Any]) -> list[str]:
    if req.get("NodeNames") is not None:
        return list(req["NodeNames"])
    return [n["metadata"]["name"] for n in req["Nodes"]["items"]]


def _check_filter(ext: Extender, req: dict[str, Any], recorded: dict[str, Any], resp: dict[str, Any]) -> None:
    assert resp["Error"] == ""
    assert resp["FailedNodes"] == {} and resp["FailedAndUnresolvableNodes"] == {}
    if req.get("NodeNames") is not None:
        assert "Nodes" not in resp
        assert resp["NodeNames"] == req["NodeNames"]
    else:
        assert "NodeNames" not in resp
        assert resp["Nodes"]["items"] == req["Nodes"]["items"]  # the Node objects exactly as received
    if "Error" in recorded and recorded["Error"] == "":  # same shape as the recording extender's reply
        assert set(resp) == set(recorded)
        form = "NodeNames" if "NodeNames" in recorded else "Nodes"
        assert type(resp[form]) is type(recorded[form])


@pytest.mark.parametrize("tag", sorted(SESSIONS))
def test_replay_session(make_extender: MakeExtender, tag: str) -> None:
    ext = make_extender()
    ledger_before = ext.engine.ledger.snapshot()
    for verb, name in SESSIONS[tag]:
        req = load(name)
        recorded = load(name.replace(".request.", ".response."))
        resp = ext.post(verb, req)
        if verb == "filter":
            _check_filter(ext, req, recorded, resp)
        elif verb == "prioritize":
            assert resp == [{"Host": n, "Score": NEUTRAL_SCORE} for n in _request_nodes(req)]
            assert [h["Host"] for h in resp] == [h["Host"] for h in recorded]
        elif verb == "bind":
            assert resp == recorded == {"Error": ""}
            bound = [p for p in ext.cluster.list_pods() if p.uid == req["PodUID"]]
            assert [(p.name, p.node_name) for p in bound] == [(req["PodName"], req["Node"])]
        else:  # preempt: a pass-through pod's victims are kube-scheduler's business, returned unchanged
            victims = req["NodeNameToMetaVictims"] or {
                node: {"Pods": [{"UID": p["metadata"]["uid"]} for p in v["Pods"]],
                       "NumPDBViolations": v["NumPDBViolations"]}
                for node, v in req["NodeNameToVictims"].items()}
            assert resp == {"NodeNameToMetaVictims": victims}
            assert set(resp) == set(recorded)
    # pass-through pods never touch the GPU ledgers
    assert ext.engine.ledger.snapshot() == ledger_before
    assert ext.engine.stats.binds["ok"] == sum(1 for verb, _ in SESSIONS[tag] if verb == "bind")


@pytest.mark.parametrize("prefix", ["", "/scheduler"])
def test_verbs_served_with_and_without_url_prefix(extender: Extender, prefix: str) -> None:
    resp = extender.post("filter", load("ncc-true-filter-01.request.json"), prefix=prefix)
    assert resp["NodeNames"] == ["bad-node-c", "node-a", "node-b"]


def test_custom_url_prefix(make_extender: MakeExtender) -> None:
    ext = make_extender(url_prefix="/gpu/ext/")
    assert ext.post("filter", load("ncc-true-filter-02.request.json"), prefix="/gpu/ext")["NodeNames"] == ["node-b"]
    assert ext.client.post("/scheduler/filter", json=load("ncc-true-filter-02.request.json")).status_code == 404


@pytest.mark.parametrize("name", ["ncc-true-bind-01.request.json", "ncc-false-bind-02.request.json"])
def test_bind_without_filter_is_a_clear_error(extender: Extender, name: str) -> None:
    """kube-scheduler never binds a pod it did not filter, but a restarted extender may meet one: it is
    then looked up in the cluster, and the demo cluster does not know the recorded pods."""
    req = load(name)
    before = extender.engine.ledger.snapshot()
    resp = extender.post("bind", req)
    assert resp == {"Error": f"gpuslice: pod {req['PodNamespace']}/{req['PodName']} not found"}
    assert extender.engine.ledger.snapshot() == before
    assert extender.engine.stats.binds["error"] == 1


def test_bind_of_a_pod_known_to_the_cluster_needs_no_filter(extender: Extender) -> None:
    from extender.engine.demo import PENDING

    pod = PENDING[0]
    resp = extender.post("bind", {"PodName": pod.name, "PodNamespace": pod.namespace, "PodUID": pod.uid,
                                  "Node": "mi300x-3"})
    assert resp == {"Error": ""}
    assert extender.engine.assignment_for(pod.uid).node == "mi300x-3"


def test_bind_with_a_stale_uid_is_refused(extender: Extender) -> None:
    from extender.engine.demo import PENDING

    pod = PENDING[0]
    resp = extender.post("bind", {"PodName": pod.name, "PodNamespace": pod.namespace, "PodUID": "not-the-uid",
                                  "Node": "mi300x-3"})
    assert "has uid" in resp["Error"] and "recreated" in resp["Error"]
