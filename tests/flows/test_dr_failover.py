"""The unplanned failover runbook against a real primary + streaming replica behind a real HAProxy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from drkit.engines.postgres import replica
from drkit.engines.postgres.pgctl import LocalCluster, free_port
from drkit.sandbox import KEY_ENV, Sandbox, create_sandbox
from flows.approvals import paused_runs
from flows.dr import dr_failover, replica_lag_check
from tests.support.approvers import answer
from tests.support.haproxy import HAProxyProcess, NamedHttpBackend

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class World:
    sb: Sandbox
    standby: LocalCluster
    haproxy: HAProxyProcess
    config: str
    haproxy_apps: dict[str, NamedHttpBackend] = field(default_factory=dict)
    acked: list[tuple[int, datetime]] = field(default_factory=list)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    root = Path(__import__("tempfile").mkdtemp(prefix="drkit-dr-", dir="/tmp"))
    os.chmod(root, 0o755)
    sb = create_sandbox(root / "w", fsync=False)
    monkeypatch.setenv(KEY_ENV, sb.key_b64)
    standby = replica.create_standby(sb.dsn, data_dir=root / "w" / "pg" / "standby", port=free_port(),
                                     slot="drkit_dr", bin_dir=sb.primary.bin_dir, os_user=sb.primary.os_user)
    apps = {"primary": NamedHttpBackend("primary"), "dr": NamedHttpBackend("dr")}
    hap = HAProxyProcess({k: v.address for k, v in apps.items()},
                         {"primary": f"127.0.0.1:{sb.primary.port}", "dr": f"127.0.0.1:{standby.port}"})
    hap.start()
    policy = yaml.safe_load(sb.policy_path.read_text())
    policy["databases"]["app"].update({
        "replica": {"dsn": standby.dsn(), "data_dir": str(standby.data_dir), "slot": "drkit_dr"},
        "traffic": {"router": "haproxy", "socket": str(hap.socket_path), "state_file": str(hap.state_file)},
        "health": {"interval": "1s", "retries": 1, "timeout": "1s"},
    })
    policy["approvals"] = {"approvers": ["alice@example.com"], "failover_timeout": "5m"}
    cfg = root / "w" / "drkit.yaml"
    cfg.write_text(yaml.safe_dump(policy, sort_keys=False))
    try:
        yield World(sb, standby, hap, str(cfg), apps)
    finally:
        hap.stop()
        for a in apps.values():
            a.close()
        standby.stop("immediate")
        sb.primary.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _writer(w: World, stop: threading.Event) -> None:
    """A client that writes through HAProxy's database frontend, reconnecting as needed."""
    i = 0
    while not stop.is_set():
        try:
            with psycopg.connect(f"host=127.0.0.1 port={w.haproxy.db_port} user=postgres dbname=postgres",
                                 autocommit=True, connect_timeout=2) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS acked(id int PRIMARY KEY)")
                while not stop.is_set():
                    conn.execute("INSERT INTO acked VALUES (%s)", [i + 1])
                    i += 1
                    w.acked.append((i, datetime.now().astimezone()))
                    time.sleep(0.01)
        except psycopg.Error:
            time.sleep(0.1)


def _wait_paused(name: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in paused_runs() if r["name"] == name]
        if runs:
            return str(runs[0]["id"])
        time.sleep(0.3)
    raise AssertionError(f"{name} never paused for approval")


