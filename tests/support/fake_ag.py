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
  back) up, is a secondary whose databases are suspended (in a CLUSTER_TYPE = NONE group an old primary that
  was down comes back as a second primary, as documented);
* after either, the new primary's databases are RECOVERING for ``recovery_reads`` state reads, then ONLINE
  (a failover returns before recovery);
* ``… SET (ROLE = SECONDARY)`` on a primary: it becomes a secondary, its databases suspended;
* ``CREATE DATABASE … AS SNAPSHOT OF``: the snapshot is recorded on that replica (``snapshots``);
* ``ALTER DATABASE … SET HADR RESUME`` on a secondary: data movement resumes and it catches up at once (its
  log past the new primary's is rolled back).

A secondary is CONNECTED while a primary replica runs (``cut_off`` makes a running primary unreachable to
drkit only: a network partition), DISCONNECTED otherwise. A failover statement sent to a CLUSTER_TYPE =
EXTERNAL group fails the test: drkit must leave those to Pacemaker.

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
    recovery_lsn: int | None = None
    recovering: int = 0


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
    reachable: bool = True
    snapshots: list[str] = field(default_factory=list)


class FakeAvailabilityGroup:
    """pyodbc's module shape (``connect``, ``Error``) over two simulated replicas of one availability group."""

    Error = FakeOdbcError

    def __init__(self, group: str = GROUP, databases: tuple[str, ...] = ("Orders",), *,
                 mode: str = "SYNCHRONOUS_COMMIT", cluster_type: str = "WSFC", recovery_reads: int = 1) -> None:
        self.group = group
        self.cluster_type = cluster_type
        self.recovery_reads = recovery_reads
        self.replicas = {
            "SQL1": SimReplica("SQL1", "sql1", "PRIMARY", mode, {d: SimDatabase(d) for d in databases}),
            "SQL2": SimReplica("SQL2", "sql2", "SECONDARY", mode, {d: SimDatabase(d) for d in databases}),
        }
        for db in self.replicas["SQL1"].databases.values():
            db.recovery_lsn = 41000000000100001
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

    def kill(self, name: str, *, behind_kb: int = 12, unsent_lsn: int = 0) -> None:
        """``name`` goes down; the other replicas lose it: NOT SYNCHRONIZING, ``behind_kb`` left to redo.
        ``unsent_lsn``: how much further its log went than the others received (lost by a forced failover)."""
        self.replicas[name].up = False
        for db in self.replicas[name].databases.values():
            db.end_of_log_lsn += unsent_lsn
        for other in self.replicas.values():
            if other.name != name and other.role != "PRIMARY":
                for db in other.databases.values():
                    db.sync, db.send_kb, db.redo_kb = "NOT SYNCHRONIZING", None, behind_kb

    def cut_off(self, name: str) -> None:
        """drkit can no longer reach ``name``, which still runs (and its secondaries stay CONNECTED to it)."""
        self.replicas[name].reachable = False

    def set_sync(self, name: str, database: str, state: str) -> None:
        self.replicas[name].databases[database].sync = state

    def revive(self, name: str) -> None:
        """``name`` comes back; if another replica took over meanwhile it rejoins as a suspended secondary."""
        replica = self.replicas[name]
        replica.up = True
        if self.cluster_type == "NONE":  # no cluster to tell it: it comes back as a (second) primary
            return
        if replica.role == "PRIMARY" and any(r.role == "PRIMARY" for r in self.replicas.values() if r is not replica):
            replica.role = "SECONDARY"
            for db in replica.databases.values():
                db.sync, db.suspended = "NOT SYNCHRONIZING", True

    # -- pyodbc ---------------------------------------------------------------------------------------

    def connect(self, connstring: str, /, *, autocommit: bool = False, timeout: int = 0) -> FakeConnection:
        m = re.search(r"Server=tcp:([a-z0-9]+)\.", connstring)
        replica = next((r for r in self.replicas.values() if m and r.host == m.group(1)), None)
        if replica is None or not replica.up or not replica.reachable:
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
        d.on(r"SET \(ROLE = SECONDARY\);", lambda sql, p: self._demote(r))
        d.on(r"AS SNAPSHOT OF", lambda sql, p: self._snapshot(r, p))

    def _ours(self, params: tuple[Any, ...]) -> bool:
        return bool(params) and params[0] == self.group

    def _connected(self, r: SimReplica) -> str:
        if r.role == "PRIMARY":
            return "CONNECTED"
        running = any(o.up and o.role == "PRIMARY" for o in self.replicas.values() if o is not r)
        return "CONNECTED" if running else "DISCONNECTED"

    def _db_state(self, r: SimReplica, db: SimDatabase) -> str:
        if r.role != "PRIMARY":
            return "RESTORING"
        return "RECOVERING" if db.recovering else "ONLINE"

    def _state(self, r: SimReplica, params: tuple[Any, ...]) -> Reply:
        rows = [{"replica_server_name": r.name, "role_desc": r.role, "availability_mode_desc": r.mode,
                 "cluster_type_desc": self.cluster_type, "connected_state_desc": self._connected(r),
                 "database_name": db.name, "synchronization_state_desc": db.sync,
                 "is_failover_ready": db.sync == "SYNCHRONIZED" and r.mode == "SYNCHRONOUS_COMMIT",
                 "end_of_log_lsn": db.end_of_log_lsn, "last_hardened_lsn": db.end_of_log_lsn,
                 "recovery_lsn": db.recovery_lsn if r.role == "PRIMARY" else None,
                 "last_commit_time": db.last_commit, "is_suspended": db.suspended,
                 "database_state": self._db_state(r, db)}
                for db in r.databases.values()] if self._ours(params) else []
        for db in r.databases.values():  # recovery goes on between reads
            db.recovering = max(0, db.recovering - 1)
        return Reply([Rows.of(rows, _STATE_COLUMNS)])

    def _lag(self, r: SimReplica, params: tuple[Any, ...]) -> Reply:
        now = datetime.now(UTC).replace(tzinfo=None)
        rows = [{"replica_server_name": r.name, "role_desc": r.role, "connected_state_desc": self._connected(r),
                 "database_name": db.name,
                 "synchronization_state_desc": db.sync, "is_suspended": db.suspended,
                 "log_send_queue_size": db.send_kb, "redo_queue_size": db.redo_kb, "last_commit_time": db.last_commit,
                 "utc_now": now, "utc_offset_minutes": UTC_OFFSET_MINUTES}
                for db in r.databases.values()] if self._ours(params) else []
        return Reply([Rows.of(rows, _LAG_COLUMNS)])

    def _writable(self, r: SimReplica, params: tuple[Any, ...]) -> Reply:
        known, primary = params[0] in r.databases, r.role == "PRIMARY"
        status = None if not known else self._db_state(r, r.databases[params[0]])  # a non-readable secondary
        return Reply([Rows.of([{"status": status, "updateability": "READ_WRITE" if known and primary else None,
                                "utc_now": datetime.now(UTC).replace(tzinfo=None)}])])

    def _promoted(self, r: SimReplica) -> None:
        assert self.cluster_type != "EXTERNAL", "drkit sent failover T-SQL to a CLUSTER_TYPE = EXTERNAL group"
        r.role = "PRIMARY"
        for db in r.databases.values():
            db.recovering, db.recovery_lsn = self.recovery_reads, db.end_of_log_lsn

    def _planned(self, r: SimReplica, sql: str) -> Reply:
        assert self.cluster_type == "WSFC", f"FAILOVER sent to a CLUSTER_TYPE = {self.cluster_type} group"
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
        self._promoted(r)
        return Reply()

    def _forced(self, r: SimReplica, sql: str) -> Reply:
        self._promoted(r)
        for db in r.databases.values():
            db.sync, db.suspended, db.send_kb, db.redo_kb = "SYNCHRONIZING", False, 0, 0
        for other in self.replicas.values():
            if other is not r and other.up:
                other.role = "SECONDARY"
                for db in other.databases.values():
                    db.sync, db.suspended = "NOT SYNCHRONIZING", True
        return Reply()

    def _demote(self, r: SimReplica) -> Reply:
        if r.role == "PRIMARY":
            r.role = "SECONDARY"
            for db in r.databases.values():
                db.sync, db.suspended = "NOT SYNCHRONIZING", True
        return Reply()

    def _snapshot(self, r: SimReplica, params: tuple[Any, ...]) -> Reply:
        database, snapshot = params
        assert database in r.databases, database
        if snapshot not in r.snapshots:
            r.snapshots.append(str(snapshot))
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


_STATE_COLUMNS = ("replica_server_name", "role_desc", "availability_mode_desc", "cluster_type_desc",
                  "connected_state_desc", "database_name", "synchronization_state_desc", "is_failover_ready",
                  "end_of_log_lsn", "last_hardened_lsn", "recovery_lsn", "last_commit_time", "is_suspended",
                  "database_state")
_LAG_COLUMNS = ("replica_server_name", "role_desc", "connected_state_desc", "database_name",
                "synchronization_state_desc", "is_suspended",
                "log_send_queue_size", "redo_queue_size", "last_commit_time", "utc_now", "utc_offset_minutes")
