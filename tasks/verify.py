"""Verification tasks: the scratch restore and checks (long, not retried), and the report artifact."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from drkit.engines import open_engine
from drkit.plans import RestoreResult
from drkit.verify import CheckResult, VerifyReport
from tasks.common import artifact_key, runtime


@task(name="verify-backup", cache_policy=NO_CACHE)
def verify_backup(db: str, backup_id: str | None, config: str | None) -> VerifyReport:
    rt = runtime(config)
    try:
        return open_engine(rt, db).verify(backup_id)
    finally:
        rt.close()


@task(name="verify-chain", cache_policy=NO_CACHE)
def verify_chain(db: str, config: str | None) -> VerifyReport:
    rt = runtime(config)
    try:
        return open_engine(rt, db).verify_chain()
    finally:
        rt.close()


@task(name="validate-restored", cache_policy=NO_CACHE)
def validate_restored(db: str, result: RestoreResult, config: str | None) -> list[CheckResult]:
    """The engine's integrity checks and the policy's SQL checks against a restored database."""
    rt = runtime(config)
    try:
        return open_engine(rt, db).validate_restored(result)
    finally:
        rt.close()


@task(name="publish-verify-report", cache_policy=NO_CACHE)
def publish_verify_report(report: VerifyReport) -> None:
    create_markdown_artifact(markdown=report.markdown(), key=artifact_key(report.database, "verify-report"),
                             description=f"verification of {report.subject}: {'PASS' if report.passed else 'FAIL'}")