def _in_recovery(c: LocalCluster) -> bool:
    with psycopg.connect(c.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def test_failover_refuses_rejects_times_out_then_promotes_once(world: World) -> None:
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(world, stop))
    writer.start()
    try:
        deadline = time.monotonic() + 20
        while len(world.acked) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(world.acked) >= 50
        lag = replica_lag_check(db="app", config=world.config)
        assert lag["state"] == "streaming" and not lag["too_far"]
        status = CliRunner().invoke(app, ["--config", world.config, "status", "--json"])
        assert json.loads(status.stdout)[0]["replica_lag"]["state"] == "streaming"
        world.sb.primary.stop("immediate")  # the primary region dies
        killed_at = datetime.now().astimezone()

        # Rejected: nothing promoted.
        out: dict[str, Any] = {}
        t = threading.Thread(target=lambda: out.update(r=dr_failover(db="app", config=world.config,
                                                                     probe_interval_seconds=0.2)))
        t.start()
        answer(_wait_paused("failover-app"), approve=False, approver="alice@example.com", reason="not yet")
        t.join(120)
        assert out["r"]["failed_over"] is False and _in_recovery(world.standby)

        # Times out: nothing promoted.
        state = dr_failover(db="app", config=world.config, probe_interval_seconds=0.2,
                            approval_timeout_seconds=3, return_state=True)
        assert state.is_failed() and _in_recovery(world.standby)

        # Approved (after a refused answer) in another process, which dies right after the promotion.
        env = {**os.environ, "PREFECT_API_URL": _api_url(), "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-c", "from flows.dr import dr_failover; import sys; "
             f"dr_failover(db='app', config={world.config!r}, probe_interval_seconds=0.2)"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            run_id = _wait_paused("failover-app")
            refused = answer(run_id, approve=True, approver="mallory@example.com", reason="trust me")
            assert refused["verdict"] == "refused"
            assert _in_recovery(world.standby)  # refused: still waiting
            answer(run_id, approve=True, approver="alice@example.com", reason="region down, INC-1")
            deadline = time.monotonic() + 60
            while _in_recovery(world.standby) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _in_recovery(world.standby)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker dies right after the promotion
            proc.wait()

        # The rerun sees the promotion and finishes the job without a second one.
        result = dr_failover(db="app", config=world.config, probe_interval_seconds=0.2)
        assert result["failed_over"] and result["resumed"]
        assert replica.current_timeline(world.standby.dsn()) == 2
        assert_endpoint_truth(world, side="dr", switches=1)
        sides = json.loads(CliRunner().invoke(app, ["--config", world.config, "status", "--json"]).stdout)[0]
        assert sides["endpoint"]["side"] == "dr" and sides["endpoint"]["endpoint"] == f"127.0.0.1:{world.standby.port}"
        assert {k: v["role"] for k, v in sides["sides"].items()} == {"primary": "down", "dr": "primary"}
        before = len(world.acked)
        deadline = time.monotonic() + 20
        while len(world.acked) < before + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(world.acked) >= before + 20  # writes continue on DR through the same frontend
    finally:
        stop.set()
        writer.join()
    with psycopg.connect(world.standby.dsn(), autocommit=True) as conn:
        present = {r[0] for r in conn.execute("SELECT id FROM acked").fetchall()}
    lost = [(i, at) for i, at in world.acked if i not in present]
    # Asynchronous replication may lose only the last writes acknowledged before the kill.
    assert all(at <= killed_at for _, at in lost)
    assert len(lost) <= 20, lost


def endpoint_variable(db: str = "app") -> Any:
    from prefect.variables import Variable

    return Variable.get(f"drkit_endpoint_{db}")


def assert_endpoint_truth(w: World, *, side: str, switches: int, db: str = "app") -> None:
    """The catalog names ``side`` as the primary, the Prefect Variable holds exactly that record, the audit
    trail has ``switches`` endpoint.set events (one per switch), and a client that reads the Variable
    reaches a server that takes writes."""
    from drkit.catalog import Catalog
    from drkit.config import load_policy

    catalog = Catalog.open(load_policy(w.config).catalog_url())
    try:
        record = catalog.get_endpoint(db)
        events = catalog.audit_events(database=db, action="endpoint.set")
    finally:
        catalog.close()
    assert record is not None and record.side == side
    assert endpoint_variable(db) == record.as_dict()
    assert len(events) == switches, [e.detail for e in events]
    host, port = endpoint_variable(db)["endpoint"].rsplit(":", 1)
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=True,
                         connect_timeout=5) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS variable_clients(at timestamptz DEFAULT now())")
        conn.execute("INSERT INTO variable_clients DEFAULT VALUES")


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())
