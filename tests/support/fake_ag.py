"""A simulated SQL Server availability group behind pyodbc's shape, for the DR runbooks' contract tests.

Two replicas (``SQL1`` in the primary region, ``SQL2`` the DR one), each its own recording
:class:`~tests.support.fake_odbc.FakeDriver`, so a test reads (and golden-compares) what was sent to each
server. :class:`FakeAvailabilityGroup` is what drkit uses as the ``pyodbc`` module: ``connect`` picks the
replica from the connection string's ``Server=`` and fails like an unreachable server when that replica is
down. The replicas answer drkit's availability-group batches (``tsql.ag_local_state``, ``ag_local_lag``,
``database_writable``) from their state, and change it as SQL Server would:

* ``ALTER AVAILABILITY GROUP … FAILOVER`` on a secondary: refused (41142) unless it is synchronous-commit and
  every database SYNCHRONIZED; else it becomes the primary and the old primary a synchronized secondary;
* ``… FORCE_FAILOVER_ALLOW_DATA_LOSS``: it becomes the primary; every other replica, when it is (or comes
  back) up, is a secondary whose databases are suspended;
* ``ALTER DATABASE … SET HADR RESUME`` on a secondary: data movement resumes and it catches up at once.

Install it for code that loads pyodbc itself (the flows) with ``monkeypatch.setitem(sys.modules, "pyodbc",
ag)``; hand it as ``driver=`` to code that takes one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.fake_odbc import FakeConnection, FakeDriver, FakeOdbcError, Reply, Rows, odbc_error

GROUP = "ag1"
UTC_OFFSET_MINUTES = 60


def dsn(host: str) -> str:
    return (f"Driver={{ODBC Driver 18 for SQL Server}};Server=tcp:{host}.example.internal,1433;Database=master;"
            "UID=drkit;PWD={Pa55-w0rd;not{shown}};Encrypt=yes")


@dataclass
class SimDatabase:
    name: str
    sync: str = "SYNCHRONIZED"
    suspended: bool = False
    end_of_log_lsn: int = 41000000056700001
    last_commit: datetime = field(default_factory=lambda: server_now() - timedelta(seconds=1))
    send_kb: int | None = 0
    redo_kb: int | None = 0


def server_now() -> datetime:
    """The simulated servers' local clock (naive, like SYSDATETIME())."""
    return datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=UTC_OFFSET_MINUTES)


@dataclass
class SimReplica:
    name: str
    host: str
    role: str
    mode: str
    databases: dict[str, SimDatabase]
    driver: FakeDriver = field(default_factory=FakeDriver)
    up: bool = True


