"""A stub Prometheus on loopback: answers /api/v1/query_range the way Prometheus does (a matrix of
[time, "value"] pairs per series), from Python functions of time chosen by a substring of the query."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Series = Callable[[float], float | None]  # value at a time, None for no sample


class PromStub:
    def __init__(self) -> None:
        self.series: dict[str, list[Series]] = {}  # query substring -> one function per series
        self.queries: list[str] = []
        self.fail: str | None = None  # answer every query with this Prometheus error (HTTP 400)
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, query: str, start: float, end: float, step: float) -> dict:
        self.queries.append(query)
        if self.fail:
            raise ValueError(self.fail)
        funcs = next((f for key, f in self.series.items() if key in query), [])
        result = []
        for i, f in enumerate(funcs):
            values, t = [], start
            while t <= end + 1e-9:
                v = f(t)
                if v is not None:
                    values.append([t, f"{v:.6g}"])
                t += step
            if values:
                result.append({"metric": {"series": str(i)}, "values": values})
        return {"status": "success", "data": {"resultType": "matrix", "result": result}}


@contextmanager
def prometheus() -> Iterator[PromStub]:
    stub = PromStub()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urllib.parse.urlparse(self.path)
            if url.path != "/api/v1/query_range":
                self.send_error(404)
                return
            q = urllib.parse.parse_qs(url.query)
            try:
                body = stub.answer(q["query"][0], float(q["start"][0]), float(q["end"][0]), float(q["step"][0]))
                code = 200
            except (KeyError, ValueError) as exc:
                body, code = {"status": "error", "errorType": "bad_data", "error": str(exc)}, 400
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    stub.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=stub.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub.server.shutdown()
        stub.server.server_close()
