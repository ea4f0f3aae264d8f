"""A reference extender for bench/scheduler_bench.py that does no GPU work at all: filter passes every
node, prioritize scores every node 0, bind posts the pod's Binding (one API write, as gpuslice does).
Like gpuslice, it exports each verb's answer time and answering-thread CPU on /metrics.

It is served the way `gpuslice serve` serves (Flask on waitress, 16 threads, the same kubernetes client),
so the gap between kube-scheduler alone and kube-scheduler + this extender is what the extender
protocol itself costs on the machine (two HTTP round trips inside kube-scheduler's sequential
scheduling cycle, JSON both ways, a Binding from Python), and the gap between this and gpuslice is what
gpuslice's own work costs. Not part of the product.

    python bench/null_extender.py --kubeconfig FILE --port PORT
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Response, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from waitress import serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extender.kube.client import api_client, core_api  # noqa: E402


def create_app(kubeconfig: str) -> Flask:
    api = core_api(api_client(kubeconfig))
    app = Flask("null-extender")
    # The same two per-verb families gpuslice exports (and the same cost of keeping them), so the bench
    # can set each verb's CPU beside gpuslice's.
    registry = CollectorRegistry(auto_describe=False)
    duration = Histogram("gpuslice_extender_request_duration_seconds", "time to answer", ["verb"], registry=registry)
    cpu = Counter("gpuslice_extender_request_cpu_seconds", "answering thread CPU", ["verb"], registry=registry)
    for verb in ("filter", "prioritize", "bind"):  # exported from the start, as gpuslice does
        duration.labels(verb)
        cpu.labels(verb)

    @app.before_request
    def started() -> None:
        request.environ["null.start"] = (time.perf_counter(), time.thread_time())

    @app.after_request
    def finished(resp: Response) -> Response:
        verb = request.path.rsplit("/", 1)[-1]
        if request.method == "POST":
            start, start_cpu = request.environ["null.start"]
            used = time.thread_time() - start_cpu
            duration.labels(verb).observe(time.perf_counter() - start)
            cpu.labels(verb).inc(used)
        return resp

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")

    def reply(out: Any) -> Response:
        return Response(orjson.dumps(out), mimetype="application/json")

    @app.post("/scheduler/filter")
    def filter_() -> Response:
        args = orjson.loads(request.get_data())
        return reply({"NodeNames": args.get("NodeNames") or [], "FailedNodes": {}, "Error": ""})

    @app.post("/scheduler/prioritize")
    def prioritize() -> Response:
        args = orjson.loads(request.get_data())
        return reply([{"Host": name, "Score": 0} for name in args.get("NodeNames") or []])

    @app.post("/scheduler/bind")
    def bind() -> Response:
        args = orjson.loads(request.get_data())
        try:
            api.create_namespaced_pod_binding(
                args["PodName"], args["PodNamespace"],
                {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": args["PodName"], "uid": args["PodUID"]},
                 "target": {"apiVersion": "v1", "kind": "Node", "name": args["Node"]}},
                _preload_content=False).release_conn()
        except Exception as exc:  # kube-scheduler retries the pod on an error
            return reply({"Error": f"null-extender: {exc}"})
        return reply({"Error": ""})

    @app.get("/readyz")
    def readyz() -> Response:
        return reply({"status": "ready"})

    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=16)
    args = ap.parse_args(argv)
    serve(create_app(args.kubeconfig), host="127.0.0.1", port=args.port, threads=args.threads, ident="null-extender")
    return 0


if __name__ == "__main__":
    sys.exit(main())
