"""Availability-group failover for SQL Server: planned (no data loss) and forced, with what each reports.

What Microsoft documents and this module follows ("Perform a forced manual failover of an availability
group", "Always On availability group failover on Linux", the read-scale failover page):

* a forced failover is refused while the primary replica still runs (a target secondary still CONNECTED
  to it), and onto a replica with a database REVERTING or INITIALIZING (it cannot start as a primary);
* the target is the replica with the highest ``end_of_log_lsn`` for most databases, and where another
  replica has more log for some database it is said, per database (the data a resume there rolls back);
* after a forced failover the other secondaries stay SUSPENDED: resuming one rolls back the log records
  the new primary never had, so it is a separate step, taken after a human approves it, and a database
  snapshot of each such secondary database is taken first (:func:`resume_with_snapshots`);
* ``cluster_type_desc`` EXTERNAL (Pacemaker) is failed over by the cluster manager: refused here, naming
  the command, with no T-SQL sent; NONE (no cluster manager) is failed over by demoting the primary first
  (``SET (ROLE = SECONDARY)``), then ``FORCE_FAILOVER_ALLOW_DATA_LOSS`` on a target that has all its log;
* a failover returns before recovery: the new primary is waited for until every database is ONLINE.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from drkit.engines.sqlserver import tsql
from drkit.engines.sqlserver.engine import SqlServerEngine
from drkit.engines.sqlserver.errors import AvailabilityGroupError, SqlServerError
from drkit.engines.sqlserver.msdb import ReplicaDatabaseState
from drkit.engines.sqlserver.odbc import Session
from drkit.errors import ConfigError, DatabaseUnreachableError, NotRetryable

CANNOT_START_AS_PRIMARY = ("REVERTING", "INITIALIZING")


class FailoverNotReadyError(AvailabilityGroupError):
    """A planned failover was refused before anything was sent: the target is not synchronized."""


class FailoverRefusedError(AvailabilityGroupError, NotRetryable):
    """A failover drkit must not run was refused before anything was sent (the reason names what to do)."""


@dataclass(frozen=True)
class FailoverReport:
    group: str
    new_primary: str
    forced: bool
    already_primary: bool
    end_of_log_lsn: Mapping[str, Mapping[str, int | None]]
    """replica → database → end_of_log_lsn, as read before the failover."""
    suspended: tuple[str, ...]
    """``replica:database`` left SUSPENDED for the approved resume step (never resumed here)."""
    data_loss_seconds: float | None
    """Forced only: per database, the newest commit another reachable replica had minus the new primary's,
    the worst one; None when no other replica could be read (the old primary's last commit is unknown)."""
    notes: tuple[str, ...]


def _group(engine: SqlServerEngine, group: str | None) -> str:
    ag = group or engine.settings.availability_group
    if not ag:
        raise ConfigError(f"databases.{engine.name}.sqlserver.availability_group is not set")
    return tsql.validate_name(ag, "availability group name")


def is_primary(states: Sequence[ReplicaDatabaseState]) -> bool:
    return bool(states) and all(st.role == "PRIMARY" for st in states)


def cluster_manager_command(group: str, target: str) -> str:
    """What moves a CLUSTER_TYPE = EXTERNAL group's primary to ``target``: Pacemaker, not T-SQL."""
    return (f"availability group {group!r} is CLUSTER_TYPE = EXTERNAL: its cluster manager (Pacemaker) fails it "
            f"over, and drkit sends no failover T-SQL. On a cluster node run `sudo pcs resource move "
            f"<ag resource>-clone {target} --promoted` (RHEL/Ubuntu; `--master` on pcs before 0.10; SLES: `crm "
            f"resource move <ag resource> {target}`), then `sudo pcs resource clear <ag resource>-clone` (or `crm "
            f"resource clear`) so later failovers are not pinned; then re-run: drkit sees {target} as the primary "
            "and carries on")


def refuse_external(states: Sequence[ReplicaDatabaseState], group: str) -> None:
    if states and states[0].cluster_type == "EXTERNAL":
        raise FailoverRefusedError(cluster_manager_command(group, states[0].replica))


def wait_recovered(engine: SqlServerEngine, session: Session, group: str, wait_s: float,
                   ) -> list[ReplicaDatabaseState]:
    """Wait until this replica is the primary and every database of the group is ONLINE on it.

    A failover command returns when the target accepts it; recovery runs after (as dbatools and the
    documentation warn), so the PRIMARY role alone is not yet a database that takes writes.
    """
    deadline = time.monotonic() + wait_s
    while True:
        states = engine.ag_state(session, group)
        recovering = [f"{st.database} {st.database_state or 'not open'}" for st in states
                      if st.database is not None and st.database_state != "ONLINE"]
        if is_primary(states) and not recovering:
            return states
        if time.monotonic() >= deadline:
            where = (f"still {states[0].role}" if not is_primary(states)
                     else f"the primary, but recovery has not finished ({', '.join(recovering)})")
            raise AvailabilityGroupError(
                f"{engine.endpoint} accepted the failover of {group!r} but is {where} after {wait_s:.0f} s; "
                "check the group's dashboard and the error log before retrying")
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


def planned_failover(target: SqlServerEngine, group: str | None = None, *, wait_s: float = 120,
                     current_primary: SqlServerEngine | None = None) -> FailoverReport:
    """``ALTER AVAILABILITY GROUP … FAILOVER`` on the target secondary, only if no data can be lost.

    Refused (nothing sent) unless the target replica is synchronous-commit and every database on
    it is SYNCHRONIZED and failover-ready, and for a CLUSTER_TYPE = EXTERNAL group (its cluster manager
    fails it over). A CLUSTER_TYPE = NONE group has no cluster to move the role: ``current_primary`` is
    demoted first, then the target forced once it holds all the demoted primary's log (see
    :func:`_demote_then_force`). Re-running after success changes nothing.
    """
    ag = _group(target, group)
    with target.session() as session:
        states = target.ag_state(session, ag)
        lsns = {states[0].replica: {str(st.database): st.end_of_log_lsn for st in states}}
        if is_primary(states):
            return FailoverReport(ag, states[0].replica, False, True, lsns, (), 0.0,
                                  (f"{states[0].replica} is already the primary of {ag}; nothing done",))
        refuse_external(states, ag)
        problems = planned_failover_problems(states)
        if problems:
            raise FailoverNotReadyError(
                f"planned failover of {ag!r} to {states[0].replica} refused, nothing was changed: "
                + "; ".join(problems) + ". Switch the replica to SYNCHRONOUS_COMMIT and wait until every "
                "database is SYNCHRONIZED, or run the forced (data-loss) failover runbook if the primary is lost")
        notes: tuple[str, ...] = ()
        if states[0].cluster_type == "NONE":
            notes = _demote_then_force(target, session, states, ag, current_primary, wait_s)
        else:
            session.run(tsql.ag_failover(ag, force=False))
        wait_recovered(target, session, ag, wait_s)
    return FailoverReport(ag, states[0].replica, False, False, lsns, (), 0.0, notes)


def _demote_then_force(target: SqlServerEngine, session: Session, states: Sequence[ReplicaDatabaseState],
                       group: str, current_primary: SqlServerEngine | None, wait_s: float) -> tuple[str, ...]:
    """The documented failover of a CLUSTER_TYPE = NONE group without data loss: ``SET (ROLE = SECONDARY)`` on
    the primary (it stops taking writes), wait until the target's end of log reaches the demoted primary's for
    every database, then ``FORCE_FAILOVER_ALLOW_DATA_LOSS`` on the target (it loses nothing then)."""
    replica = states[0].replica
    if current_primary is None:
        raise FailoverRefusedError(
            f"availability group {group!r} is CLUSTER_TYPE = NONE: its primary must be demoted first (ALTER "
            f"AVAILABILITY GROUP [{group}] SET (ROLE = SECONDARY) on it), and drkit cannot reach it from here")
    with current_primary.session() as old:
        mine = current_primary.ag_state(old, group)
        if is_primary(mine):
            old.run(tsql.ag_demote(group))
            mine = current_primary.ag_state(old, group)
    want = {st.database: st.end_of_log_lsn for st in mine if st.database is not None}
    deadline = time.monotonic() + wait_s
    while True:
        have = {st.database: st.end_of_log_lsn for st in target.ag_state(session, group) if st.database}
        short = [f"{db} at {have.get(db)} of {lsn}" for db, lsn in want.items()
                 if lsn is not None and (have.get(db) is None or (have.get(db) or 0) < lsn)]
        if not short:
            break
        if time.monotonic() >= deadline:
            raise AvailabilityGroupError(
                f"{mine[0].replica} was demoted (SET (ROLE = SECONDARY)) but {replica} has not received all its "
                f"log within {wait_s:.0f} s ({'; '.join(short)}); nothing was forced. Wait and re-run, or make "
                f"{mine[0].replica} the primary again with no loss: ALTER AVAILABILITY GROUP [{group}] "
                f"FORCE_FAILOVER_ALLOW_DATA_LOSS on {mine[0].replica} (it holds every log record)")
        target.sleep(1.0)
    session.run(tsql.ag_failover(group, force=True))
    return (f"CLUSTER_TYPE = NONE: {mine[0].replica} demoted first, then {replica} forced once it had all of "
            "the demoted primary's log (no data lost)",)


# -- forced failover -----------------------------------------------------------------------------------


def primary_running(states: Sequence[ReplicaDatabaseState]) -> str | None:
    """Evidence, from a secondary, that the primary replica still runs: it is CONNECTED to it."""
    if states and not is_primary(states) and states[0].connected_state == "CONNECTED":
        return (f"{states[0].replica} is still CONNECTED to the primary replica: the primary is running (do not "
                "force failover while the primary replica is still running)")
    return None


def cannot_start_as_primary(states: Sequence[ReplicaDatabaseState]) -> list[str]:
    """Why this replica's databases cannot all start as primary databases (REVERTING, INITIALIZING, absent)."""
    problems = []
    for st in states:
        if st.database is None:
            problems.append(f"{st.replica} holds no database of the group")
        elif st.synchronization_state in CANNOT_START_AS_PRIMARY:
            problems.append(f"{st.database} on {st.replica} is {st.synchronization_state}: it cannot start as a "
                            "primary database")
    return problems


def database_leads(states: Mapping[str, Sequence[ReplicaDatabaseState]]) -> dict[str, tuple[str, int]]:
    """Per database, the replica with the highest ``end_of_log_lsn`` and that LSN (ties: the first given)."""
    leads: dict[str, tuple[str, int]] = {}
    for replica, sts in states.items():
        for st in sts:
            if st.database is None or st.end_of_log_lsn is None:
                continue
            if st.database not in leads or st.end_of_log_lsn > leads[st.database][1]:
                leads[st.database] = (replica, st.end_of_log_lsn)
    return leads


def choose_forced_target(states: Mapping[str, Sequence[ReplicaDatabaseState]]) -> tuple[str, list[str]]:
    """The replica to force onto: among those whose databases can all start as primary, the one with the
    highest ``end_of_log_lsn`` for most databases; ties keep the given order. The reasons say, per database,
    where its most log is (different databases can have it on different replicas)."""
    if not states:
        raise AvailabilityGroupError("no replica of the availability group could be reached; nothing was changed")
    leads = database_leads(states)
    blocked = {r: cannot_start_as_primary(sts) for r, sts in states.items()}
    order = [r for r in states if not blocked[r]]
    if not order:
        raise FailoverRefusedError("no replica can take the primary role, nothing was forced: "
                                   + "; ".join(p for ps in blocked.values() for p in ps)
                                   + ". A REVERTING database needs a full restore from backups, an INITIALIZING "
                                   "one the missing log (or a restore) before it can become a primary")
    scores = {r: sum(1 for st in states[r] if st.database in leads and st.end_of_log_lsn == leads[st.database][1])
              for r in order}
    chosen = max(order, key=lambda r: (scores[r], -order.index(r)))
    reasons = [f"{r}: highest end_of_log_lsn for {scores[r]} of {len(leads)} database(s)" for r in order]
    reasons += [f"{r} cannot take the primary role: {'; '.join(ps)}" for r, ps in blocked.items() if ps]
    mine = {st.database: st.end_of_log_lsn for st in states[chosen]}
    for db, (leader, lsn) in sorted(leads.items()):
        if leader != chosen and (mine.get(db) or 0) < lsn:
            reasons.append(f"{db}: {leader} has log up to LSN {lsn} that {chosen} lacks (end of log "
                           f"{mine.get(db)}); resuming {db} on {leader} rolls it back, so a snapshot is taken "
                           "there first")
    return chosen, reasons


def forced_failover(
    candidates: Sequence[SqlServerEngine], group: str | None = None, *, wait_s: float = 120,
) -> FailoverReport:
    """``FORCE_FAILOVER_ALLOW_DATA_LOSS`` on the secondary with the most log; the others are left SUSPENDED.

    ``candidates`` are the secondaries drkit may promote, in order of preference; unreachable ones
    are skipped (and noted). If one of them is already the primary, nothing is forced again. Refused,
    nothing sent, while a candidate is still CONNECTED to the primary (it runs), when no candidate's
    databases can all start as primary, and for a CLUSTER_TYPE = EXTERNAL group. Resuming the others is
    :func:`resume_with_snapshots`, a separate step the runbook asks a human to approve.
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
    primary = next((r for r, sts in states.items() if is_primary(sts)), None)
    already = primary is not None
    if primary is None:
        for sts in states.values():
            refuse_external(sts, ag)
        running = [p for p in map(primary_running, states.values()) if p]
        if running:
            raise FailoverRefusedError(
                f"forced failover of {ag!r} refused, nothing was changed: {'; '.join(running)}. If the primary is "
                "healthy, fail over without loss (a planned failover, once the target is SYNCHRONIZED); if it must "
                "go, stop SQL Server on it or cut it off from its clients and its secondaries, then re-run")
        primary, reasons = choose_forced_target(states)
        notes.extend(reasons)
        with engines[primary].session() as session:
            session.run(tsql.ag_failover(ag, force=True))
            wait_recovered(engines[primary], session, ag, wait_s)
        if states[primary][0].cluster_type == "NONE":
            notes.append(f"CLUSTER_TYPE = NONE: the old primary comes back as a primary too; demote it (ALTER "
                         f"AVAILABILITY GROUP [{ag}] SET (ROLE = SECONDARY)) before resuming it")
    else:
        notes.append(f"{primary} is already the primary of {ag}; no failover was forced again")
    suspended: list[str] = []
    for replica, engine in engines.items():
        if replica == primary:
            continue
        try:
            with engine.session() as session:
                suspended += [f"{replica}:{st.database}" for st in engine.ag_state(session, ag)
                              if st.database is not None and st.is_suspended]
        except (DatabaseUnreachableError, SqlServerError) as exc:
            notes.append(f"could not read {replica} after the failover: {exc}")
    if suspended:
        notes.append(f"left SUSPENDED until a resume is approved (it rolls back what {primary} never received; "
                     f"a snapshot is taken first): {', '.join(suspended)}")
    return FailoverReport(ag, primary, True, already, lsns, tuple(suspended), loss_seconds(states, primary),
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


# -- after a forced failover: what a resume rolls back, snapshots, resume ---------------------------------


@dataclass(frozen=True)
class Rollback:
    """What ``SET HADR RESUME`` of one suspended secondary database discards, as far as can be told."""

    replica: str
    database: str
    end_of_log_lsn: int | None
    fork_lsn: int | None
    """The new primary's ``recovery_lsn`` for the database: where its history left this one (None: unread)."""
    last_commit_time: object

    @property
    def loses_log(self) -> bool:
        """True unless this copy provably ends at or before the fork (then a resume discards nothing)."""
        return self.fork_lsn is None or self.end_of_log_lsn is None or self.end_of_log_lsn > self.fork_lsn

    @property
    def snapshot(self) -> str:
        """The snapshot taken before the resume: stable across re-runs (its end of log does not move while
        suspended), so a re-run finds it instead of taking another."""
        return f"{self.database[:90]}_before_resume_{self.end_of_log_lsn or 0}"

    def describe(self) -> str:
        if not self.loses_log:
            return (f"{self.database} on {self.replica}: ends at LSN {self.end_of_log_lsn}, at or before the new "
                    f"primary's fork point {self.fork_lsn}: resuming rolls nothing back")
        past = (f"past LSN {self.fork_lsn}" if self.fork_lsn is not None
                else "past the new primary's fork point (unknown: the new primary could not be read)")
        return (f"{self.database} on {self.replica}: resuming rolls back its log {past} up to LSN "
                f"{self.end_of_log_lsn} (newest commit there {self.last_commit_time or 'unknown'}); snapshot "
                f"[{self.snapshot}] is taken there first and keeps it")


def rollback_plan(secondary: Sequence[ReplicaDatabaseState],
                  primary: Sequence[ReplicaDatabaseState] | None) -> list[Rollback]:
    """For each suspended database of ``secondary``, what a resume would roll back against ``primary``."""
    forks = {st.database: st.recovery_lsn for st in primary or () if st.database is not None}
    return [Rollback(st.replica, st.database, st.end_of_log_lsn, forks.get(st.database), st.last_commit_time)
            for st in secondary if st.database is not None and st.is_suspended]


def resume_with_snapshots(engine: SqlServerEngine, group: str, *,
                          primary_states: Sequence[ReplicaDatabaseState] | None = None,
                          demote: bool = False) -> tuple[str, list[str], list[ReplicaDatabaseState]]:
    """Resume every suspended database of ``group`` on this secondary, each after a database snapshot when the
    resume can roll anything back (``primary_states``: the new primary's, for its fork points).

    ``demote``: this replica came back as a second primary (CLUSTER_TYPE = NONE after a forced failover, or
    split): ``SET (ROLE = SECONDARY)`` first. Otherwise a replica that is the primary is refused. Returns
    (replica, one line per database done, states read first).
    """
    with engine.session() as session:
        states = engine.ag_state(session, group)
        replica = states[0].replica
        if is_primary(states):
            if not demote:
                raise AvailabilityGroupError(
                    f"{replica} is the primary of {group!r}: it cannot be resynchronised as a secondary; fail over "
                    "to the other replica first")
            session.run(tsql.ag_demote(group))
            states = engine.ag_state(session, group)
        missing = [st for st in states if st.database is None]
        if missing:
            raise AvailabilityGroupError(
                f"{replica} holds no database of {group!r}: join them there (ALTER DATABASE … SET HADR "
                f"AVAILABILITY GROUP = [{group}]), then re-run")
        done = []
        for rb in rollback_plan(states, primary_states):
            if rb.loses_log:
                session.run(tsql.database_snapshot(rb.database, rb.snapshot))
            session.run(tsql.hadr_resume(rb.database))
            done.append(rb.describe())
    return replica, done, states


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
