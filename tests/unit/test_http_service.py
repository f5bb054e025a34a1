"""drkit's HTTP listener (drkit.http_service) on a real localhost socket: /metrics, /healthz, a caller's POST
route with its body and Authorization header, the one-line refusals, and a stop that closes the socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

from drkit.errors import ConfigError
from drkit.http_service import MAX_BODY, HttpService

seen: list[tuple[bytes, str | None]] = []


def echo(body: bytes, authorization: str | None) -> tuple[int, str]:
    seen.append((body, authorization))
    return (202, f"took {len(body)} bytes") if authorization == "Bearer t0k" else (401, "error: wrong token")


def boom(body: bytes, authorization: str | None) -> tuple[int, str]:
    raise RuntimeError("host=db.internal password=hunter2")


@pytest.fixture
def service() -> Iterator[HttpService]:
    registry = CollectorRegistry()
    Gauge("drkit_test_value", "a value", ["database"], registry=registry).labels(database="app").set(42)
    seen.clear()
    with HttpService("127.0.0.1:0", registry, {"/alertmanager": echo, "/boom": boom}) as svc:
        yield svc


def test_metrics_and_healthz(service: HttpService) -> None:
    r = httpx.get(f"{service.url}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    [family] = [f for f in text_string_to_metric_families(r.text) if f.name == "drkit_test_value"]
    assert family.samples[0].value == 42 and family.samples[0].labels == {"database": "app"}
    r = httpx.get(f"{service.url}/healthz")
    assert (r.status_code, r.text) == (200, "ok\n")


def test_a_post_route_gets_the_body_and_the_authorization_header(service: HttpService) -> None:
    r = httpx.post(f"{service.url}/alertmanager", content=b'{"version": "4"}',
                   headers={"Authorization": "Bearer t0k"})
    assert (r.status_code, r.text) == (202, "took 16 bytes\n")
    assert seen == [(b'{"version": "4"}', "Bearer t0k")]
    r = httpx.post(f"{service.url}/alertmanager", content=b"{}")
    assert (r.status_code, r.text) == (401, "error: wrong token\n")
    assert seen[-1] == (b"{}", None)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nowhere", 404), ("POST", "/nowhere", 404), ("GET", "/alertmanager", 405),
    ("POST", "/metrics", 405), ("DELETE", "/metrics", 405),
])
def test_wrong_paths_and_methods_get_one_line(service: HttpService, method: str, path: str, status: int) -> None:
    r = httpx.request(method, f"{service.url}{path}")
    assert r.status_code == status
    assert r.text.startswith("error: ") and r.text.count("\n") == 1


def test_a_body_over_the_limit_is_refused_before_the_handler(service: HttpService) -> None:
    r = httpx.post(f"{service.url}/alertmanager", content=b"x" * (MAX_BODY + 1),
                   headers={"Authorization": "Bearer t0k"})
    assert r.status_code == 413 and r.text.startswith("error: body of")
    assert seen == []


def test_a_bad_content_length_is_400(service: HttpService) -> None:
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as s:
        s.sendall(b"POST /alertmanager HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n")
        reply = b"".join(iter(lambda: s.recv(4096), b"")).decode()  # to the end: the server closes it
    assert reply.startswith("HTTP/1.1 400 ") and "error: Content-Length is not a number" in reply
    assert seen == []


def test_a_failing_handler_is_500_without_its_error(service: HttpService) -> None:
    r = httpx.post(f"{service.url}/boom", content=b"{}")
    assert r.status_code == 500
    assert "hunter2" not in r.text and "db.internal" not in r.text


def test_stop_closes_the_socket() -> None:
    svc = HttpService("127.0.0.1:0", CollectorRegistry()).start()
    assert httpx.get(f"{svc.url}/healthz").status_code == 200
    svc.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{svc.url}/healthz", timeout=2)
    again = HttpService(f"127.0.0.1:{svc.port}", CollectorRegistry())  # the port is free again
    again.stop()


@pytest.mark.parametrize("listen", ["localhost", "127.0.0.1:99999", "127.0.0.1:x"])
def test_a_bad_listen_address_is_a_config_error(listen: str) -> None:
    with pytest.raises(ConfigError, match="metrics.listen"):
        HttpService(listen, CollectorRegistry())


def test_a_port_in_use_is_a_config_error(service: HttpService) -> None:
    with pytest.raises(ConfigError, match="cannot listen there"):
        HttpService(f"127.0.0.1:{service.port}", CollectorRegistry())


def test_a_failing_handler_leaves_its_message_out_of_the_log(service: HttpService,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A library's error may carry a password: the log says which error and where, never its message."""
    with caplog.at_level("DEBUG", logger="drkit.http"):
        assert httpx.post(f"{service.url}/boom", content=b"{}").status_code == 500
    assert "POST /boom failed: builtins.RuntimeError at " in caplog.text
    assert "hunter2" not in caplog.text and "db.internal" not in caplog.text


def test_a_client_that_stops_sending_is_disconnected() -> None:
    """A request left half-sent (or a connection left idle) is closed after the request timeout instead of
    holding one of the server's threads for ever."""
    seen.clear()
    with HttpService("127.0.0.1:0", CollectorRegistry(), {"/alertmanager": echo}, request_timeout=0.5) as svc:
        with socket.create_connection(("127.0.0.1", svc.port), timeout=30) as s:
            s.sendall(b"POST /alertmanager HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}")
            assert s.recv(4096) == b""  # the server closed it (a server that waits for ever: recv times out)
        with socket.create_connection(("127.0.0.1", svc.port), timeout=30) as s:
            assert s.recv(4096) == b""  # connected, never sent a byte
        assert httpx.get(f"{svc.url}/healthz").status_code == 200
    assert seen == []
