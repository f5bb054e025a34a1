"""Backup flows: full, differential and log, one database at a time."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.backup import base_backup, check_prerequisites, log_backup, publish_backup_report
from tasks.common import database_lock


def _base(db: str, kind: str, config: str | None) -> str:
    check_prerequisites(db, config)
    with database_lock(db):
        rec = base_backup(db, kind, config)
    publish_backup_report(rec)
    return rec.id


@flow(name="full-backup", flow_run_name="full-{db}")
def full_backup(db: str, config: str | None = None) -> str:
    """Full base backup of ``db``; returns the backup id."""
    return _base(db, "full", config)


@flow(name="differential-backup", flow_run_name="diff-{db}")
def differential_backup(db: str, config: str | None = None) -> str:
    """Block-level differential against the newest full; returns the backup id."""
    return _base(db, "diff", config)


@flow(name="log-backup", flow_run_name="log-{db}")
def log_backup_flow(db: str, config: str | None = None) -> str | None:
    """Close the current WAL segment and ship all finished ones; None when there was nothing new."""
    check_prerequisites(db, config)
    with database_lock(db):
        rec = log_backup(db, config)
    if rec is None:
        return None
    publish_backup_report(rec)
    return rec.id


BACKUP_FLOWS: dict[str, Any] = {"full": full_backup, "diff": differential_backup, "log": log_backup_flow}
