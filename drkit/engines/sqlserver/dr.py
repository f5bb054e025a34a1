"""SQL Server's DR operations (``drkit.engines.base.DrOperations``) over an availability group.

The database's DSN reaches the replica in the primary region, its ``replica:`` the DR replica; both are
replicas of ``sqlserver.availability_group``, and the database is ``sqlserver.database`` on each.

* **Promote** is an availability-group failover run on the DR replica: *planned* (no data loss) when the
  old primary still answers as the primary and the DR replica is SYNCHRONIZED; *forced*
  (``FORCE_FAILOVER_ALLOW_DATA_LOSS``) when the old primary cannot be reached. The failover runbook calls
  it only after its approval, whose form shows the DR replica's state per database (synchronization,
  queues, newest applied commit), whether it is still connected to a running primary, and the group's
  cluster type: the data a forced failover would lose, and what would refuse it. Nothing is forced while
  the DR replica is still CONNECTED to the primary, onto a database REVERTING or INITIALIZING, or in a
  CLUSTER_TYPE = EXTERNAL group (Pacemaker fails it over; the refusal names the command). A
  CLUSTER_TYPE = NONE group is failed over by demoting its primary first (see :mod:`.ag`).
* **Pending steps** after a forced failover: the old primary's databases stay SUSPENDED. Resuming them
  rolls back what DR never received, so it is a step of its own that the runbook asks a human to approve,
  the form saying per database what would be rolled back; approved, each such database gets a database
  snapshot first (``<db>_before_resume_<its end of log LSN>``), then ``SET HADR RESUME``.
* **Fence**: a primary that cannot be reached is left to the DBA who confirmed the region failure; one
  that answers is made a secondary by the planned failover; and while it runs as the primary with the DR
  replica behind, nothing is forced (that would make two primaries): the step refuses, saying what to do.
* **Resync** an old primary: resume its data movement (``ALTER DATABASE … SET HADR RESUME``), after a database
  snapshot of each database whose resume rolls back transactions the new primary never received.
* **Switch back**: a planned failover to the original primary once it is SYNCHRONIZED (synchronous commit).

Every statement is built by :mod:`drkit.engines.sqlserver.tsql` and golden-tested.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from drkit.config import resolve_dsn, resolve_replica_dsn
from drkit.engines.base import (
    CaughtUp,
    DrMethods,
    Fencing,
    PendingStep,
    Promotion,
    ReplicaCreated,
    ReplicaLag,
    ReplicaState,
    Resync,
    Side,
    Switchover,
)
from drkit.engines.sqlserver import ag, tsql
from drkit.engines.sqlserver.engine import SqlServerEngine
from drkit.engines.sqlserver.errors import AvailabilityGroupError, SqlServerError
from drkit.engines.sqlserver.msdb import ReplicaDatabaseState, parse_bool, to_utc
from drkit.engines.sqlserver.odbc import OdbcDriver
from drkit.engines.sqlserver.settings import SqlServerSettings, dsn_hint
from drkit.errors import ConfigError, DatabaseUnreachableError
from drkit.health import ProbeResult

if TYPE_CHECKING:
    from drkit.runtime import Runtime

DEFAULT_PORT = 1433
WRITABLE_WAIT_S = 60.0
"""How long a new primary may take to open its databases for writes (recovery runs after the failover)."""

METHODS = DrMethods(
    promote="an availability-group failover on the DR replica: planned (no data loss) when the old primary "
            "answers and the DR replica is SYNCHRONIZED, else forced (FORCE_FAILOVER_ALLOW_DATA_LOSS; the other "
            "replicas then stay suspended until a separate approval resumes them, a snapshot first)",
    fence="an old primary that cannot be reached is left as it is; one that answers is made a secondary by the "
          "planned failover, and nothing is forced while it still runs as the primary",
    resync="data movement resumed on the old primary (ALTER DATABASE … SET HADR RESUME), which rolls back "
           "transactions DR never received; drkit takes a database snapshot of each such database there first",
    switch_back="a planned availability-group failover back to the primary replica once it is SYNCHRONIZED "
                "(no data loss; the replica must be SYNCHRONOUS_COMMIT)",
)

_SYNC_RANK = {"NOT SYNCHRONIZING": 0, "REVERTING": 1, "INITIALIZING": 2, "SYNCHRONIZING": 3, "SYNCHRONIZED": 4}


def server_address(dsn: str) -> str:
    """``host:port`` of an ODBC connection string's ``Server=`` (``tcp:HOST,PORT``; port 1433 when not given)."""
    server = dsn_hint(dsn).split("/", 1)[0].strip()
    if server.lower().startswith("tcp:"):
        server = server[4:]
    host, _, port = server.partition(",")
    if not host.strip() or host.strip() == "?":
        raise ConfigError("the SQL Server DSN names no Server=HOST[,PORT]")
    return f"{host.strip()}:{port.strip() or DEFAULT_PORT}"


