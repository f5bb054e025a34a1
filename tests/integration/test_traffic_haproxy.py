"""HAProxyRouter against a real HAProxy (Debian package) with local HTTP and TCP backends.

What is asserted comes from two sides: the client (which backend's name came back) and HAProxy's own
``show stat`` counters (``app_stats()`` deltas), which must agree exactly.

HAProxy fact these tests work around: a server raised from
weight 0 gets a burst of consecutive requests (hundreds) before roundrobin settles, so after such a change the
tests send warm-up requests and measure a later window.
"""

from __future__ import annotations

import collections
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drkit.traffic.base import Router, TrafficError
from drkit.traffic.haproxy import HAProxyRouter, render_config, validate_config
from tests.support.haproxy import HAProxyEnv, running_haproxy

pytestmark = [pytest.mark.slow, pytest.mark.integration]

WINDOW = 1000


@pytest.fixture(scope="module")
def env() -> Iterator[HAProxyEnv]:
    """One HAProxy (application 100/0 on primary, database on primary) for the module; tests reset what they need."""
    with running_haproxy() as running:
        yield running


def measure(env: HAProxyEnv, n: int) -> tuple[collections.Counter[str], dict[str, int]]:
    """Send ``n`` requests; return what the client saw and HAProxy's stot deltas over the same requests."""
    before = env.router.app_stats()
    seen = env.haproxy.send(n)
    after = env.router.app_stats()
    return seen, {name: after[name] - before.get(name, 0) for name in after}


def warm_up_after_raise(env: HAProxyEnv, expect_share: dict[str, int], *, window: int = 200, limit: int = 4000) -> int:
    """Send requests until one window's split is within 5 points of ``expect_share``; return how many were sent."""
    sent = 0
    while sent < limit:
        seen = env.haproxy.send(window)
        sent += window
        if all(abs(100 * seen[name] / window - pct) <= 5 for name, pct in expect_share.items()):
            return sent
    raise AssertionError(f"split never settled to {expect_share} within {limit} requests")


def assert_split(
    seen: collections.Counter[str], stats: dict[str, int], expect: dict[str, int], n: int, tol: int
) -> None:
    assert sum(seen.values()) == n
    assert not [k for k in seen if k.startswith("HTTP ")], seen
    # HAProxy's own counters agree with the client, request for request.
    assert {name: seen[name] for name in expect} == {name: stats[name] for name in expect}, (seen, stats)
    for name, pct in expect.items():
        assert abs(seen[name] - n * pct / 100) <= tol, (name, seen, expect)


def reset(env: HAProxyEnv) -> None:
    env.router.set_app_weights({"primary": 100, "dr": 0})
    env.router.switch_database("primary")


def test_is_a_router(env: HAProxyEnv) -> None:
    assert isinstance(env.router, Router)
    assert "app" in env.router.describe()


def test_application_weights_step_100_10_50_0(env: HAProxyEnv) -> None:
    router = env.router
    reset(env)
    assert router.app_weights() == {"primary": 100, "dr": 0}
    seen, stats = measure(env, 300)
    assert_split(seen, stats, {"primary": 100, "dr": 0}, 300, tol=0)

    # 10/90: dr comes up from weight 0 → burst, then exact roundrobin.
    router.set_app_weights({"primary": 10, "dr": 90})
    assert router.app_weights() == {"primary": 10, "dr": 90}
    assert router.servers("app")["dr"].weight == 90
    warm_up_after_raise(env, {"primary": 10, "dr": 90})
    seen, stats = measure(env, WINDOW)
    assert_split(seen, stats, {"primary": 10, "dr": 90}, WINDOW, tol=20)

    # 50/50: between non-zero weights the change is exact within about one window.
    router.set_app_weights({"primary": 50, "dr": 50})
    assert router.app_weights() == {"primary": 50, "dr": 50}
    env.haproxy.send(250)
    seen, stats = measure(env, WINDOW)
    assert_split(seen, stats, {"primary": 50, "dr": 50}, WINDOW, tol=20)

    # 0/100: dropping a server to 0 takes effect on the next request.
    router.set_app_weights({"dr": 100})
    assert router.app_weights() == {"primary": 0, "dr": 100}
    seen, stats = measure(env, 300)
    assert_split(seen, stats, {"primary": 0, "dr": 100}, 300, tol=0)

    # Idempotent: the same split again sends nothing that changes traffic.
    router.set_app_weights({"primary": 0, "dr": 100})
    seen, stats = measure(env, 100)
    assert_split(seen, stats, {"primary": 0, "dr": 100}, 100, tol=0)


