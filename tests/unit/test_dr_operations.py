"""The DR operations behind the runbooks (``DrOperations``): SQL Server's over a simulated availability group,
the policy refusing what an engine cannot do, and the engine-neutral parts.

The exact T-SQL of the runbooks' steps is pinned by the golden tests in test_sqlserver_golden.py; these tests
assert what an operator would notice: what was promoted (planned or forced, never twice), what was refused
and why, and that a refusal sends nothing that changes a server.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from drkit.config import load_policy
from drkit.dr import writable_sides
from drkit.engines import dr_operations
from drkit.engines.sqlserver import ag
from drkit.engines.sqlserver.dr import SqlServerDr, lag_from_rows, server_address
from drkit.engines.sqlserver.errors import AvailabilityGroupError
from drkit.engines.sqlserver.msdb import ReplicaDatabaseState
from drkit.errors import ConfigError
from drkit.runtime import Runtime
from tests.support.fake_ag import FakeAvailabilityGroup

SETTINGS = {"database": "Orders", "disk_path": "/var/opt/mssql/backup", "availability_group": "ag1"}


def _policy(tmp_path: Path, db: dict[str, Any]) -> Path:
    path = tmp_path / "drkit.yaml"
    path.write_text(yaml.safe_dump({"catalog": f"sqlite:///{tmp_path}/catalog.db", "databases": {"orders": db}}))
    return path


def _ops(group: FakeAvailabilityGroup, tmp_path: Path) -> SqlServerDr:
    """The runbooks' operations as `drkit failover` builds them from the policy, on the simulated group."""
    policy = load_policy(_policy(tmp_path, {"engine": "sqlserver", "dsn_env": "ORDERS_DSN", "sqlserver": SETTINGS,
                                            "replica": {"dsn_env": "ORDERS_DR_DSN"}}))
    ops = dr_operations(Runtime(policy, environ={"ORDERS_DSN": group.dsn("SQL1"),
                                                 "ORDERS_DR_DSN": group.dsn("SQL2")}), "orders")
    assert isinstance(ops, SqlServerDr)
    return SqlServerDr("orders", settings=ops.settings, primary_dsn=group.dsn("SQL1"), dr_dsn=group.dsn("SQL2"),
                       max_lag_seconds=5, driver=group, sleep=lambda s: None)


def _changes(group: FakeAvailabilityGroup, name: str) -> list[str]:
    return [sql for sql in group.sent(name) if sql.startswith("ALTER")]


# -- the policy refuses what an engine cannot do ----------------------------------------------------------


