"""Health probes against a real local HTTP server and real sockets (no mocks of httpx or psycopg)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from drkit.engines.postgres.probe import dsn_target, probe_db
from drkit.health import (
    ProbeFailed,
    ProbeResult,
    ProbeSeries,
    error_rate_and_latency,
    probe_http,
    probe_with_retries,
    url_target,
)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/slow":
            time.sleep(1.0)
            self.close_connection = True
        code = {"/ok": 200, "/slow": 200, "/down": 503, "/moved": 302}.get(path, 404)
        body = b"fine" if code == 200 else b"no"
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/ok")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the probe gave up (timeout test)
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) but never says a word."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


# -- HTTP ------------------------------------------------------------------------------------------


def test_http_ok(web: str) -> None:
    r = probe_http(f"{web}/ok")
    assert r.ok and r.kind == "http" and r.detail == "HTTP 200" and r.status_code == 200
    assert r.target == f"{web}/ok" and r.latency_ms > 0
    assert abs((datetime.now(UTC) - r.at).total_seconds()) < 5


def test_http_503_says_so(web: str) -> None:
    r = probe_http(f"{web}/down")
    assert not r.ok and r.detail == "HTTP 503" and r.status_code == 503


def test_http_expect_status_and_redirects_not_followed(web: str) -> None:
    assert probe_http(f"{web}/moved").ok  # 302 is in the default 200..399
    r = probe_http(f"{web}/moved", expect_status=[200])
    assert not r.ok and r.detail == "HTTP 302"
    assert probe_http(f"{web}/down", expect_status={503}).ok


def test_http_slow_endpoint_times_out(web: str) -> None:
    r = probe_http(f"{web}/slow", timeout=0.3)
    assert not r.ok and r.detail == "timeout after 0.3s (response)"
    assert r.latency_ms >= 250
    assert probe_http(f"{web}/slow", timeout=3).ok


def test_http_connect_refused() -> None:
    r = probe_http(f"http://127.0.0.1:{_closed_port()}/health")
    assert not r.ok and r.detail == "connect refused" and r.status_code is None


def test_http_reuses_a_given_client(web: str) -> None:
    with httpx.Client() as client:
        results = [probe_http(f"{web}/ok", client=client) for _ in range(3)]
        slow = probe_http(f"{web}/slow", client=client, timeout=0.2)
    assert all(r.ok for r in results)
    assert slow.detail == "timeout after 0.2s (response)"


def test_http_target_hides_credentials_and_query() -> None:
    assert url_target("https://ops:hunter2@app.example.com:8443/healthz?token=abc") == (
        "https://app.example.com:8443/healthz")
    r = probe_http(f"http://ops:hunter2@127.0.0.1:{_closed_port()}/h?token=abc")
    assert "hunter2" not in repr(r) and "abc" not in repr(r)


# -- databases -------------------------------------------------------------------------------------


def test_db_connect_refused_never_shows_password() -> None:
    port = _closed_port()
    r = probe_db(f"host=127.0.0.1 port={port} user=app password=s3cret-pw dbname=orders")
    assert not r.ok and r.kind == "db" and r.detail == "connect refused"
    assert r.target == f"127.0.0.1:{port}/orders"
    assert "s3cret-pw" not in repr(r) and "s3cret-pw" not in str(r.as_dict())
    r = probe_db(f"postgresql://app:s3cret-pw@127.0.0.1:{port}/orders")
    assert r.detail == "connect refused" and "s3cret-pw" not in repr(r)


def test_db_silent_server_times_out(silent_port: int) -> None:
    r = probe_db(f"host=127.0.0.1 port={silent_port} user=app password=pw dbname=orders", timeout=2)
    assert not r.ok and r.detail == "timeout after 2s"


def test_db_invalid_dsn_is_a_result_not_an_exception() -> None:
    r = probe_db("host=db password=s3cret-pw port")
    assert not r.ok and r.detail == "invalid DSN" and "s3cret-pw" not in repr(r)
    assert dsn_target("host=db password=s3cret-pw port") == "(unparseable DSN)"
    assert dsn_target("host=db port=6432 user=u password=x") == "db:6432/u"


# -- retries and windows ---------------------------------------------------------------------------


def _result(ok: bool, latency: float = 10.0, detail: str = "", at: datetime | None = None) -> ProbeResult:
    return ProbeResult(target="db1:5432/app", ok=ok, kind="db", latency_ms=latency,
                       detail=detail or ("writable" if ok else "connect refused"), at=at or datetime.now(UTC))


def test_retries_all_failed_means_down() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    seq = iter([_result(False, at=t0 + timedelta(seconds=30 * i)) for i in range(10)])
    sleeps: list[float] = []
    series = probe_with_retries(lambda: next(seq), retries=3, interval=30, sleep=sleeps.append)
    assert len(series.attempts) == 4 and sleeps == [30, 30, 30]
    assert series.failed_all and not series.healthy
    assert series.first_failure_at == t0
    assert "DOWN, 4 of 4 attempts failed since 2025-01-01 00:00:00Z (connect refused ×4)" in series.summary()
    with pytest.raises(ProbeFailed, match="connect refused"):
        series.raise_if_failed()
    assert series.as_dict()["failed_all"] is True and len(series.as_dict()["attempts"]) == 4


def test_retries_stop_at_first_success() -> None:
    seq = iter([_result(False), _result(False), _result(True), _result(False)])
    sleeps: list[float] = []
    series = probe_with_retries(lambda: next(seq), retries=3, interval=5, sleep=sleeps.append)
    assert [r.ok for r in series.attempts] == [False, False, True] and sleeps == [5, 5]
    assert series.healthy and not series.failed_all
    series.raise_if_failed()
    assert "healthy, 2 of 3 attempts failed" in series.summary()


def test_retries_zero_and_empty_series() -> None:
    series = probe_with_retries(lambda: _result(False), retries=0, sleep=lambda s: pytest.fail("slept"))
    assert len(series.attempts) == 1 and series.failed_all
    empty = ProbeSeries()
    assert not empty.healthy and not empty.failed_all and empty.first_failure_at is None
    with pytest.raises(ValueError):
        probe_with_retries(lambda: _result(True), retries=-1)


def test_retries_with_real_http(web: str) -> None:
    port = _closed_port()
    down = probe_with_retries(lambda: probe_http(f"http://127.0.0.1:{port}/"), retries=2, interval=0.01)
    assert down.failed_all and [r.detail for r in down.attempts] == ["connect refused"] * 3
    up = probe_with_retries(lambda: probe_http(f"{web}/ok"), retries=2, interval=0.01)
    assert up.healthy and len(up.attempts) == 1


def test_error_rate_and_p95() -> None:
    window = [_result(True, latency=float(i)) for i in range(1, 20)] + [_result(False, latency=2000.0)]
    rate, p95 = error_rate_and_latency(window)
    assert rate == pytest.approx(0.05)
    assert p95 == 19.0  # nearest rank: ceil(0.95 * 20) = 19th of 20
    rate, p95 = error_rate_and_latency([_result(True, latency=12.5)])
    assert (rate, p95) == (0.0, 12.5)
    rate, p95 = error_rate_and_latency([_result(False, latency=2000.0)] * 3 + [_result(True, latency=5.0)])
    assert rate == 0.75 and p95 == 2000.0  # timeouts count in latency too
    with pytest.raises(ValueError, match="no probe results"):
        error_rate_and_latency([])
