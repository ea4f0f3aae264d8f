"""The extender's HTTP API: kube-scheduler's filter, prioritize and bind verbs, plus health, readiness,
metrics, a debug view of the ledgers and the version.

Failure rules: a malformed request (bad JSON, wrong content type, missing or mistyped fields, too
large) is the caller's fault and gets a 4xx with a JSON message, before the engine is touched. A pod
whose own gpuslice request is wrong is not an HTTP error: filter reports it per node as
unresolvable. Anything unexpected inside a verb is logged and answered with HTTP 200 and the
verb's own error field, which is how kube-scheduler expects an extender to fail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from extender import __version__
from extender.engine.scheduler import Engine
from extender.http import wire
from extender.http.metrics import ExtenderMetrics

log = logging.getLogger(__name__)

# Measured: a 5,000-node NodeList of realistic Nodes (agent inventory, labels, managedFields, images)
# is about 35 MiB (tests/http/test_bad_input.py); 64 MiB leaves room for bigger Node objects.
DEFAULT_MAX_BODY_BYTES = 64 * 2**20
DEFAULT_URL_PREFIX = "/scheduler"


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json_body() -> object:
    mimetype = request.mimetype
    if mimetype != "application/json":
        raise BadRequest(415, f"Content-Type must be application/json, got {mimetype or 'none'!r}")
    raw = request.get_data(cache=False)
    if not raw:
        raise BadRequest(400, "empty body: expected a JSON object")
    try:
        # orjson parses a filter request of thousands of nodes in C, and bounds what json would not:
        # nesting (1024 levels), integers (beyond 64 bits they are read as floats, so every echoed
        # value can be written back), invalid UTF-8.
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"body is not valid JSON: {exc}") from None


def create_app(engine: Engine, *, url_prefix: str = DEFAULT_URL_PREFIX,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, metrics: ExtenderMetrics | None = None) -> Flask:
    """A Flask app over `engine`. Verbs are served at `/<verb>` and, when `url_prefix` is set (the
    path part of kube-scheduler's `urlPrefix`), also at `<url_prefix>/<verb>`."""
    app = Flask("gpuslice")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    metrics = metrics or ExtenderMetrics(engine)
    app.extensions["gpuslice"] = {"engine": engine, "metrics": metrics}
    prefixes = [""]
    if url_prefix and url_prefix.strip("/"):
        prefixes.append("/" + url_prefix.strip("/"))

    def serve_verb(name: str, parse: Callable[[object], Any], act: Callable[[Any], Any],
                   on_error: Callable[[Any, str], Any]) -> None:
        def view() -> Response | tuple[Response, int]:
            start, start_cpu = time.perf_counter(), time.thread_time()
            try:
                try:
                    parsed = parse(_json_body())
                except BadRequest as exc:
                    return _error(exc.status, exc.message)
                except wire.WireError as exc:
                    engine.stats.refusal(exc)
                    return _error(400, f"invalid {name} request: {exc}")
                except RequestEntityTooLarge:
                    return _error(413, f"request body larger than the limit of {max_body_bytes} bytes "
                                  "(gpuslice serve --max-body-bytes)")
                except HTTPException as exc:
                    return _error(exc.code or 400, exc.description or exc.name)
                except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:
                    # Input the wire models let through but cannot convert: the client's fault, so no traceback.
                    log.info("%s: unreadable request: %s: %.200s", name, type(exc).__name__, exc)
                    return _error(400, f"invalid {name} request: {type(exc).__name__}: {str(exc)[:500]}")
                except Exception as exc:  # a bug in the wire conversion: worth a traceback, still not a 5xx
                    log.exception("%s: request conversion failed", name)
                    return _error(400, f"invalid {name} request: {type(exc).__name__}")
                try:
                    out = act(parsed)
                except Exception as exc:  # an engine bug must not become a 5xx that kube-scheduler retries
                    log.exception("%s failed", name)
                    out = on_error(parsed, f"gpuslice: internal error in {name}: {type(exc).__name__}: {exc}")
                return _json(out)
            finally:
                cpu = time.thread_time() - start_cpu  # read inside the wall-clock span, so never above it
                metrics.request_duration.labels(name).observe(time.perf_counter() - start)
                metrics.request_cpu.labels(name).inc(cpu)

        for prefix in prefixes:
            app.add_url_rule(f"{prefix}/{name}", f"{name}{prefix}", view, methods=["POST"])

    def prioritize_error(args: wire.ParsedArgs, message: str) -> list[dict[str, Any]]:
        # HostPriorityList has no error field: equal zero scores leave the ranking to kube-scheduler.
        names = args.names if args.node_names_form else [n.name for n in args.nodes or ()]
        return wire.priority_reply([(n, 0) for n in names or ()])

    serve_verb("filter", wire.parse_extender_args,
               lambda a: wire.filter_reply(a, engine.filter(a.pod, nodes=a.nodes, names=a.names)),
               lambda _a, message: wire.error_filter_reply(message))
    serve_verb("prioritize", wire.parse_extender_args,
               lambda a: wire.priority_reply(engine.prioritize(a.pod, nodes=a.nodes, names=a.names)),
               prioritize_error)
    serve_verb("preempt", wire.parse_preemption_args,
               lambda a: wire.preemption_reply(a, engine.preempt(a.pod, {n: v[0] for n, v in a.victims.items()})),
               lambda a, _message: wire.preemption_reply(a, {n: v[0] for n, v in a.victims.items()}))
    serve_verb("bind", wire.parse_binding_args,
               lambda b: wire.binding_reply(engine.bind(b.PodNamespace, b.PodName, b.PodUID, b.Node)),
               lambda _b, message: wire.binding_reply(message))

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response | tuple[Response, int]:
        if not engine.synced:
            return jsonify({"status": "not ready", "reason": "ledgers not yet rebuilt from the cluster"}), 503
        if engine.policies.watching is False:
            return jsonify({"status": "not ready", "reason": "the policy file's watcher died: policy changes "
                            "are no longer applied (gpuslice_policy_watch_up is 0)"}), 503
        return jsonify({"status": "ready"})

    @app.get("/metrics")
    def metrics_view() -> Response:
        return Response(metrics.render(), mimetype="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/debug/ledger")
    def debug_ledger() -> Response:
        out = dict(engine.ledger.snapshot())
        out["skippedNodes"] = dict(engine.stats.skipped_nodes)
        out["rebuildProblems"] = list(engine.stats.rebuild_problems)
        out["policyVersion"] = engine.policies.current.version
        out["policyReloadError"] = engine.policies.last_error
        out["synced"] = engine.synced
        return jsonify(out)

    @app.get("/version")
    def version() -> Response:
        return jsonify({"version": __version__, "policyVersion": engine.policies.current.version})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return _error(exc.code or 500, exc.description or exc.name)

    return app


def _json(out: object) -> Response:
    # orjson: a filter reply in the Nodes form may hold thousands of Node objects, and a prioritize reply
    # thousands of HostPriority objects (replies are plain dicts and lists with string keys).
    return Response(orjson.dumps(out), mimetype="application/json")


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status
