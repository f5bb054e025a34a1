"""drkit's HTTP listener: ``GET /metrics`` (Prometheus), ``GET /healthz``, and the POST routes a caller adds.

A small threaded server from the standard library. POST routes are ``path -> handler(body, authorization)``
returning ``(status, one line of text)`` (the Alertmanager receiver is one). Requests are answered with one
line: an unknown path 404, a wrong method 405, a body without a length 411, a body over :data:`MAX_BODY`
413, a handler that fails 500 (its error is neither echoed nor logged: it may name a server or hold a
password; the log says its class and where it was raised). A connection idle or sending for longer than
:data:`REQUEST_TIMEOUT` is closed, so slow or vanished clients do not hold a thread each for ever.
:meth:`HttpService.stop` closes the socket.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import CollectorRegistry

from drkit.config import parse_listen
from drkit.errors import ConfigError, safe_summary

MAX_BODY = 1 << 20
"""Largest POST body accepted (1 MiB; an Alertmanager notification is a few KiB)."""

REQUEST_TIMEOUT = 30.0
"""Seconds a connection may wait for the client's next bytes (request line, headers, body) before it is closed."""

PostHandler = Callable[[bytes, str | None], tuple[int, str]]
"""``(body, Authorization header) -> (HTTP status, one line of text)``."""

log = logging.getLogger("drkit.http")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 routes: Mapping[str, PostHandler], request_timeout: float) -> None:
        self.registry = registry
        self.routes = dict(routes)
        self.request_timeout = request_timeout
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "drkit"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)  # handle_one_request closes on a timeout

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, text: str, *, content_type: str = "text/plain; charset=utf-8",
              headers: Mapping[str, str] | None = None) -> None:
        self._send_bytes(status, (" ".join(text.split()) + "\n").encode(), content_type, headers)

    def _send_bytes(self, status: int, body: bytes, content_type: str,
                    headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _path(self) -> str:
        return urlsplit(self.path).path

    def do_GET(self) -> None:
        path = self._path()
        if path == "/metrics":
            try:
                body = generate_latest(self.server.registry)
            except Exception as exc:
                log.error("collecting metrics failed: %s", safe_summary(exc))
                self._send(500, "error: collecting the metrics failed; see the drkit log")
                return
            self._send_bytes(200, body, CONTENT_TYPE_PLAIN_0_0_4)  # what every Prometheus reads
        elif path == "/healthz":
            self._send(200, "ok")
        elif path in self.server.routes:
            self._send(405, f"error: {path} takes POST", headers={"Allow": "POST"})
        else:
            self._send(404, f"error: no such path {path}; try /metrics")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        path = self._path()
        handler = self.server.routes.get(path)
        if handler is None:
            if path in ("/metrics", "/healthz"):
                self._send(405, f"error: {path} takes GET", headers={"Allow": "GET"})
            else:
                self._send(404, f"error: no such path {path}")
            return
        self.close_connection = True  # a body not read to its end must not be parsed as the next request
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length_text is None:
            self._send(411, "error: send the body with a Content-Length")
            return
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self._send(400, "error: Content-Length is not a number of bytes")
            return
        if length > MAX_BODY:
            self._send(413, f"error: body of {length} bytes is over the {MAX_BODY} byte limit")
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self._send(400, "error: the body ended before its Content-Length")
            return
        try:
            status, text = handler(body, self.headers.get("Authorization"))
        except Exception as exc:
            log.error("POST %s failed: %s", path, safe_summary(exc))
            self._send(500, f"error: handling POST {path} failed; see the drkit log")
            return
        self._send(status, text)

    def _not_allowed(self) -> None:
        self._send(405, f"error: {self.command} is not served")

    do_PUT = do_DELETE = do_PATCH = _not_allowed


class HttpService:
    """The listener on ``listen`` (``host:port``; port 0: any free one, :attr:`port` tells which)."""

    def __init__(self, listen: str, registry: CollectorRegistry,
                 routes: Mapping[str, PostHandler] | None = None, *,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        try:
            self.host, port = parse_listen(listen, any_port=True)
        except ValueError as exc:
            raise ConfigError(f"metrics.listen: {exc}") from None
        for path in routes or {}:
            if not path.startswith("/") or path in ("/metrics", "/healthz"):
                raise ConfigError(f"route {path!r}: expected a path like /alertmanager, not one drkit serves")
        try:
            self._server = _Server((self.host, port), registry, routes or {}, request_timeout)
        except OSError as exc:
            raise ConfigError(f"metrics.listen {listen}: cannot listen there: {exc.strerror or exc}") from None
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.host or "127.0.0.1"
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def start(self) -> HttpService:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="drkit-http", daemon=True)  # stop() waits for one poll at most
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` (from another thread) or KeyboardInterrupt."""
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> HttpService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
