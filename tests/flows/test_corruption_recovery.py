"""The corruption-recovery runbook: restore before the damage, validate, pause for a DBA, switch."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from psycopg import pq
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner

from cli import app
from drkit.engines import open_engine
from drkit.engines.postgres.pgctl import LocalCluster
from drkit.engines.postgres.restore import restored_dsn
from drkit.runtime import Runtime
from drkit.sandbox import Sandbox
from flows.approvals import paused_runs
from flows.corruption import recover_from_corruption
from tests.support.approvers import answer
from tests.support.pgdata import connect
from tests.support.policies import policy_variant

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def damaged(sandbox: Sandbox, rt: Runtime) -> datetime:
    """A table that an application then 'corrupts' (a bad mass update); returns the last good moment."""
    with connect(sandbox.dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ledger(id int PRIMARY KEY, amount int)")
        conn.execute("TRUNCATE ledger")
        conn.execute("INSERT INTO ledger SELECT g, 100 FROM generate_series(1, 1000) g")
    open_engine(rt, "app").take_backup("full")
    time.sleep(0.2)
    with connect(sandbox.dsn) as conn:
        good = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        time.sleep(0.2)
        conn.execute("UPDATE ledger SET amount = 0")  # the corruption
    open_engine(rt, "app").take_backup("log")
    return good  # type: ignore[no-any-return]


def _run_in_thread(**kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        out["state"] = recover_from_corruption(return_state=True, **kwargs)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, out


def _paused_run(timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in paused_runs() if r["name"] == "recover-app"]
        if runs:
            return str(runs[0]["id"])
        time.sleep(0.5)
    raise AssertionError("the runbook never paused for approval")


def _restored_amounts_over_tcp(sandbox: Sandbox, port: int) -> list[tuple[int, int]]:
    """What a client of the old primary sees at the switched endpoint: its own DSN, the new port, TCP."""
    with connect(make_conninfo(sandbox.dsn, host="127.0.0.1", port=str(port))) as conn:
        return conn.execute("SELECT amount, count(*) FROM ledger GROUP BY amount").fetchall()


def _tcp_listener(port: int) -> bool:
    """Whether anything accepts TCP connections on 127.0.0.1:port (libpq's ping: no login needed)."""
    return pq.PGconn.ping(make_conninfo(host="127.0.0.1", port=str(port), connect_timeout="3").encode()) \
        != pq.Ping.NO_RESPONSE


def _paused_port(run_id: str) -> int:
    """The restored standby's port, from its postmaster.pid while the runbook waits for an answer."""
    run = next(r for r in paused_runs() if r["id"] == run_id)
    pid_file = Path(run["parameters"]["into"]) / "postmaster.pid"
    return int(pid_file.read_text().splitlines()[3])


def test_rejected_switch_changes_nothing(sandbox: Sandbox, rt: Runtime, damaged: datetime, scratch: Path) -> None:
    before = rt.catalog.get_endpoint("app")
    cfg = str(policy_variant(sandbox, scratch, approvals={"approvers": ["bob@example.com"]}))
    thread, out = _run_in_thread(db="app", before=damaged, into=str(scratch / "standby-r"), config=cfg,
                                 approval_timeout_seconds=120)
    run_id = _paused_run()
    port = _paused_port(run_id)
    answer(run_id, approve=False, approver="bob@example.com", reason="wrong time window")
    thread.join(180)
    result = out["state"].result()
    assert result["switched"] is False
    assert not _tcp_listener(port)
    assert rt.catalog.get_endpoint("app") == before
    assert ("corruption.rejected", "bob@example.com") in [(e.action, e.actor) for e in rt.catalog.audit_events()]
    assert not (scratch / "standby-r" / "postmaster.pid").exists()  # the standby was stopped


def test_no_answer_times_out_safely(sandbox: Sandbox, rt: Runtime, damaged: datetime, scratch: Path) -> None:
    before = rt.catalog.get_endpoint("app")
    cfg = str(policy_variant(sandbox, scratch))
    state = recover_from_corruption(db="app", before=damaged, into=str(scratch / "standby-t"), config=cfg,
                                    approval_timeout_seconds=3, return_state=True)
    # Prefect itself fails a run whose pause timed out ("never resumed"); the runbook says why in its
    # log and audit trail.
    assert state.is_failed()
    assert rt.catalog.get_endpoint("app") == before
    assert not (scratch / "standby-t" / "postmaster.pid").exists()
    timeout = [e for e in rt.catalog.audit_events(database="app") if e.action == "corruption.timeout"]
    assert timeout and "nothing was switched" in str(timeout[-1].detail["outcome"])
    assert datetime.now(UTC) > damaged


def test_approved_switch_records_the_endpoint_and_who_approved(
    sandbox: Sandbox, rt: Runtime, damaged: datetime, scratch: Path
) -> None:
    cfg = str(policy_variant(sandbox, scratch, approvals={"approvers": ["alice@example.com"]}))
    switches = len(rt.catalog.audit_events(database="app", action="endpoint.set"))
    cli: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: cli.update(result=CliRunner().invoke(
        app, ["--config", cfg, "recover", "app", "--before", damaged.isoformat(), "--into", str(scratch / "standby")])))
    thread.start()
    run_id = _paused_run()
    port = _paused_port(run_id)
    # The source's pg_hba.conf (backed up with its data dir) lets its clients in over TCP from 127.0.0.1.
    assert ["host", "all", "all", "127.0.0.1/32", "trust"] in \
        [ln.split() for ln in (sandbox.primary.data_dir / "pg_hba.conf").read_text().splitlines()]
    assert not _tcp_listener(port)  # until approved: its private Unix socket only
    # Someone not on the list answers first: refused, and the run keeps waiting.
    assert answer(run_id, approve=True, approver="mallory@example.com", reason="trust me")["verdict"] == "refused"
    assert any(r["id"] == run_id for r in paused_runs())
    answer(run_id, approve=True, approver="alice@example.com", reason="ledger zeroed at 10:02, INC-42")
    thread.join(180)
    out = cli["result"]
    assert out.exit_code == 0, out.output
    # drkit recover says where the recovered cluster runs and that clients were switched.
    said = " ".join(out.stdout.split())  # as wrapped for the terminal
    assert f"runs at 127.0.0.1:{port}, data directory {scratch / 'standby'}" in said
    assert "clients switched (by alice@example.com: ledger zeroed at 10:02, INC-42)" in said
    assert "drkit_endpoint_app" in said and "as the backup's own pg_hba.conf allows" in said
    endpoint = rt.catalog.get_endpoint("app")
    assert endpoint is not None and endpoint.dsn_hint == f"127.0.0.1:{port}"
    assert (endpoint.side, endpoint.data_dir) == ("recovered", str(scratch / "standby"))
    from prefect.variables import Variable
    assert Variable.get("drkit_endpoint_app") == endpoint.as_dict()  # the Variable holds the record
    assert len(rt.catalog.audit_events(database="app", action="endpoint.set")) == switches + 1
    actions = [(e.action, e.actor) for e in rt.catalog.audit_events(database="app")]
    assert ("corruption.approval.refused", "mallory@example.com") in actions
    assert ("corruption.switched", "alice@example.com") in actions
    try:
        # clients switched to the endpoint connect over TCP as they did to the old primary
        assert _restored_amounts_over_tcp(sandbox, port) == [(100, 1000)]
        # It is the database's primary now: it archives into drkit, the runbook took a full of it at once,
        # and backups (which name only the database) back it up, on its new timeline.
        recovered = make_conninfo(sandbox.dsn, host="127.0.0.1", port=str(port))
        with connect(recovered) as conn:
            assert conn.execute("SHOW archive_mode").fetchone() == ("on",)
            timeline = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]  # type: ignore[index]
            conn.execute("INSERT INTO ledger VALUES (1001, 7)")
        switched = [e for e in rt.catalog.audit_events(database="app") if e.action == "corruption.switched"][-1]
        first_full = rt.catalog.get(switched.detail["protection"]["full"])
        assert first_full.timeline == timeline > 1
        status = json.loads(CliRunner().invoke(app, ["--config", cfg, "status", "--json"]).stdout)[0]
        assert status["endpoint"]["side"] == "recovered" and status["sides"]["recovered"]["role"] == "primary"
        assert status["newest"]["full"]["id"] == first_full.id
        log = open_engine(rt, "app").take_backup("log")
        assert log is not None and log.timeline == timeline
        restored = scratch / "pitr-recovered"
        engine = open_engine(rt, "app")
        done = engine.restore(engine.plan_restore(None), str(restored), keep_running=True)
        try:
            with connect(restored_dsn(done)) as conn:
                assert conn.execute("SELECT amount FROM ledger WHERE id = 1001").fetchone() == (7,)
        finally:
            engine.release_restored(done)
    finally:
        LocalCluster(scratch / "standby", port, rt.bin_dir("app"), rt.os_user("app")).stop()
