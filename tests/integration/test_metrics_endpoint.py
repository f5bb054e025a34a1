"""The metrics endpoint over real HTTP, with a real PostgreSQL primary and streaming standby as the DR replica:
the replica's lag while it streams (and growing while its replay is paused), then ``drkit_replica_up 0`` and no
lag once it is stopped, the scrape itself still answered."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from drkit.config import load_policy
from drkit.engines.postgres.pgctl import free_port
from drkit.engines.postgres.replica import create_standby
from drkit.http_service import HttpService
from drkit.metrics import metrics_registry
from drkit.runtime import Runtime
from drkit.sandbox import create_sandbox
from tests.support.pgdata import connect
from tests.support.policies import policy_variant

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(240)]


def scrape(url: str) -> dict[str, float]:
    r = httpx.get(f"{url}/metrics", timeout=30)
    assert r.status_code == 200
    return {s.name: s.value for f in text_string_to_metric_families(r.text) for s in f.samples
            if s.labels.get("database") in (None, "app")}


def poll(url: str, until: str, check: Callable[[dict[str, float]], bool], *, timeout: float = 60
         ) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, f"{until}: last scrape {samples}"
        time.sleep(0.2)  # between scrapes


def test_replica_lag_over_http_then_a_stopped_replica_is_down(scratch: Path) -> None:
    with ExitStack() as stopped_at_the_end:
        _run(scratch, stopped_at_the_end)


def _run(scratch: Path, stack: ExitStack) -> None:
    sb = create_sandbox(scratch / "world", fsync=False)
    stack.callback(sb.primary.stop, "immediate")
    standby = create_standby(sb.dsn, data_dir=scratch / "world" / "pg" / "standby", port=free_port(),
                             slot="drkit_dr", bin_dir=sb.primary.bin_dir, os_user=sb.primary.os_user, timeout=60)
    stack.callback(standby.stop, "immediate")
    policy = policy_variant(sb, scratch, {"replica": {"dsn": standby.dsn(), "slot": "drkit_dr",
                                                      "max_lag_seconds": 5}})
    registry, collector = metrics_registry(Runtime(load_policy(policy)))
    service = HttpService("127.0.0.1:0", registry).start()
    try:
        up = poll(service.url, "the streaming standby answers with a lag",
                  lambda s: s.get("drkit_replica_up") == 1 and "drkit_replica_lag_seconds" in s)
        assert up["drkit_replica_lag_seconds"] >= 0
        assert up["drkit_replica_max_lag_seconds"] == 5
        assert up["drkit_exporter_collect_success"] == 1

        # replay paused on the standby while the primary writes: the lag it reports grows past a second
        with connect(standby.dsn()) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")

        def behind(s: dict[str, float]) -> bool:
            with connect(sb.dsn) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS t (x int)")
                conn.execute("INSERT INTO t VALUES (1)")
            return s.get("drkit_replica_lag_seconds", 0) > 1

        poll(service.url, "the paused standby's lag passes one second", behind)

        standby.stop("immediate")
        down = poll(service.url, "the stopped standby is down", lambda s: s.get("drkit_replica_up") == 0)
        assert "drkit_replica_lag_seconds" not in down
        assert down["drkit_exporter_collect_success"] == 1
    finally:
        service.stop()
        collector.close()
