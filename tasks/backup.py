"""Backup tasks: one per step, each with its own retry policy."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from drkit import backup as core
from drkit.catalog.records import BackupRecord
from drkit.engines import open_engine
from drkit.errors import BackupSkipped
from tasks.common import artifact_key, finish_progress, progress_reporter, retry_transient, runtime


@task(name="check-prerequisites", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_transient)
def check_prerequisites(db: str, config: str | None) -> None:
    open_engine(runtime(config), db).require_ready()


@task(name="clear-interrupted", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_transient)
def clear_interrupted(db: str, config: str | None) -> list[str]:
    """Run while holding ``db``'s lock: fail the backups a killed process left ``running``, remove their objects."""
    rt = runtime(config)
    try:
        failed = core.fail_interrupted(rt, db)
    finally:
        rt.close()
    if failed:
        get_run_logger().warning("marked %d interrupted backup(s) of %s failed and removed their objects: %s",
                                 len(failed), db, ", ".join(b.id for b in failed))
    return [b.id for b in failed]


@task(name="base-backup", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=[30],
      retry_condition_fn=retry_transient)
def base_backup(db: str, kind: str, config: str | None) -> BackupRecord | None:
    """The backup's record; None when the engine skips it on this server (the reason is in the run's log)."""
    rt = runtime(config)
    report = progress_reporter(artifact_key(db, kind, "backup-progress"), f"{kind} backup of {db}")
    try:
        rec = open_engine(rt, db).take_backup("full" if kind == "full" else "diff", progress=report)
        assert rec is not None  # only a log backup may find nothing to do
    except BackupSkipped as exc:
        get_run_logger().warning("%s", exc)
        return None
    finally:
        rt.close()
    finish_progress(report)
    _log_warnings(rec)
    return rec


@task(name="log-backup", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_transient)
def log_backup(db: str, config: str | None) -> BackupRecord | None:
    rt = runtime(config)
    try:
        rec = open_engine(rt, db).take_backup("log")
    except BackupSkipped as exc:
        get_run_logger().warning("%s", exc)
        return None
    finally:
        rt.close()
    if rec is not None:
        _log_warnings(rec)
    return rec


def _log_warnings(rec: BackupRecord) -> None:
    """What the engine recorded in ``meta.warnings`` (a backup taken despite them), into the run's log."""
    for warning in rec.meta.get("warnings") or ():
        get_run_logger().warning("%s backup %s: %s", rec.kind, rec.id, warning)


@task(name="publish-backup-report", cache_policy=NO_CACHE)
def publish_backup_report(rec: BackupRecord) -> None:
    row = {
        "backup": rec.id, "kind": rec.kind, "status": rec.status,
        "positions": f"{rec.start_wal or rec.start_lsn} .. {rec.end_wal or rec.end_lsn}", "raw_bytes": rec.raw_bytes,
        "stored_bytes": rec.stored_bytes, "sha256": rec.sha256,
        "seconds": round(((rec.finished_at or rec.started_at) - rec.started_at).total_seconds(), 2),
        "covers_until": rec.end_time.isoformat() if rec.end_time else None,
    }
    for k in ("pages_changed", "pages_scanned", "segments", "warnings"):
        if k in rec.meta:
            row[k] = rec.meta[k]
    create_table_artifact(table=[row], key=artifact_key(rec.database, rec.kind, "backup"),
                          description=f"{rec.kind} backup {rec.id}")
