"""Availability-group failover for SQL Server: planned (no data loss) and forced, with what each reports."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from drkit.engines.sqlserver import tsql
from drkit.engines.sqlserver.engine import SqlServerEngine
from drkit.engines.sqlserver.errors import AvailabilityGroupError, SqlServerError
from drkit.engines.sqlserver.msdb import ReplicaDatabaseState
from drkit.engines.sqlserver.odbc import Session
from drkit.errors import ConfigError, DatabaseUnreachableError


class FailoverNotReadyError(AvailabilityGroupError):
    """A planned failover was refused before anything was sent: the target is not synchronized."""


@dataclass(frozen=True)
class FailoverReport:
    group: str
    new_primary: str
    forced: bool
    already_primary: bool
    end_of_log_lsn: Mapping[str, Mapping[str, int | None]]
    """replica → database → end_of_log_lsn, as read before the failover."""
    resumed: tuple[str, ...]
    """``replica:database`` whose data movement was resumed."""
    data_loss_seconds: float | None
    """Forced only: per database, the newest commit another reachable replica had minus the new primary's,
    the worst one; None when no other replica could be read (the old primary's last commit is unknown)."""
    notes: tuple[str, ...]


def _group(engine: SqlServerEngine, group: str | None) -> str:
    ag = group or engine.settings.availability_group
    if not ag:
        raise ConfigError(f"databases.{engine.name}.sqlserver.availability_group is not set")
    return tsql.validate_name(ag, "availability group name")


def _wait_primary(engine: SqlServerEngine, session: Session, group: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        states = engine.ag_state(session, group)
        if all(st.role == "PRIMARY" for st in states):
            return
        if time.monotonic() >= deadline:
            raise AvailabilityGroupError(
                f"{engine.endpoint} accepted the failover of {group!r} but is still {states[0].role} after "
                f"{wait_s:.0f} s; check the group's dashboard and the cluster log before retrying")
        engine.sleep(1.0)


def planned_failover_problems(states: Sequence[ReplicaDatabaseState]) -> list[str]:
    """Why a planned failover to this replica would be refused (empty: it loses no data)."""
    problems = []
    if states and states[0].availability_mode != "SYNCHRONOUS_COMMIT":
        problems.append(f"the replica is {states[0].availability_mode}, not SYNCHRONOUS_COMMIT")
    for st in states:
        if st.synchronization_state != "SYNCHRONIZED" or not st.is_failover_ready:
            problems.append(f"database {st.database!r} is {st.synchronization_state or 'not joined'}"
                            f"{'' if st.is_failover_ready else ', not failover-ready'}")
    return problems


def planned_failover(target: SqlServerEngine, group: str | None = None, *, wait_s: float = 120) -> FailoverReport:
    """``ALTER AVAILABILITY GROUP … FAILOVER`` on the target secondary, only if no data can be lost.

    Refused (nothing sent) unless the target replica is synchronous-commit and every database on
    it is SYNCHRONIZED and failover-ready. Re-running after success changes nothing.
    """
    ag = _group(target, group)
    with target.session() as session:
        states = target.ag_state(session, ag)
        lsns = {states[0].replica: {str(st.database): st.end_of_log_lsn for st in states}}
        if all(st.role == "PRIMARY" for st in states):
            return FailoverReport(ag, states[0].replica, False, True, lsns, (), 0.0,
                                  (f"{states[0].replica} is already the primary of {ag}; nothing done",))
        problems = planned_failover_problems(states)
        if problems:
            raise FailoverNotReadyError(
                f"planned failover of {ag!r} to {states[0].replica} refused, nothing was changed: "
                + "; ".join(problems) + ". Switch the replica to SYNCHRONOUS_COMMIT and wait until every "
                "database is SYNCHRONIZED, or run the forced (data-loss) failover runbook if the primary is lost")
        session.run(tsql.ag_failover(ag, force=False))
        _wait_primary(target, session, ag, wait_s)
    return FailoverReport(ag, states[0].replica, False, False, lsns, (), 0.0, ())


def choose_forced_target(states: Mapping[str, Sequence[ReplicaDatabaseState]]) -> tuple[str, list[str]]:
    """The replica to force onto: most databases at the highest ``end_of_log_lsn``; ties keep the given order."""
    if not states:
        raise AvailabilityGroupError("no replica of the availability group could be reached; nothing was changed")
    best: dict[str, int] = {}
    for replica_states in states.values():
        for st in replica_states:
            if st.database is not None and st.end_of_log_lsn is not None:
                best[st.database] = max(best.get(st.database, st.end_of_log_lsn), st.end_of_log_lsn)
    scores = {replica: sum(1 for st in sts if st.database is not None and st.end_of_log_lsn is not None
                           and st.end_of_log_lsn == best.get(st.database)) for replica, sts in states.items()}
    order = list(states)
    chosen = max(order, key=lambda r: (scores[r], -order.index(r)))
    reasons = [f"{r}: highest end_of_log_lsn for {scores[r]} of {len(best)} database(s)" for r in order]
    return chosen, reasons


def forced_failover(
    candidates: Sequence[SqlServerEngine], group: str | None = None, *, wait_s: float = 120,
) -> FailoverReport:
    """``FORCE_FAILOVER_ALLOW_DATA_LOSS`` on the secondary with the most log, then ``SET HADR RESUME`` elsewhere.

    ``candidates`` are the secondaries drkit may promote, in order of preference; unreachable ones
    are skipped (and noted). If one of them is already the primary, nothing is forced again.
    The old primary must be fenced (down, or cut off) by the runbook before this runs.
    """
    if not candidates:
        raise AvailabilityGroupError("forced failover needs at least one secondary replica to promote")
    ag = _group(candidates[0], group)
    states: dict[str, list[ReplicaDatabaseState]] = {}
    engines: dict[str, SqlServerEngine] = {}
    notes: list[str] = []
    for engine in candidates:
        try:
            with engine.session() as session:
                found = engine.ag_state(session, ag)
        except (DatabaseUnreachableError, SqlServerError) as exc:
            notes.append(f"skipped {engine.endpoint}: {exc}")
            continue
        states[found[0].replica] = found
        engines[found[0].replica] = engine
    lsns = {r: {str(st.database): st.end_of_log_lsn for st in sts} for r, sts in states.items()}
    primary = next((r for r, sts in states.items() if all(st.role == "PRIMARY" for st in sts)), None)
    already = primary is not None
    if primary is None:
        primary, reasons = choose_forced_target(states)
        notes.extend(reasons)
        with engines[primary].session() as session:
            session.run(tsql.ag_failover(ag, force=True))
            _wait_primary(engines[primary], session, ag, wait_s)
    else:
        notes.append(f"{primary} is already the primary of {ag}; no failover was forced again")
    resumed: list[str] = []
    for replica, engine in engines.items():
        if replica == primary:
            continue
        try:
            with engine.session() as session:
                for st in engine.ag_state(session, ag):
                    if st.database is not None and st.is_suspended:
                        session.run(tsql.hadr_resume(st.database))
                        resumed.append(f"{replica}:{st.database}")
        except (DatabaseUnreachableError, SqlServerError) as exc:
            notes.append(f"could not resume data movement on {replica}: {exc}; run ALTER DATABASE … SET HADR "
                         "RESUME there once it is reachable")
    return FailoverReport(ag, primary, True, already, lsns, tuple(resumed), loss_seconds(states, primary),
                          tuple(notes))


def loss_seconds(states: Mapping[str, Sequence[ReplicaDatabaseState]], primary: str) -> float | None:
    """What a forced failover onto ``primary`` lost against the other replicas read, in seconds of commits.

    Per database, the newest commit another replica had minus the new primary's; the worst database counts.
    None when no other replica was read: the old primary's last commit is then unknown.
    """
    mine = {st.database: st.last_commit_time for st in states.get(primary, ())
            if st.database is not None and st.last_commit_time is not None}
    gaps = [(st.last_commit_time - mine[st.database]).total_seconds()
            for replica, sts in states.items() if replica != primary for st in sts
            if st.database in mine and st.last_commit_time is not None]
    return max(0.0, *gaps) if gaps else None


def wait_synchronized(engine: SqlServerEngine, group: str, *, timeout: float,
                      sleep: Callable[[float], None]) -> list[ReplicaDatabaseState]:
    """Wait until every database of ``group`` on this (secondary) replica is SYNCHRONIZED; its states then.

    A switch without data loss is a planned failover, which needs synchronous commit: an asynchronous
    replica is refused at once, saying how to change it.
    """
    deadline = time.monotonic() + timeout
    with engine.session() as session:
        while True:
            states = engine.ag_state(session, group)
            replica = states[0].replica
            if states[0].availability_mode != "SYNCHRONOUS_COMMIT":
                raise FailoverNotReadyError(
                    f"{replica} is {states[0].availability_mode} in {group!r}: only a SYNCHRONOUS_COMMIT replica "
                    "can take the database back without data loss. On the primary run ALTER AVAILABILITY GROUP "
                    f"[{group}] MODIFY REPLICA ON N'{replica}' WITH (AVAILABILITY_MODE = SYNCHRONOUS_COMMIT), "
                    "then re-run")
            if not planned_failover_problems(states):
                return states
            if time.monotonic() >= deadline:
                raise AvailabilityGroupError(
                    f"{replica} did not become SYNCHRONIZED in {group!r} within {timeout:g} s: "
                    + "; ".join(planned_failover_problems(states)))
            sleep(1.0)


def resume_suspended(engine: SqlServerEngine, group: str) -> tuple[str, list[str], list[ReplicaDatabaseState]]:
    """``SET HADR RESUME`` for every suspended database of ``group`` on this secondary replica.

    Returns (replica, databases resumed, states read first). A replica that is the primary is refused:
    it is not a replica of anything.
    """
    with engine.session() as session:
        states = engine.ag_state(session, group)
        replica = states[0].replica
        if all(st.role == "PRIMARY" for st in states):
            raise AvailabilityGroupError(
                f"{replica} is the primary of {group!r}: it cannot be resynchronised as a secondary; fail over "
                "to the other replica first")
        missing = [st for st in states if st.database is None]
        if missing:
            raise AvailabilityGroupError(
                f"{replica} holds no database of {group!r}: join them there (ALTER DATABASE … SET HADR "
                f"AVAILABILITY GROUP = [{group}]), then re-run")
        resumed = []
        for st in states:
            if st.database is not None and st.is_suspended:
                session.run(tsql.hadr_resume(st.database))
                resumed.append(st.database)
    return replica, resumed, states