def _utc(value: Any, offset_minutes: int) -> datetime | None:
    return to_utc(value, None, offset_minutes) if isinstance(value, datetime) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def lag_from_rows(rows: Sequence[Mapping[str, Any]], group: str, max_lag_seconds: float) -> ReplicaLag:
    """The replica's lag from its own ``tsql.ag_local_lag`` rows.

    ``bytes``: log not yet received plus not yet redone (the DMV's KB queues); ``last_applied_at``: the
    newest applied commit of the database furthest behind; ``seconds``: 0 while every database is
    synchronizing with empty queues, else the age of that commit (it grows while the primary is idle or
    gone: an upper bound, like PostgreSQL's standby view).
    """
    first = rows[0]
    offset = int(first.get("utc_offset_minutes") or 0)
    now = _utc(first.get("utc_now"), 0)
    replica = str(first.get("replica_server_name") or "?")
    if str(first.get("role_desc")) == "PRIMARY":
        return ReplicaLag("primary", 0, 0.0, None, now, max_lag_seconds, (f"{replica} is the primary of {group}",))
    dbs = [r for r in rows if r.get("database_name") is not None]
    if not dbs:
        return ReplicaLag("absent", None, None, None, now, max_lag_seconds,
                          (f"{replica} ({first.get('role_desc')}) holds no database of {group}",))
    syncs = [str(r.get("synchronization_state_desc") or "NOT SYNCHRONIZING") for r in dbs]
    state = min(syncs, key=lambda s: _SYNC_RANK.get(s, 0))
    kb = [int(v) for r in dbs for v in (r.get("log_send_queue_size"), r.get("redo_queue_size")) if v is not None]
    behind = sum(kb) * 1024 if kb else None
    commits = [_utc(r.get("last_commit_time"), offset) for r in dbs]
    applied = min(c for c in commits if c is not None) if all(c is not None for c in commits) else None
    suspended = any(parse_bool(r.get("is_suspended")) for r in dbs)
    seconds: float | None
    if state in ("SYNCHRONIZED", "SYNCHRONIZING") and not suspended and behind == 0:
        seconds = 0.0
    elif applied is not None and now is not None:
        seconds = max(0.0, round((now - applied).total_seconds(), 3))
    else:
        seconds = None
    details = []
    for r, sync, commit in zip(dbs, syncs, commits, strict=True):
        details.append(
            f"{r['database_name']} on {replica}: {sync}{', suspended' if parse_bool(r.get('is_suspended')) else ''}, "
            f"{r.get('log_send_queue_size') if r.get('log_send_queue_size') is not None else '?'} KB not received, "
            f"{r.get('redo_queue_size') if r.get('redo_queue_size') is not None else '?'} KB not redone, "
            f"newest applied commit {commit.isoformat() if commit else 'unknown'}")
    connected = first.get("connected_state_desc")
    if connected == "CONNECTED":
        details.append(f"{replica} is still CONNECTED to the primary replica: the primary is running, and drkit "
                       "forces no failover while it runs")
    elif connected is not None:
        details.append(f"{replica} is {connected} from the primary replica")
    return ReplicaLag(state, behind, seconds, applied, now, max_lag_seconds, tuple(details))


def probe_database(engine: SqlServerEngine, database: str, *, timeout: float,
                   require_writable: bool = True) -> ProbeResult:
    """Connect through ``engine``, read whether ``database`` takes writes there (ONLINE, READ_WRITE); never raises."""
    at = datetime.now(UTC)
    t0 = time.perf_counter()

    def result(ok: bool, detail: str, writable: bool | None = None) -> ProbeResult:
        return ProbeResult(target=engine.endpoint, ok=ok, kind="db", latency_ms=(time.perf_counter() - t0) * 1000,
                           detail=detail, at=at, writable=writable)

    try:
        with engine.session() as session:
            row = session.run(tsql.database_writable(database)).one()
    except (DatabaseUnreachableError, SqlServerError) as exc:
        return result(False, _first_line(exc))
    status, updateability = row.get("status"), row.get("updateability")
    writable = status == "ONLINE" and updateability == "READ_WRITE"
    elapsed = time.perf_counter() - t0
    how = "writable" if writable else f"not writable here ({status or 'no such database'}, {updateability or '?'})"
    if elapsed > timeout:
        return result(False, f"timeout after {timeout:g}s (answered in {elapsed:.1f}s)", writable)
    return result(writable or not require_writable, how, writable)