def test_invalid_weights_change_nothing(env: HAProxyEnv) -> None:
    router = env.router
    reset(env)
    for bad in ({"primary": 300}, {"primary": 60, "dr": 60}, {"primary": 0, "dr": 0}, {"elsewhere": 100},
                {"primary": -1, "dr": 101}, {"primary": 50.5, "dr": 49.5}):
        with pytest.raises(TrafficError):
            router.set_app_weights(bad)  # type: ignore[arg-type]
    assert router.app_weights() == {"primary": 100, "dr": 0}


def _closed(sock: socket.socket, timeout: float = 3.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(100) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _echoes(sock: socket.socket) -> bool:
    try:
        sock.sendall(b"ping\n")
        sock.settimeout(3)
        return sock.recv(100) == b"ping\n"
    except OSError:
        return False


def test_switch_database_moves_new_connections_and_closes_old_sessions(env: HAProxyEnv) -> None:
    router = env.router
    reset(env)
    assert router.active_database() == "primary"
    old, name = env.haproxy.connect_db()
    assert name == "primary"
    assert _echoes(old)

    router.switch_database("dr")

    new, name = env.haproxy.connect_db()
    assert name == "dr"
    assert _closed(old), "the session to the old server must be shut down"
    assert _echoes(new)
    assert router.active_database() == "dr"
    servers = router.servers("db")
    assert servers["primary"].in_maintenance and not servers["dr"].in_maintenance

    # Every new connection goes to dr, none to primary.
    names: collections.Counter[str] = collections.Counter()
    for _ in range(20):
        sock, name = env.haproxy.connect_db()
        names[name] += 1
        sock.close()
    assert names == {"dr": 20}

    # Re-running the switch is harmless: the dr session survives, new connections still go to dr.
    router.switch_database("dr")
    assert _echoes(new)
    again, name = env.haproxy.connect_db()
    assert name == "dr"
    again.close()

    # And back.
    router.switch_database("primary")
    back, name = env.haproxy.connect_db()
    assert name == "primary"
    assert _closed(new)
    back.close()
    old.close()
    new.close()
    assert router.active_database() == "primary"


def test_switch_under_a_connection_storm_never_goes_back(env: HAProxyEnv) -> None:
    """Connections made while the switch runs see primary, then (maybe a refusal) then dr: never primary again."""
    router = env.router
    reset(env)
    seen: list[str] = []
    stop = threading.Event()

    def storm() -> None:
        while not stop.is_set():
            try:
                sock, name = env.haproxy.connect_db(timeout=2)
                sock.close()
                seen.append(name)
            except (ConnectionError, OSError):
                seen.append("refused")

    thread = threading.Thread(target=storm, daemon=True)
    thread.start()
    time.sleep(0.2)
    router.switch_database("dr")
    switched_at = len(seen)
    time.sleep(0.2)
    stop.set()
    thread.join(5)
    names = [n for n in seen if n != "refused"]
    assert "primary" in names[:switched_at] and names[-1] == "dr"
    first_dr = names.index("dr")
    assert set(names[first_dr:]) == {"dr"}, "after the first connection to dr, none may reach primary"
    assert seen.count("refused") <= 3, seen.count("refused")
    print(f"storm: {len(seen)} connections, {seen.count('refused')} refused, switch after {switched_at}")
    reset(env)


def test_switch_database_to_unknown_server_changes_nothing(env: HAProxyEnv) -> None:
    router = env.router
    reset(env)
    with pytest.raises(TrafficError, match="no server 'elsewhere'"):
        router.switch_database("elsewhere")
    assert router.active_database() == "primary"
    sock, name = env.haproxy.connect_db()
    sock.close()
    assert name == "primary"


def test_two_active_database_servers_are_reported(env: HAProxyEnv) -> None:
    router = env.router
    reset(env)
    router.command("set server db/dr state ready")  # someone did it by hand
    try:
        with pytest.raises(TrafficError, match="two places"):
            router.active_database()
    finally:
        router.switch_database("primary")
    assert router.active_database() == "primary"


def test_state_survives_a_reload(env: HAProxyEnv) -> None:
    router = env.router
    reset(env)
    router.set_app_weights({"primary": 10, "dr": 90})
    router.switch_database("dr")
    saved = router.state_file.read_text() if router.state_file else ""
    # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight ...
    assert re.search(r"^\d+ app \d+ dr \S+ \d+ 0 90 0 ", saved, re.M), saved
    assert re.search(r"^\d+ db \d+ primary \S+ \d+ 1 ", saved, re.M), saved  # forced maintenance
    old_pid = env.haproxy.pid

    new_pid = env.haproxy.reload()
    assert new_pid != old_pid
    assert router.app_weights() == {"primary": 10, "dr": 90}
    assert router.servers("app")["dr"].initial_weight == 0  # the config still says 0: the state file won
    assert router.active_database() == "dr"
    assert sum(router.app_stats().values()) == 0  # a new process: counters start again

    sock, name = env.haproxy.connect_db()
    sock.close()
    assert name == "dr"
    env.haproxy.send(500)
    seen, stats = measure(env, WINDOW)
    assert_split(seen, stats, {"primary": 10, "dr": 90}, WINDOW, tol=30)

    reset(env)
    env.haproxy.reload()
    assert router.app_weights() == {"primary": 100, "dr": 0}
    assert router.active_database() == "primary"


def test_a_refused_command_raises_naming_it(env: HAProxyEnv) -> None:
    router = env.router
    with pytest.raises(TrafficError, match=r"`set server app/nope weight 10`.*No such server"):
        router.command("set server app/nope weight 10")
    with pytest.raises(TrafficError, match=r"`set server app/dr weight 300`.*between 0 and 256"):
        router.command("set server app/dr weight 300")
    with pytest.raises(TrafficError, match=r"`frobnicate the servers`.*Unknown command"):
        router.command("frobnicate the servers")
    with pytest.raises(TrafficError, match="malformed"):
        router.command("show info\nshutdown sessions server db/primary")
    wrong = HAProxyRouter(router.socket_path, app_backend="be_nope", db_backend="db", state_file=None)
    with pytest.raises(TrafficError, match=r"show servers state be_nope.*Can't find backend"):
        wrong.set_app_weights({"primary": 100})
    with pytest.raises(TrafficError):
        HAProxyRouter(router.socket_path, app_backend="app; shutdown sessions", db_backend="db", state_file=None)


def test_unreachable_socket_says_so(tmp_path: Path) -> None:
    router = HAProxyRouter(
        Path("/tmp/drkit-hap-none/admin.sock"), app_backend="app", db_backend="db", state_file=None,
        connect_attempts=2,
    )
    with pytest.raises(TrafficError, match="cannot reach the HAProxy runtime API"):
        router.active_database()
    with pytest.raises(TrafficError, match="longer than"):
        HAProxyRouter(tmp_path / ("x" * 120) / "admin.sock", app_backend="a", db_backend="b", state_file=None)


def test_rendered_config_is_valid_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    cfg = render_config(
        socket_path=Path("/tmp/drkit-hap-x/admin.sock"),
        state_file=tmp_path / "state",
        app_bind="127.0.0.1:20080",
        app_servers={"primary": "127.0.0.1:20081", "dr": "127.0.0.1:20082"},
        db_bind="127.0.0.1:20432",
        db_servers={"primary": "127.0.0.1:20433", "dr": "127.0.0.1:20434"},
        stats_bind="127.0.0.1:20404",
        db_check_user="postgres",
    )
    assert "option redispatch" in cfg and "retries 3" in cfg
    assert "level admin" in cfg and "load-server-state-from-file global" in cfg
    assert "server dr 127.0.0.1:20434 check inter 1s fall 3 rise 2 disabled" in cfg
    assert "server dr 127.0.0.1:20082 weight 0" in cfg
    good = tmp_path / "good.cfg"
    good.write_text(cfg)
    validate_config(good)
    bad = tmp_path / "bad.cfg"
    bad.write_text(cfg.replace("balance roundrobin", "balance sideways", 1))
    with pytest.raises(TrafficError, match="invalid"):
        validate_config(bad)
    with pytest.raises(TrafficError, match="host:port"):
        render_config(
            socket_path=Path("/tmp/s"), app_bind="127.0.0.1:1", app_servers={"a": "nowhere"},
            db_bind="127.0.0.1:2", db_servers={"a": "127.0.0.1:3"},
        )