class FakeAvailabilityGroup:
    """pyodbc's module shape (``connect``, ``Error``) over two simulated replicas of one availability group."""

    Error = FakeOdbcError

    def __init__(self, group: str = GROUP, databases: tuple[str, ...] = ("Orders",), *,
                 mode: str = "SYNCHRONOUS_COMMIT") -> None:
        self.group = group
        self.replicas = {
            "SQL1": SimReplica("SQL1", "sql1", "PRIMARY", mode, {d: SimDatabase(d) for d in databases}),
            "SQL2": SimReplica("SQL2", "sql2", "SECONDARY", mode, {d: SimDatabase(d) for d in databases}),
        }
        for replica in self.replicas.values():
            self._install(replica)

    # -- the test's handles ---------------------------------------------------------------------------

    def replica(self, name: str) -> SimReplica:
        return self.replicas[name]

    def dsn(self, name: str) -> str:
        return dsn(self.replicas[name].host)

    def sent(self, name: str) -> list[str]:
        return self.replicas[name].driver.sql()

    def primary(self) -> str | None:
        return next((r.name for r in self.replicas.values() if r.role == "PRIMARY" and r.up), None)

    def kill(self, name: str, *, behind_kb: int = 12) -> None:
        """``name`` goes down; the other replicas lose it: NOT SYNCHRONIZING, ``behind_kb`` left to redo."""
        self.replicas[name].up = False
        for other in self.replicas.values():
            if other.name != name and other.role != "PRIMARY":
                for db in other.databases.values():
                    db.sync, db.send_kb, db.redo_kb = "NOT SYNCHRONIZING", None, behind_kb

    def revive(self, name: str) -> None:
        """``name`` comes back; if another replica took over meanwhile it rejoins as a suspended secondary."""
        replica = self.replicas[name]
        replica.up = True
        if replica.role == "PRIMARY" and any(r.role == "PRIMARY" for r in self.replicas.values() if r is not replica):
            replica.role = "SECONDARY"
            for db in replica.databases.values():
                db.sync, db.suspended = "NOT SYNCHRONIZING", True

    # -- pyodbc ---------------------------------------------------------------------------------------

    def connect(self, connstring: str, /, *, autocommit: bool = False, timeout: int = 0) -> FakeConnection:
        m = re.search(r"Server=tcp:([a-z0-9]+)\.", connstring)
        replica = next((r for r in self.replicas.values() if m and r.host == m.group(1)), None)
        if replica is None or not replica.up:
            raise odbc_error(0, "TCP Provider: Error code 0x2749; Login timeout expired", "08001",
                             function="SQLDriverConnect")
        return replica.driver.connect(connstring, autocommit=autocommit, timeout=timeout)

    # -- the servers' answers -------------------------------------------------------------------------

    def _install(self, r: SimReplica) -> None:
        d = r.driver
        d.on(r"drcs\.is_failover_ready", lambda sql, p: self._state(r, p))
        d.on(r"drs\.redo_queue_size", lambda sql, p: self._lag(r, p))
        d.on(r"'Updateability'", lambda sql, p: self._writable(r, p))
        d.on(r"FORCE_FAILOVER_ALLOW_DATA_LOSS;", lambda sql, p: self._forced(r, sql))
        d.on(r"^ALTER AVAILABILITY GROUP .* FAILOVER;$", lambda sql, p: self._planned(r, sql))
        d.on(r"SET HADR RESUME;", lambda sql, p: self._resume(r, sql))

    def _ours(self, params: tuple[Any, ...]) -> bool:
        return bool(params) and params[0] == self.group

    def _state(self, r: SimReplica, params: tuple[Any, ...]) -> Reply:
        rows = [{"replica_server_name": r.name, "role_desc": r.role, "availability_mode_desc": r.mode,
                 "database_name": db.name, "synchronization_state_desc": db.sync,
                 "is_failover_ready": db.sync == "SYNCHRONIZED" and r.mode == "SYNCHRONOUS_COMMIT",
                 "end_of_log_lsn": db.end_of_log_lsn, "last_hardened_lsn": db.end_of_log_lsn,
                 "last_commit_time": db.last_commit, "is_suspended": db.suspended}
                for db in r.databases.values()] if self._ours(params) else []
        return Reply([Rows.of(rows, _STATE_COLUMNS)])

    def _lag(self, r: SimReplica, params: tuple[Any, ...]) -> Reply:
        now = datetime.now(UTC).replace(tzinfo=None)
        rows = [{"replica_server_name": r.name, "role_desc": r.role, "database_name": db.name,
                 "synchronization_state_desc": db.sync, "is_suspended": db.suspended,
                 "log_send_queue_size": db.send_kb, "redo_queue_size": db.redo_kb, "last_commit_time": db.last_commit,
                 "utc_now": now, "utc_offset_minutes": UTC_OFFSET_MINUTES}
                for db in r.databases.values()] if self._ours(params) else []
        return Reply([Rows.of(rows, _LAG_COLUMNS)])

    def _writable(self, r: SimReplica, params: tuple[Any, ...]) -> Reply:
        known, primary = params[0] in r.databases, r.role == "PRIMARY"
        status = None if not known else "ONLINE" if primary else "RESTORING"  # a non-readable secondary
        return Reply([Rows.of([{"status": status, "updateability": "READ_WRITE" if known and primary else None,
                                "utc_now": datetime.now(UTC).replace(tzinfo=None)}])])

    def _planned(self, r: SimReplica, sql: str) -> Reply:
        if r.role == "PRIMARY":
            return Reply()
        if r.mode != "SYNCHRONOUS_COMMIT" or any(db.sync != "SYNCHRONIZED" for db in r.databases.values()):
            return Reply(error=odbc_error(41142, f"The availability replica for availability group '{self.group}' "
                                                 "on this instance of SQL Server cannot become the primary replica."))
        for other in self.replicas.values():
            if other is not r and other.role == "PRIMARY":
                other.role = "SECONDARY"
                for db in other.databases.values():
                    db.sync, db.suspended, db.send_kb, db.redo_kb = "SYNCHRONIZED", False, 0, 0
        r.role = "PRIMARY"
        return Reply()

    def _forced(self, r: SimReplica, sql: str) -> Reply:
        r.role = "PRIMARY"
        for db in r.databases.values():
            db.sync, db.suspended, db.send_kb, db.redo_kb = "NOT SYNCHRONIZING", False, 0, 0
        for other in self.replicas.values():
            if other is not r and other.up:
                other.role = "SECONDARY"
                for db in other.databases.values():
                    db.sync, db.suspended = "NOT SYNCHRONIZING", True
        return Reply()

    def _resume(self, r: SimReplica, sql: str) -> Reply:
        name = re.search(r"ALTER DATABASE \[(.+)\] SET HADR RESUME;", sql)
        assert name is not None, sql
        db = r.databases[name.group(1).replace("]]", "]")]
        primary = self.replicas.get(self.primary() or "")
        db.suspended = False
        db.sync = "SYNCHRONIZED" if r.mode == "SYNCHRONOUS_COMMIT" and primary is not None else "SYNCHRONIZING"
        if primary is not None:
            source = primary.databases[db.name]
            db.end_of_log_lsn, db.last_commit, db.send_kb, db.redo_kb = (
                source.end_of_log_lsn, source.last_commit, 0, 0)
        return Reply()


_STATE_COLUMNS = ("replica_server_name", "role_desc", "availability_mode_desc", "database_name",
                  "synchronization_state_desc", "is_failover_ready", "end_of_log_lsn", "last_hardened_lsn",
                  "last_commit_time", "is_suspended")
_LAG_COLUMNS = ("replica_server_name", "role_desc", "database_name", "synchronization_state_desc", "is_suspended",
                "log_send_queue_size", "redo_queue_size", "last_commit_time", "utc_now", "utc_offset_minutes")