def _promotion(report: ag.FailoverReport, seconds: float, at: datetime) -> Promotion:
    lsns = report.end_of_log_lsn.get(report.new_primary, {})
    position = f"{report.new_primary}: " + (", ".join(f"{db} end of log {lsn}" for db, lsn in lsns.items())
                                             or "no database read")
    kind = ("forced availability-group failover (FORCE_FAILOVER_ALLOW_DATA_LOSS)" if report.forced
            else "planned availability-group failover (no data loss)")
    return Promotion(already_primary=report.already_primary, method=f"{kind} of {report.group} on {report.new_primary}",
                     position=position, seconds=seconds, at=at, forced=report.forced and not report.already_primary,
                     data_loss_seconds=report.data_loss_seconds if report.forced else 0.0, notes=report.notes)


class SqlServerDr:
    """:class:`~drkit.engines.base.DrOperations` for a SQL Server database in an availability group."""

    def __init__(self, database: str, *, settings: SqlServerSettings, primary_dsn: str, dr_dsn: str,
                 max_lag_seconds: float, driver: OdbcDriver | None = None,
                 sleep: Callable[[float], None] = time.sleep, failover_wait_s: float = 120.0) -> None:
        group = settings.availability_group
        if not group:
            raise ConfigError(f"databases.{database}.sqlserver.availability_group: not set; SQL Server fails over "
                              "through its availability group")
        self._database = database
        self.settings = settings
        self.group: str = group
        self._dsns: dict[Side, str] = {"primary": primary_dsn, "dr": dr_dsn}
        self.max_lag_seconds = max_lag_seconds
        self._driver = driver
        self._sleep = sleep
        self.failover_wait_s = failover_wait_s

    @classmethod
    def from_runtime(cls, rt: Runtime, db: str) -> SqlServerDr:
        cfg = rt.policy.database(db)
        if cfg.sqlserver is None:
            raise ConfigError(f"databases.{db}.sqlserver: not set; a SQL Server database needs it")
        if cfg.replica is None:
            raise ConfigError(f"databases.{db}.replica: not configured; the DR runbooks need the DR replica")
        return cls(db, settings=cfg.sqlserver, primary_dsn=resolve_dsn(db, cfg, rt.environ),
                   dr_dsn=resolve_replica_dsn(db, cfg, rt.environ), max_lag_seconds=cfg.replica.max_lag_seconds)

    def engine(self, side: Side, *, timeout: float | None = None) -> SqlServerEngine:
        """An engine on ``side``'s server; ``timeout`` bounds its login and queries (probes)."""
        settings = self.settings
        if timeout is not None:
            bound = max(1, math.ceil(timeout))
            settings = settings.model_copy(update={"login_timeout_s": bound, "query_timeout_s": bound})
        return SqlServerEngine(self._database, dsn=self._dsns[side], settings=settings, driver=self._driver,
                               sleep=self._sleep)

    # -- DrOperations ---------------------------------------------------------------------------------

    @property
    def database(self) -> str:
        return self._database

    @property
    def methods(self) -> DrMethods:
        return METHODS

    def endpoint(self, side: Side) -> str:
        return server_address(self._dsns[side])

    def probe(self, side: Side, *, timeout: float, require_writable: bool = True) -> ProbeResult:
        """Connect, read whether the database takes writes here (ONLINE, READ_WRITE); never raises."""
        return probe_database(self.engine(side, timeout=timeout), self.settings.database, timeout=timeout,
                              require_writable=require_writable)

    def _lag(self, engine: SqlServerEngine) -> ReplicaLag:
        with engine.session() as session:
            rows = session.run(tsql.ag_local_lag(self.group)).rows()
        if not rows:
            raise AvailabilityGroupError(f"this server ({engine.endpoint}) is not a replica of availability group "
                                         f"{self.group!r}, or the login lacks VIEW SERVER STATE")
        return lag_from_rows(rows, self.group, self.max_lag_seconds)

    def replica_state(self) -> ReplicaState:
        """The DR replica's lag, with what would refuse a failover onto it on the approval form."""
        dr = self.engine("dr")
        lag = self._lag(dr)
        with dr.session() as session:
            states = dr.ag_state(session, self.group)
        extra = [f"{self.group} is CLUSTER_TYPE = {states[0].cluster_type}"]
        if states[0].cluster_type == "EXTERNAL":
            extra.append("approving runs no failover: " + ag.cluster_manager_command(self.group, states[0].replica))
        elif states[0].cluster_type == "NONE":
            extra.append("no cluster manager: a primary that answers is demoted (SET (ROLE = SECONDARY)) before "
                         "the DR replica takes over")
        if not lag.is_primary:
            extra += [f"a forced failover will be refused: {p}" for p in ag.cannot_start_as_primary(states)]
        lag = dataclasses.replace(lag, details=lag.details + tuple(extra))
        return ReplicaState(already_primary=lag.is_primary, lag=lag)

    def lag(self, *, timeout: float = 10.0) -> ReplicaLag:
        """The DR replica's own view (its queues and newest applied commit), whether the primary answers or not."""
        return self._lag(self.engine("dr", timeout=timeout))

    def _primary_role(self) -> str | None:
        """The old primary replica's role in the group, or None when it cannot be reached."""
        engine = self.engine("primary", timeout=10)
        try:
            with engine.session() as session:
                states = engine.ag_state(session, self.group)
        except DatabaseUnreachableError:
            return None
        return "PRIMARY" if all(st.role == "PRIMARY" for st in states) else states[0].role

    def fence_primary(self) -> Fencing:
        engine = self.engine("primary", timeout=10)
        try:
            with engine.session() as session:
                mine = engine.ag_state(session, self.group)
        except DatabaseUnreachableError as exc:
            return Fencing("unreachable", f"{_first_line(exc)}; nothing can be stopped from here (the approval "
                                          "confirmed the primary region is down)")
        old = mine[0].replica
        if not all(st.role == "PRIMARY" for st in mine):
            return Fencing("not a primary", f"{old} is {mine[0].role} in {self.group}: nothing to fence")
        dr = self.engine("dr")
        with dr.session() as session:
            theirs = dr.ag_state(session, self.group)
        problems = ag.planned_failover_problems(theirs)
        if problems:
            raise AvailabilityGroupError(
                f"{old} still runs as the primary of {self.group!r} and {theirs[0].replica} is not ready for a "
                f"failover without data loss ({'; '.join(problems)}): forcing one now would leave two primaries. "
                f"Stop SQL Server on {old} (or cut it off from its clients), then re-run `drkit failover "
                f"{self._database}`; or make {theirs[0].replica} SYNCHRONOUS_COMMIT and wait for SYNCHRONIZED")
        return Fencing("demoted by the failover", f"{old} answers and {theirs[0].replica} is SYNCHRONIZED: the "
                                                  f"planned failover makes {old} a secondary, with no data loss")

    def promote_replica(self) -> Promotion:
        t0, at = time.monotonic(), datetime.now(UTC)
        dr = self.engine("dr")
        if self._primary_role() == "PRIMARY":  # answers as the primary: only a planned failover, never forced
            report = ag.planned_failover(dr, self.group, wait_s=self.failover_wait_s,
                                         current_primary=self.engine("primary"))
        else:
            report = ag.forced_failover([dr], self.group, wait_s=self.failover_wait_s)
        return _promotion(report, time.monotonic() - t0, at)

    def confirm_writable(self, side: Side) -> datetime:
        """Wait until ``side`` has the database ONLINE and READ_WRITE (recovery after a failover takes a moment)."""
        engine = self.engine(side)
        deadline = time.monotonic() + WRITABLE_WAIT_S
        with engine.session() as session:
            while True:
                row = session.run(tsql.database_writable(self.settings.database)).one()
                if row.get("status") == "ONLINE" and row.get("updateability") == "READ_WRITE":
                    return _utc(row.get("utc_now"), 0) or datetime.now(UTC)
                if time.monotonic() >= deadline:
                    raise AvailabilityGroupError(
                        f"{self.settings.database!r} on {engine.endpoint} does not take writes after "
                        f"{WRITABLE_WAIT_S:g} s ({row.get('status') or 'no such database'}, "
                        f"{row.get('updateability') or '?'}); check the availability group's dashboard")
                self._sleep(1.0)

    def _states(self, side: Side) -> list[ReplicaDatabaseState] | None:
        """``side``'s replica state, or None when it cannot be reached."""
        engine = self.engine(side, timeout=10)
        try:
            with engine.session() as session:
                return engine.ag_state(session, self.group)
        except DatabaseUnreachableError:
            return None

    def resync(self, node: Side) -> Resync:
        """Resume ``node``'s suspended databases, each after a snapshot when the resume rolls anything back."""
        other = self._states("dr" if node == "primary" else "primary")
        replica, resumed, states = ag.resume_with_snapshots(self.engine(node), self.group, primary_states=other)
        if resumed:
            return Resync(node, "resumed", f"data movement resumed on {replica}: {'; '.join(resumed)}")
        shown = ", ".join(f"{st.database} {st.synchronization_state}" for st in states)
        return Resync(node, "already synchronizing", f"{replica}: {shown}")

    def pending_steps(self) -> list[PendingStep]:
        """After a forced failover to DR: the old primary's suspended databases, to resume once approved (a
        second primary, which a CLUSTER_TYPE = NONE group's old primary comes back as, is demoted first).
        Nothing while the old primary cannot be reached (it is suspended when it comes back, and the
        failback resumes it the same way), or while DR is not the primary."""
        return self._pending(self._states("dr"), self._states("primary"))

    def _pending(self, new: list[ReplicaDatabaseState] | None,
                 old: list[ReplicaDatabaseState] | None) -> list[PendingStep]:
        if not new or not old or not ag.is_primary(new):
            return []
        second_primary = ag.is_primary(old)
        plan = ag.rollback_plan([dataclasses.replace(st, is_suspended=True) for st in old] if second_primary
                                else old, new)
        if not plan:
            return []
        replica = old[0].replica
        action = (f"resume data movement on {replica} ({self.endpoint('primary')}): a database snapshot of each "
                  "database whose resume rolls back log, then ALTER DATABASE … SET HADR RESUME")
        evidence = [rb.describe() for rb in plan]
        if second_primary:
            action = (f"demote {replica}, which answers as a second primary of {self.group} (ALTER AVAILABILITY "
                      f"GROUP … SET (ROLE = SECONDARY)), then {action[0].lower()}{action[1:]}")
            evidence.insert(0, f"{replica} answers as a primary of {self.group} beside {new[0].replica}: writes "
                               f"it took since the failover are not on {new[0].replica}")
        return [PendingStep(f"resume:{replica}", "primary", action, tuple(evidence))]

    def run_pending_step(self, key: str) -> str:
        new, old = self._states("dr"), self._states("primary")
        if not any(step.key == key for step in self._pending(new, old)):
            return f"{key}: nothing pending any more (done already, or its replica cannot be reached)"
        replica, done, _ = ag.resume_with_snapshots(self.engine("primary"), self.group, primary_states=new,
                                                    demote=bool(old and ag.is_primary(old)))
        return f"{replica}: " + ("; ".join(done) or "nothing was suspended")

    def wait_caught_up(self, node: Side, *, timeout: float) -> CaughtUp:
        states = ag.wait_synchronized(self.engine(node), self.group, timeout=timeout, sleep=self._sleep)
        return CaughtUp(node, f"{states[0].replica}: " + ", ".join(
            f"{st.database} SYNCHRONIZED at end of log {st.end_of_log_lsn}" for st in states))

    def switch_back(self) -> Switchover:
        t0, at = time.monotonic(), datetime.now(UTC)
        report = ag.planned_failover(self.engine("primary"), self.group, wait_s=self.failover_wait_s,
                                     current_primary=self.engine("dr"))
        self.confirm_writable("primary")
        seconds = time.monotonic() - t0
        return Switchover(_promotion(report, seconds, at), stopped_at=None,
                          write_unavailable_seconds=0.0 if report.already_primary else seconds)

    def create_replica(self, *, timeout: float = 3600.0) -> ReplicaCreated:
        raise ConfigError(
            f"{self._database!r} is a SQL Server database: its DR replica is a secondary of availability group "
            f"{self.group!r}, built with SQL Server's own tools (ALTER AVAILABILITY GROUP {self.group} ADD REPLICA "
            "on the primary, then ALTER AVAILABILITY GROUP … JOIN and seeding on the secondary; or SSMS's Add "
            "Replica wizard, or dbatools Add-DbaAgReplica); drkit then fails over and back through it")
