"""HTTPS for the extender (kube-scheduler's `enableHTTPS` + `tlsConfig`).

waitress serves plain HTTP only, so TLS uses the standard library's threaded WSGI server with an
`ssl` context: TLS 1.2+, the given certificate and key, and, with a client CA, client certificates
required (kube-scheduler presents `tlsConfig.certFile`). The handshake runs in the connection's own
thread, so a slow client never holds up accepting the next one.
"""

from __future__ import annotations

import logging
import ssl
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Flask

log = logging.getLogger(__name__)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: kube-scheduler reuses connections, one handshake each

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def tls_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


def make_tls_server(app: Flask, host: str, port: int, ctx: ssl.SSLContext) -> WSGIServer:
    server = make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    return server
