"""The mutating admission webhook over AdmissionReview v1 (`gpuslice webhook`, served over TLS).

The API server posts an AdmissionReview for each pod created in scope; the answer allows it with a
JSONPatch (engine/admission.py decides what), or refuses it with filter's message. The API server
only calls for pods that carry a gpuslice key (the registration's matchConditions, deploy/webhook/).
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from flask import Flask, Response, jsonify, request

from extender.engine.admission import admit
from extender.engine.policy_store import PolicyStore

log = logging.getLogger(__name__)


def review_response(review: dict[str, Any], policies: PolicyStore, scheduler_name: str) -> dict[str, Any]:
    req = review.get("request") or {}
    out: dict[str, Any] = {"uid": req.get("uid", "")}
    obj = req.get("object")
    if req.get("kind", {}).get("kind") != "Pod" or req.get("operation") != "CREATE" or not isinstance(obj, dict):
        out["allowed"] = True  # registered for pod creation only; anything else is not ours to judge
    else:
        decision = admit(obj, policies.current, scheduler_name)
        out["allowed"] = decision.allowed
        if not decision.allowed:
            out["status"] = {"code": 400, "reason": "BadRequest", "message": decision.message}
            log.info("refused pod %s/%s: %s", req.get("namespace"), (obj.get("metadata") or {}).get("name")
                     or (obj.get("metadata") or {}).get("generateName"), decision.message)
        elif decision.patch:
            out["patchType"] = "JSONPatch"
            out["patch"] = base64.b64encode(json.dumps(decision.patch).encode()).decode()
    return {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"), "kind": "AdmissionReview",
            "response": out}


def create_webhook_app(policies: PolicyStore, scheduler_name: str = "gpuslice") -> Flask:
    app = Flask("gpuslice-webhook")

    @app.post("/mutate")
    def mutate() -> Response:
        review = request.get_json(force=True, silent=True)
        if not isinstance(review, dict):
            return Response("expected an AdmissionReview", status=400)
        return jsonify(review_response(review, policies, scheduler_name))

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok", mimetype="text/plain")

    return app
