"""Verifying SQL Server backups: prove a plan by restoring it under a scratch name and checking it.

Steps: each piece in drkit's tiers has its stored SHA-256 checked (shared with PostgreSQL:
:func:`drkit.verify.check_stored`); ``RESTORE HEADERONLY`` finds each piece the server reads itself on its
media (a set no longer there fails the run, proving nothing); ``RESTORE VERIFYONLY WITH CHECKSUM`` on every
piece, of its own set (``FILE = n``); a test
restore ``WITH MOVE`` into a scratch database; ``DBCC CHECKDB``; the policy's SQL checks; the scratch
database is dropped whatever happened. ``corrupt_pieces`` names pieces whose bytes or backup sets are
proven bad (a checksum, VERIFYONLY, or a consistency error DBCC CHECKDB reports); any other failure (access,
timeouts, tempdb full) fails the report without blaming a piece.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from datetime import UTC, datetime

from drkit.binding import require_key
from drkit.engines.sqlserver import tsql
from drkit.engines.sqlserver.chain_model import SQLSERVER_CHAIN
from drkit.engines.sqlserver.engine import SqlServerEngine, sqlserver_engine
from drkit.engines.sqlserver.errors import (
    BackupMediaError,
    CorruptionFoundError,
    RestoreTargetError,
    SqlServerError,
    scrub,
)
from drkit.engines.sqlserver.odbc import Session
from drkit.engines.sqlserver.restore import Staged, check_devices, is_native, run_restore, stage
from drkit.errors import ConfigError, DrkitError, RestoreError
from drkit.plans import RestorePlan
from drkit.runtime import Runtime
from drkit.verify import (
    CheckResult,
    VerifyReport,
    check_stored,
    record_verification,
    stored_error,
    timed,
    verify_target,
)

POSTGRES_ONLY_CHECKS = ("amcheck", "visibility")
CHECK_ERRORS = (SqlServerError,)
"""What a check against the scratch database may raise: it fails the check, not the verification."""


def scratch_name(server_db: str, now: datetime | None = None) -> str:
    stamp = f"_drkit_verify_{(now or datetime.now(UTC)):%Y%m%dT%H%M%S}"
    return server_db[: tsql.MAX_NAME_LENGTH - len(stamp)] + stamp


def verify_plan_mssql(
    rt: Runtime, db: str, engine: SqlServerEngine, plan: RestorePlan, subject: str, *, now: datetime | None = None,
) -> VerifyReport:
    """Checksums, RESTORE VERIFYONLY, a test restore WITH MOVE, DBCC CHECKDB, the policy's checks, DROP always.

    The catalog changes only where a stored copy is found missing or corrupt: that copy is recorded so,
    and the next tier's copy is checked and restored instead.
    """
    require_key(rt, [p.backup for p in plan.pieces])  # a wrong key is refused, never reported as corruption
    t0 = time.monotonic()
    report = VerifyReport(database=db, subject=subject, pieces=[p.backup.id for p in plan.pieces],
                          reaches=plan.reaches, stored_bytes=plan.total_bytes)
    checked, unreadable = check_stored(rt, [p for p in plan.pieces if not is_native(p)], report, subject)
    if report.corrupt_pieces or unreadable:
        report.error = stored_error(report.corrupt_pieces, unreadable)
        report.total_seconds = time.monotonic() - t0
        return report
    matched = {p.backup.id: p for p in checked}
    plan = replace(plan, pieces=tuple(matched.get(p.backup.id, p) for p in plan.pieces))  # the copies checked
    scratch = scratch_name(engine.settings.database, now)
    staged = Staged()
    secrets = engine.secrets
    try:
        with engine.session() as session:
            if engine.database_exists(session, scratch) is not None:
                raise RestoreTargetError(f"scratch database {scratch!r} already exists; another verification is "
                                         "running, or a previous one was interrupted: drop it and retry")
            try:
                missing = check_devices(session, plan.pieces, staged.sources, damaged_is_missing=False)
                if missing:  # gone or unreadable: nothing is proven about the backup
                    raise RestoreError("backup device(s) missing or unreadable: " + "; ".join(
                        f"{bid}: {why}" for bid, why in missing.items()))
                stage(rt, engine, plan.pieces, staged)
                report.bytes_read = staged.bytes
                _verify_only(session, plan, staged, report)
                started = time.monotonic()
                try:
                    run_restore(engine, session, plan, scratch, staged.sources)
                except BackupMediaError:
                    report.corrupt_pieces.extend(p.backup.id for p in plan.pieces)
                    raise
                report.restore_seconds = time.monotonic() - started
                report.checks.append(CheckResult("restore", True, f"restored as {scratch} WITH MOVE",
                                                 report.restore_seconds))
                report.checks.append(_checkdb(engine, session, scratch, plan, report))
                report.checks.extend(_policy_checks(rt, db, session, scratch))
            finally:
                with contextlib.suppress(SqlServerError):
                    engine.drop_database(session, scratch)
        report.passed = all(c.ok for c in report.checks)
        if not report.passed:
            report.error = "; ".join(f"{c.name}: {c.detail[:200]}" for c in report.checks if not c.ok)
    except DrkitError as exc:
        if not any(c.name == "restore" or c.name.startswith("verifyonly") and not c.ok for c in report.checks):
            report.checks.append(CheckResult("restore", False, scrub(str(exc), secrets), time.monotonic() - t0))
        report.error = scrub(f"verification failed: {exc}", secrets)
    finally:
        staged.remove()
    report.total_seconds = time.monotonic() - t0
    return report


def _checkdb(engine: SqlServerEngine, session: Session, scratch: str, plan: RestorePlan,
             report: VerifyReport) -> CheckResult:
    """DBCC CHECKDB: a reported consistency error makes the plan's pieces corrupt; any other failure
    (a timeout, tempdb or the log full) fails the check and proves nothing about the backup."""
    started = time.monotonic()
    try:
        return CheckResult("DBCC CHECKDB", True, engine.checkdb(session, scratch), time.monotonic() - started)
    except CorruptionFoundError as exc:
        report.corrupt_pieces.extend(p.backup.id for p in plan.pieces)
        return CheckResult("DBCC CHECKDB", False, str(exc), time.monotonic() - started)
    except SqlServerError as exc:
        return CheckResult("DBCC CHECKDB", False, f"did not complete, which says nothing about the backup "
                           f"(its status is unchanged): {exc}", time.monotonic() - started)


def _verify_only(session: Session, plan: RestorePlan, staged: Staged, report: VerifyReport) -> None:
    """RESTORE VERIFYONLY WITH CHECKSUM on every piece (its own set: FILE = n); BackupMediaError when one is
    rejected."""
    for piece in plan.pieces:
        b = piece.backup
        src = staged.sources[b.id]
        started = time.monotonic()
        try:
            session.run(tsql.verify_only(src.device_type, src.devices, file=src.file,
                                         checksum=bool(b.meta.get("has_backup_checksums", True))))
        except BackupMediaError as exc:
            report.corrupt_pieces.append(b.id)
            report.checks.append(CheckResult(f"verifyonly {b.id}", False, str(exc), time.monotonic() - started))
            continue
        report.checks.append(CheckResult(f"verifyonly {b.id}", True, "RESTORE VERIFYONLY WITH CHECKSUM: complete "
                                         "and readable", time.monotonic() - started))
    if report.corrupt_pieces:
        raise BackupMediaError("RESTORE VERIFYONLY rejected " + ", ".join(report.corrupt_pieces))


def _policy_checks(rt: Runtime, db: str, session: Session, scratch: str) -> list[CheckResult]:
    results = []
    for check in rt.policy.database(db).verify.checks_for(()):  # DBCC CHECKDB always runs
        if check in POSTGRES_ONLY_CHECKS or check.lower() == "checkdb":
            continue  # PostgreSQL's built-ins; DBCC CHECKDB always runs

        def run(q: str = check) -> tuple[bool, str]:
            result = session.run(tsql.in_database(scratch, q, f"check {q[:60]}"))
            value = next((row[0] for rs in result.result_sets for row in rs.rows[:1]), None)
            if value is False:
                return False, f"returned false: {q}"
            return True, f"{q} → {value}"

        results.append(timed(f"sql: {check[:60]}", run, CHECK_ERRORS))
    return results


def verify_backup_mssql(
    rt: Runtime, db: str, backup_id: str | None = None, *, engine: SqlServerEngine | None = None,
    actor: str = "drkit-verify", now: datetime | None = None,
) -> VerifyReport:
    """Verify one backup (default: the newest full) and record it verified, or corrupt when proven bad.

    A failure that proves nothing about the backup (access, timeouts) is audited and reported, and the
    backup's status is left as it was.
    """
    rt.policy.database(db)
    engine = verification_engine(rt, db, engine or sqlserver_engine(rt, db))
    backups = rt.catalog.list_backups(db)
    target = verify_target(rt, db, backups, backup_id)
    plan = SQLSERVER_CHAIN.plan_for_backup(target, backups, rt.catalog.all_copies(db), tier_order=rt.tier_order)
    report = verify_plan_mssql(rt, db, engine, plan, target.id, now=now)
    proven = report.passed or target.id in report.corrupt_pieces
    record_verification(rt, db, report, [target] if proven else [], actor)
    return report


def verification_engine(rt: Runtime, db: str, engine: SqlServerEngine) -> SqlServerEngine:
    """Where verification restores run: ``sqlserver.verify.instance_dsn_env`` names another instance's
    connection string (as dbatools' Test-DbaLastBackup -Destination), else the database's own server.

    That instance must read the same backup devices (the URL credential, the ``disk_path`` share).
    """
    env = engine.settings.verify.instance_dsn_env
    if not env:
        return engine
    dsn = rt.environ.get(env, "").strip()
    if not dsn:
        raise ConfigError(f"databases.{db}.sqlserver.verify.instance_dsn_env: environment variable {env} is not "
                          "set; export the ODBC connection string of the instance verification restores run on")
    return engine.on_instance(dsn)
