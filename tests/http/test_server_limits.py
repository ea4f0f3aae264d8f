"""Idle and slow connections cannot starve the verbs or /healthz (issue 12): the waitress server as
`gpuslice serve` builds it, on a real socket."""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from extender.http.serve import make_server
from tests.http.conftest import Extender


@contextmanager
def serving(extender: Extender, **limits: Any) -> Iterator[int]:
    server = make_server(extender.app, "127.0.0.1", 0, **limits)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield server.effective_port
    finally:
        server.close()
        thread.join(5)


@contextmanager
def sockets(port: int, n: int, send: bytes = b"") -> Iterator[list[socket.socket]]:
    opened = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if send:
                s.sendall(send)
            opened.append(s)
        yield opened
    finally:
        for s in opened:
            s.close()


def healthz(port: int, timeout: float) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as resp:
        return resp.status


def test_many_idle_connections_do_not_lock_out_healthz(extender: Extender) -> None:
    with serving(extender) as port, sockets(port, 300):
        assert healthz(port, timeout=3) == 200


def test_slow_requests_do_not_lock_out_healthz(extender: Extender) -> None:
    partial = (b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 100000\r\n\r\n{")
    with serving(extender) as port, sockets(port, 200, partial), sockets(port, 100, b"GET /healthz HTTP/1.1\r\nHo"):
        assert healthz(port, timeout=3) == 200


def test_idle_connections_past_the_limit_are_closed_after_the_channel_timeout(extender: Extender) -> None:
    with serving(extender, connection_limit=20, channel_timeout=1.0, cleanup_interval=0.2) as port, \
            sockets(port, 25):
        assert healthz(port, timeout=4) == 200
