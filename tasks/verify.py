"""Verification tasks: the scratch restore and checks (long, not retried), and the report artifact."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from drkit import verify as core
from drkit.engines.sqlserver import operations as backup_mssql
from drkit.verify import CheckResult, VerifyReport
from tasks.common import artifact_key, runtime


@task(name="verify-backup", cache_policy=NO_CACHE)
def verify_backup(db: str, backup_id: str | None, config: str | None) -> VerifyReport:
    rt = runtime(config)
    try:
        if rt.is_sqlserver(db):
            return backup_mssql.verify_backup_mssql(rt, db, backup_id)
        return core.verify_backup(rt, db, backup_id)
    finally:
        rt.close()


@task(name="verify-chain", cache_policy=NO_CACHE)
def verify_chain(db: str, config: str | None) -> VerifyReport:
    rt = runtime(config)
    try:
        if rt.is_sqlserver(db):
            # The newest backup's own plan is the newest chain (full + diff + logs up to it).
            newest = max((b for b in rt.catalog.list_backups(db) if b.restorable),
                         key=lambda b: b.end_time or b.started_at, default=None)
            return backup_mssql.verify_backup_mssql(rt, db, newest.id if newest else None)
        return core.verify_chain(rt, db)
    finally:
        rt.close()


@task(name="validate-restored", cache_policy=NO_CACHE)
def validate_restored(db: str, port: int, config: str | None, data_dir: str) -> list[CheckResult]:
    """amcheck, visibility map and the policy's SQL checks against a running restored cluster.

    It listens only on the Unix socket in its data directory (``data_dir``), on ``port``.
    """
    rt = runtime(config)
    try:
        return core.run_checks(rt, db, port, data_dir)
    finally:
        rt.close()


@task(name="publish-verify-report", cache_policy=NO_CACHE)
def publish_verify_report(report: VerifyReport) -> None:
    create_markdown_artifact(markdown=report.markdown(), key=artifact_key(report.database, "verify-report"),
                             description=f"verification of {report.subject}: {'PASS' if report.passed else 'FAIL'}")
