"""Failback after a failover: resync, switch back with no data loss, traffic 10/50/100, breach rolls back."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psycopg
import pytest
import yaml
from prefect.variables import Variable
from typer.testing import CliRunner

from cli import app
from drkit.engines.postgres import replica
from flows.dr import dr_failback, dr_failover
from tests.flows.test_dr_failover import (  # noqa: F401
    World,
    _in_recovery,
    _wait_paused,
    _writer,
    assert_endpoint_truth,
    world,
)
from tests.support.approvers import answer
from tests.support.pgdata import table_hashes

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _run(flow_fn: Any, name: str, approve: bool, **kwargs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(state=flow_fn(return_state=True, **kwargs)))
    t.start()
    answer(_wait_paused(name), approve=approve, approver="alice@example.com", reason="test")
    t.join(300)
    return out


def test_failback_switches_back_without_loss_steps_traffic_and_rolls_back_on_a_breach(world: World) -> None:  # noqa: F811
    with open(world.config) as fh:
        data = yaml.safe_load(fh)
    data["databases"]["app"]["health"]["primary_url"] = world.haproxy.app_url
    data["databases"]["app"]["failback"] = {"hold": "1s", "probe_interval": "0.05s", "max_latency_ms": 1500,
                                            "max_error_rate": 0.2}
    with open(world.config, "w") as fh:
        fh.write(yaml.safe_dump(data, sort_keys=False))
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(world, stop))
    writer.start()
    try:
        time.sleep(1)
        world.sb.primary.stop("immediate")
        out = _run(dr_failover, "failover-app", True, db="app", config=world.config, probe_interval_seconds=0.2)
        assert out["state"].is_completed()
        time.sleep(1)  # writes land on DR now

        # Fail back; the primary region's application gets slow once it carries half the traffic.
        router = world.haproxy.router
        slow = threading.Event()

        def inject() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not slow.is_set():
                if router.app_weights().get("primary") == 50:
                    world.haproxy_apps["primary"].delay = 3.0  # type: ignore[attr-defined]
                    slow.set()
                time.sleep(0.02)

        injector = threading.Thread(target=inject, daemon=True)
        injector.start()
        out = _run(dr_failback, "failback-app", True, db="app", config=world.config)
        state = out["state"]
        assert state.is_failed() and "breached" in (state.message or "")
        assert router.app_weights() == {"primary": 0, "dr": 100}
        assert not _in_recovery(world.sb.primary) and _in_recovery(world.standby)  # the DB stays switched back
        assert_endpoint_truth(world, side="primary", switches=2)  # the failover's, then the failback's

        # Healthy again: a second failback only moves the traffic, 10 → 50 → 100.
        world.haproxy_apps["primary"].delay = 0.0  # type: ignore[attr-defined]
        out = _run(dr_failback, "failback-app", True, db="app", config=world.config)
        result = out["state"].result()
        steps = {s["percent"]: s for s in result["steps"]}
        assert steps[10]["weights"] == {"primary": 10, "dr": 90}
        assert steps[50]["weights"] == {"primary": 50, "dr": 50} and steps[50]["served"].get("primary", 0) > 0
        assert steps[100]["served"].get("dr", 0) == 0 and steps[100]["served"].get("primary", 0) > 0
        assert router.app_weights() == {"primary": 100, "dr": 0}
        assert_endpoint_truth(world, side="primary", switches=2)
        status = json.loads(CliRunner().invoke(app, ["--config", world.config, "status", "--json"]).stdout)[0]
        assert {k: v["role"] for k, v in status["sides"].items()} == {"primary": "primary", "dr": "standby"}
        assert status["endpoint"]["endpoint"] == f"127.0.0.1:{world.sb.primary.port}"
    finally:
        stop.set()
        writer.join()
    # Zero rows lost in the switch back: every write acknowledged on DR is on the primary; DR replicates it all.
    with psycopg.connect(world.sb.primary.dsn(), autocommit=True) as conn:
        present = {r[0] for r in conn.execute("SELECT id FROM acked").fetchall()}
    replica.wait_caught_up(world.sb.primary.dsn(), "drkit_dr", timeout=60)
    assert table_hashes(world.sb.primary.dsn()) == table_hashes(world.standby.dsn())
    failover_lost = {i for i, _ in world.acked if i not in present}
    assert len(failover_lost) <= 20  # only the failover (asynchronous) may lose the last writes


def test_staying_on_dr_keeps_dr_the_primary_and_republishes_the_record(world: World) -> None:  # noqa: F811
    world.sb.primary.stop("immediate")
    out = _run(dr_failover, "failover-app", True, db="app", config=world.config, probe_interval_seconds=0.2)
    assert out["state"].is_completed()
    assert_endpoint_truth(world, side="dr", switches=1)
    # A stale copy (as an older drkit left it after a failback): the decision rewrites it from the catalog.
    Variable.set("drkit_endpoint_app", {"database": "app", "endpoint": f"127.0.0.1:{world.sb.primary.port}"},
                 overwrite=True)
    out = _run(dr_failback, "failback-app", False, db="app", config=world.config)
    result = out["state"].result()
    assert result["decision"] == "stay on DR" and result["resync"] in ("rewound", "no rewind required", "rebuilt")
    assert _in_recovery(world.sb.primary) and not _in_recovery(world.standby)
    assert_endpoint_truth(world, side="dr", switches=1)  # no switch: still the failover's one record
