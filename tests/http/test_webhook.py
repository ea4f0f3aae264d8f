"""The mutating admission webhook: what it patches, what it refuses (in filter's words), over TLS."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from extender.core.policy import parse_policy
from extender.engine.admission import SHARE_RESOURCE, admit
from extender.engine.cluster import PodView
from extender.engine.demo import demo_cluster
from extender.engine.dra_requests import MARKER_RESOURCE
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.http.webhook import create_webhook_app
from extender.kube.webhook_certs import generate

ROOT = Path(__file__).resolve().parents[2]
POLICY = parse_policy({})


def pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    spec.setdefault("containers", [{"name": "main", "image": "x"}])
    return {"metadata": {"name": "p", "namespace": "t", "annotations": annotations or {}}, "spec": spec}


SLICE = {"gpuslice.io/compute": "250m", "gpuslice.io/memory": "16Gi"}


def test_a_pod_with_slice_keys_gets_the_scheduler_and_its_share() -> None:
    a = admit(pod(SLICE), POLICY, "gpuslice")
    assert a.allowed and a.patch == [
        {"op": "add", "path": "/spec/schedulerName", "value": "gpuslice"},
        {"op": "add", "path": "/spec/containers/0/resources", "value": {"limits": {SHARE_RESOURCE: "1"}}}]


def test_count_and_existing_limits_and_explicit_choices() -> None:
    two = pod({**SLICE, "gpuslice.io/count": "2"}, schedulerName="default-scheduler",
              containers=[{"name": "m", "resources": {"limits": {"cpu": "1"}}}])
    assert admit(two, POLICY, "gs").patch == [
        {"op": "add", "path": "/spec/schedulerName", "value": "gs"},
        {"op": "add", "path": "/spec/containers/0/resources/limits/gpuslice.io~1gpu-share", "value": "2"}]
    asked = pod(SLICE, schedulerName="mine", containers=[{"name": "a"}, {"name": "b", "resources": {
        "limits": {SHARE_RESOURCE: "1"}}}])
    assert admit(asked, POLICY, "gpuslice").patch == []  # the pod's own choices stand
    requests_only = pod(SLICE, containers=[{"name": "m", "resources": {"requests": {"cpu": "1"}}}])
    assert admit(requests_only, POLICY, "g").patch[1] == {
        "op": "add", "path": "/spec/containers/0/resources/limits", "value": {SHARE_RESOURCE: "1"}}


def test_pods_without_keys_pass_untouched() -> None:
    a = admit(pod({"other.io/x": "1"}), POLICY, "gpuslice")
    assert a.allowed and not a.patch


def test_a_dra_pod_routed_by_the_marker_gets_the_scheduler_alone() -> None:
    routed = [{"name": "m", "resources": {"claims": [{"name": "gpu"}], "limits": {MARKER_RESOURCE: "1"}}}]
    claims = [{"name": "gpu", "resourceClaimTemplateName": "gpu-slice-64cu-60gi"}]
    a = admit(pod(containers=routed, resourceClaims=claims), POLICY, "gpuslice")
    assert a.allowed and a.patch == [{"op": "add", "path": "/spec/schedulerName", "value": "gpuslice"}]
    assert admit(pod(containers=routed, schedulerName="mine"), POLICY, "gpuslice").patch == []
    assert admit(pod(resourceClaims=claims), POLICY, "gpuslice").patch == []  # not routed: DRA alone


@pytest.mark.parametrize("annotations", [{**SLICE, "gpuslice.io/compute": "2"}, {"gpuslice.io/memroy": "1Gi"},
                                         {**SLICE, "gpuslice.io/class": "fast"}])
def test_malformed_requests_are_refused_with_filters_message(annotations: dict[str, str]) -> None:
    a = admit(pod(annotations), POLICY, "gpuslice")
    engine = Engine(demo_cluster(), PolicyStore(POLICY))
    engine.sync()
    view = PodView(uid="u", namespace="t", name="p", annotations=annotations)
    result = engine.filter(view, names=["mi300x-0"])
    assert not a.allowed and a.message == result.unresolvable["mi300x-0"]


def review(obj: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "r-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "operation": operation, "namespace": "t", "object": obj}}


def test_admission_review_over_http() -> None:
    client = create_webhook_app(PolicyStore(POLICY)).test_client()
    out = client.post("/mutate", json=review(pod(SLICE))).get_json()["response"]
    assert out["uid"] == "r-1" and out["allowed"] and out["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(out["patch"]))[0]["path"] == "/spec/schedulerName"
    bad = client.post("/mutate", json=review(pod({"gpuslice.io/compute": "lots"}))).get_json()["response"]
    assert not bad["allowed"] and bad["status"]["message"].startswith("gpuslice: gpuslice.io/compute=")
    assert client.post("/mutate", json=review(pod(SLICE), "UPDATE")).get_json()["response"] == {
        "uid": "r-1", "allowed": True}
    assert client.post("/mutate", data="nonsense").status_code == 400


def test_served_over_tls(tmp_path: Path) -> None:
    cert = generate(["localhost"])
    crt, key = cert.write(tmp_path)
    (tmp_path / "ca.crt").write_bytes(cert.ca)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "extender", "webhook", "--host", "127.0.0.1", "--port", str(port),
                             "--tls-cert", str(crt), "--tls-key", str(key)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        body = json.dumps(review(pod(SLICE))).encode()
        deadline = time.monotonic() + 30
        while True:
            try:
                req = urllib.request.Request(f"https://localhost:{port}/mutate", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
                    assert json.loads(resp.read())["response"]["allowed"] is True
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