@pytest.mark.parametrize(("db", "expected"), [
    ({"engine": "sqlserver", "dsn_env": "X", "sqlserver": {"disk_path": "/b"}, "replica": {"dsn_env": "Y"}},
     r"databases\.orders: sqlserver\.availability_group: required with 'replica'"),
    ({"engine": "sqlserver", "dsn_env": "X", "replica": {"dsn_env": "Y"}},
     r"databases\.orders: sqlserver\.availability_group: required with 'replica'"),
    ({"engine": "sqlserver", "dsn_env": "X", "sqlserver": SETTINGS, "replica": {"dsn_env": "Y", "data_dir": "/d"}},
     r"databases\.orders: replica\.data_dir: PostgreSQL only"),
    ({"engine": "sqlserver", "dsn_env": "X", "sqlserver": SETTINGS, "replica": {"dsn_env": "Y", "slot": "s"}},
     r"databases\.orders: replica\.slot: PostgreSQL only"),
])
def test_a_dr_section_the_engine_cannot_run_is_refused_on_load(tmp_path: Path, db: dict[str, Any],
                                                               expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_policy(_policy(tmp_path, db))


def test_the_factory_picks_the_engines_dr_operations(tmp_path: Path) -> None:
    pg = load_policy(_policy(tmp_path, {"engine": "postgres", "dsn": "host=h1 port=5433", "data_dir": "/nowhere",
                                        "replica": {"dsn": "host=h2 port=5434"}}))
    ops = dr_operations(Runtime(pg, environ={}), "orders")
    assert (ops.endpoint("primary"), ops.endpoint("dr")) == ("h1:5433", "h2:5434")
    assert "pg_rewind" in ops.methods.resync
    group = FakeAvailabilityGroup()
    ms = _ops(group, tmp_path)
    assert (ms.endpoint("primary"), ms.endpoint("dr")) == ("sql1.example.internal:1433", "sql2.example.internal:1433")
    assert "HADR RESUME" in ms.methods.resync
    assert group.sent("SQL1") == group.sent("SQL2") == []  # building them connects to nothing


def test_server_address_of_odbc_connection_strings() -> None:
    assert server_address("Driver={x};Server=tcp:db.example,14330;UID=u;PWD={p;w}") == "db.example:14330"
    assert server_address("Server=db.example;Database=Orders") == "db.example:1433"
    with pytest.raises(ConfigError, match="names no Server"):
        server_address("Driver={x};UID=u")


# -- failover ---------------------------------------------------------------------------------------------


def test_primary_down_forced_failover_once_after_the_evidence(tmp_path: Path) -> None:
    group = FakeAvailabilityGroup(databases=("Billing", "Orders"))
    ops = _ops(group, tmp_path)
    group.kill("SQL1")

    state = ops.replica_state()
    assert not state.already_primary
    assert state.lag.state == "NOT SYNCHRONIZING" and state.lag.bytes == 2 * 12 * 1024
    assert state.lag.last_applied_at is not None and state.lag.seconds is not None and state.lag.seconds >= 0.5
    assert [line.split(":")[0] for line in state.lag.details] == [
        "Billing on SQL2", "Orders on SQL2", "SQL2 is DISCONNECTED from the primary replica",
        "ag1 is CLUSTER_TYPE = WSFC"]
    assert "12 KB not redone" in state.lag.details[0]

    probe = ops.probe("primary", timeout=2)
    assert not probe.ok and "Login timeout expired" in probe.detail
    fenced = ops.fence_primary()
    assert fenced.action == "unreachable"
    promotion = ops.promote_replica()
    assert promotion.forced and not promotion.already_primary
    assert "FORCE_FAILOVER_ALLOW_DATA_LOSS" in promotion.method and "Orders end of log" in promotion.position
    assert promotion.data_loss_seconds is None  # only the new primary could be read: the old one's commits unknown
    assert ops.confirm_writable("dr").tzinfo is not None
    assert ops.probe("dr", timeout=2).ok and ops.probe("dr", timeout=2).detail == "writable"

    again = ops.promote_replica()  # a re-run after a crash
    assert again.already_primary and not again.forced
    assert ops.replica_state().already_primary
    assert _changes(group, "SQL2") == ["ALTER AVAILABILITY GROUP [ag1] FORCE_FAILOVER_ALLOW_DATA_LOSS;"]
    assert group.sent("SQL1") == []


def test_a_primary_that_answers_is_failed_over_planned_never_forced(tmp_path: Path) -> None:
    group = FakeAvailabilityGroup()
    ops = _ops(group, tmp_path)
    assert ops.fence_primary().action == "demoted by the failover"
    promotion = ops.promote_replica()
    assert not promotion.forced and promotion.data_loss_seconds == 0.0 and "planned" in promotion.method
    assert group.primary() == "SQL2" and group.replica("SQL1").role == "SECONDARY"
    assert _changes(group, "SQL2") == ["ALTER AVAILABILITY GROUP [ag1] FAILOVER;"]
    assert _changes(group, "SQL1") == []


def test_no_failover_is_forced_while_the_old_primary_runs_ahead_of_dr(tmp_path: Path) -> None:
    group = FakeAvailabilityGroup(mode="ASYNCHRONOUS_COMMIT")
    for db in group.replica("SQL2").databases.values():
        db.sync = "SYNCHRONIZING"
    ops = _ops(group, tmp_path)
    with pytest.raises(AvailabilityGroupError, match=r"SQL1 still runs as the primary .* two primaries. Stop "
                                                     r"SQL Server on SQL1"):
        ops.fence_primary()
    with pytest.raises(ag.FailoverNotReadyError, match="refused, nothing was changed"):
        ops.promote_replica()
    assert _changes(group, "SQL1") == _changes(group, "SQL2") == []
    assert group.primary() == "SQL1"


# -- failback ---------------------------------------------------------------------------------------------


def _failed_over(tmp_path: Path, **kwargs: Any) -> tuple[FakeAvailabilityGroup, SqlServerDr]:
    group = FakeAvailabilityGroup(**kwargs)
    ops = _ops(group, tmp_path)
    group.kill("SQL1")
    ops.promote_replica()
    group.revive("SQL1")
    return group, ops


def test_failback_resumes_the_old_primary_waits_for_synchronized_and_fails_over_planned(tmp_path: Path) -> None:
    group, ops = _failed_over(tmp_path)
    assert writable_sides(ops.probe("primary", timeout=2), ops.probe("dr", timeout=2)) == "dr"
    resynced = ops.resync("primary")
    assert resynced.outcome == "resumed" and resynced.detail.startswith("data movement resumed on SQL1: Orders on SQL1")
    assert resynced.detail.endswith("resuming rolls nothing back")  # no log past DR's fork point: no snapshot
    assert "Orders SYNCHRONIZED" in ops.wait_caught_up("primary", timeout=5).position
    switch = ops.switch_back()
    assert not switch.promotion.forced and not switch.promotion.already_primary and switch.stopped_at is None
    assert group.primary() == "SQL1"
    assert ops.resync("dr").outcome == "already synchronizing"
    assert writable_sides(ops.probe("primary", timeout=2), ops.probe("dr", timeout=2)) == "primary"
    assert ops.switch_back().promotion.already_primary  # a re-run switches nothing again
    assert _changes(group, "SQL1") == ["ALTER DATABASE [Orders] SET HADR RESUME;",
                                       "ALTER AVAILABILITY GROUP [ag1] FAILOVER;"]


def test_an_asynchronous_replica_cannot_take_the_database_back_without_loss(tmp_path: Path) -> None:
    group, ops = _failed_over(tmp_path, mode="ASYNCHRONOUS_COMMIT")
    ops.resync("primary")
    with pytest.raises(ag.FailoverNotReadyError, match=r"MODIFY REPLICA ON N'SQL1' WITH \(AVAILABILITY_MODE = "
                                                       r"SYNCHRONOUS_COMMIT\)"):
        ops.wait_caught_up("primary", timeout=5)
    with pytest.raises(AvailabilityGroupError, match="SQL2 is the primary of 'ag1': it cannot be resynchronised"):
        ops.resync("dr")
    assert [sql for sql in _changes(group, "SQL1") if "FAILOVER" in sql] == []


# -- lag and data loss ------------------------------------------------------------------------------------


def _lag_row(**kw: Any) -> dict[str, Any]:
    now = datetime(2026, 5, 18, 8, 0, 0)
    return {"replica_server_name": "SQL2", "role_desc": "SECONDARY", "database_name": "Orders",
            "synchronization_state_desc": "SYNCHRONIZED", "is_suspended": False, "log_send_queue_size": 0,
            "redo_queue_size": 0, "last_commit_time": now + timedelta(minutes=60) - timedelta(minutes=10),
            "utc_now": now, "utc_offset_minutes": 60, **kw}


def test_lag_of_a_caught_up_replica_is_zero_even_when_the_primary_is_idle() -> None:
    lag = lag_from_rows([_lag_row()], "ag1", 5)
    assert (lag.state, lag.bytes, lag.seconds, lag.too_far) == ("SYNCHRONIZED", 0, 0.0, False)
    assert lag.last_applied_at == datetime(2026, 5, 18, 7, 50, tzinfo=UTC)  # server-local time made UTC


def test_lag_of_a_disconnected_replica_is_the_age_of_its_newest_applied_commit() -> None:
    lag = lag_from_rows([_lag_row(synchronization_state_desc="NOT SYNCHRONIZING", log_send_queue_size=None,
                                  redo_queue_size=3)], "ag1", 5)
    assert (lag.state, lag.bytes, lag.seconds, lag.too_far) == ("NOT SYNCHRONIZING", 3072, 600.0, True)
    primary = lag_from_rows([_lag_row(role_desc="PRIMARY")], "ag1", 5)
    assert primary.is_primary and not primary.too_far
    absent = lag_from_rows([_lag_row(database_name=None)], "ag1", 5)
    assert absent.state == "absent" and absent.too_far


def _st(replica: str, db: str, commit: datetime) -> ReplicaDatabaseState:
    return ReplicaDatabaseState(replica, "SECONDARY", "ASYNCHRONOUS_COMMIT", db, "NOT SYNCHRONIZING", False, 1,
                                commit, False)


def test_forced_failover_loss_is_per_database_and_unknown_without_another_replica() -> None:
    t = datetime(2026, 5, 18, 9)
    chosen = [_st("SQL3", "Orders", t), _st("SQL3", "Billing", t - timedelta(seconds=9))]
    assert ag.loss_seconds({"SQL3": chosen}, "SQL3") is None  # not the 9 s between two databases
    other = [_st("SQL2", "Orders", t - timedelta(seconds=4)), _st("SQL2", "Billing", t - timedelta(seconds=2))]
    assert ag.loss_seconds({"SQL2": other, "SQL3": chosen}, "SQL3") == 7.0  # Billing: SQL2 had 7 s more
