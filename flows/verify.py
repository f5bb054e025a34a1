"""Verification flows: one backup (after each full, per policy) and the newest chain end to end (daily)."""

from __future__ import annotations

from prefect import flow

from drkit.errors import VerificationError
from tasks.notify import notify
from tasks.verify import publish_verify_report, verify_backup, verify_chain


@flow(name="verify-backup", flow_run_name="verify-{db}")
def verify_backup_flow(db: str, backup_id: str | None = None, config: str | None = None) -> dict[str, object]:
    """Restore one backup (default: the newest full) into a scratch cluster and check it.

    Checks every piece's stored SHA-256, restores into the policy's scratch directory, runs the policy's
    verification checks and always tears the scratch copy down. Pass: the backup is marked verified.
    Fail: it is marked corrupt (restores never use it again), `backup_failed` is notified and the run fails.
    The report artifact is ``DB-verify-report``.

    Args:
        db: The policy's name of the database whose backup to verify.
        backup_id: The backup to verify (`drkit backups DB` lists them); a differential is verified with its
            full, a log backup with its chain. Empty: the newest full.
        config: The policy file. Filled in by the deployment; leave it.
    """
    report = verify_backup(db, backup_id, config)
    publish_verify_report(report)
    if not report.passed:
        notify("backup_failed", f"drkit: backup {report.subject} of {db} failed verification",
               f"database: {db}\nbackup: {report.subject}\nnow marked corrupt; it will not be used for restores.\n"
               f"why: {report.error}", config)
        raise VerificationError(f"backup {report.subject} of {db} failed verification and is marked corrupt: "
                                f"{report.error}")
    return report.summary()


@flow(name="verify-chain", flow_run_name="verify-chain-{db}")
def verify_latest_chain(db: str, config: str | None = None) -> dict[str, object]:
    """Restore the newest chain (full + diff + logs to latest) and check it end to end.

    Args:
        db: The policy's name of the database whose newest chain to verify.
        config: The policy file. Filled in by the deployment; leave it.
    """
    report = verify_chain(db, config)
    publish_verify_report(report)
    if not report.passed:
        notify("verify_failed", f"drkit: the newest restore chain of {db} failed verification",
               f"database: {db}\nchain: {', '.join(report.pieces)}\nwhy: {report.error}", config)
        raise VerificationError(f"the newest restore chain of {db} failed verification: {report.error}")
    return report.summary()
