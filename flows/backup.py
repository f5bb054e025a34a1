"""Backup flows: full, differential and log, one database at a time.

A base backup of a kind listed in the policy's ``verify.after`` is followed by
a verification restore (a subflow); a failed backup flow sends the
``backup_failed`` notification.

Each runs holding the database's lock (``tasks.common.database_lock``), so no
other backup of that database runs meanwhile: its first step fails every
backup row a killed process left ``running`` and removes its objects.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow, flow
from prefect.client.schemas.objects import FlowRun, State

from drkit.config import load_policy
from flows.verify import verify_backup_flow
from tasks.backup import base_backup, check_prerequisites, clear_interrupted, log_backup, publish_backup_report
from tasks.common import database_lock
from tasks.notify import deliver


def _notify_failure(flow: Flow[..., Any], flow_run: FlowRun, state: State) -> None:
    params = flow_run.parameters or {}
    db, config = params.get("db", "?"), params.get("config")
    deliver("backup_failed", f"drkit: {flow.name} of {db} failed",
            f"database: {db}\nflow run: {flow_run.name} ({flow_run.id})\nwhy: {state.message}", config)


def _base(db: str, kind: str, config: str | None) -> str | None:
    check_prerequisites(db, config)
    with database_lock(db):
        clear_interrupted(db, config)  # holding the lock: any backup of db still 'running' was killed
        rec = base_backup(db, kind, config)
    if rec is None:
        return None  # skipped on this server (a replica that is not the preferred one): logged and audited
    publish_backup_report(rec)
    if kind in load_policy(config).database(db).verify.after:
        # Its own flow run (and notification); the backup stays recorded whatever it finds.
        verify_backup_flow(db=db, backup_id=rec.id, config=config, return_state=True)
    return rec.id


@flow(name="full-backup", flow_run_name="full-{db}", on_failure=[_notify_failure])
def full_backup(db: str, config: str | None = None) -> str | None:
    """Full base backup of ``db``; returns the backup id (None: this server skips it)."""
    return _base(db, "full", config)


@flow(name="differential-backup", flow_run_name="diff-{db}", on_failure=[_notify_failure])
def differential_backup(db: str, config: str | None = None) -> str | None:
    """Block-level differential against the newest full; returns the backup id (None: this server skips it)."""
    return _base(db, "diff", config)


@flow(name="log-backup", flow_run_name="log-{db}", on_failure=[_notify_failure])
def log_backup_flow(db: str, config: str | None = None) -> str | None:
    """Close the current WAL segment and ship all finished ones; None when there was nothing new."""
    check_prerequisites(db, config)
    with database_lock(db):
        clear_interrupted(db, config)
        rec = log_backup(db, config)
    if rec is None:
        return None
    publish_backup_report(rec)
    if "log" in load_policy(config).database(db).verify.after:
        verify_backup_flow(db=db, backup_id=rec.id, config=config, return_state=True)
    return rec.id


BACKUP_FLOWS: dict[str, Any] = {"full": full_backup, "diff": differential_backup, "log": log_backup_flow}
