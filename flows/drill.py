"""The DR drill flow: restore the newest chain into scratch, validate, measure RTO/RPO against the policy."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow

from drkit import drill
from drkit.config import load_policy
from drkit.errors import VerificationError
from drkit.plans import RestoreResult
from drkit.verify import CheckResult
from tasks.common import record
from tasks.drill import discard_scratch, publish_drill_report, scratch_location
from tasks.notify import notify
from tasks.restore import execute_restore, plan_restore
from tasks.tiers import rearchive, start_rehydration, wait_rehydrated
from tasks.verify import validate_restored

ACTOR = "drkit-drill"


@flow(name="dr-drill", flow_run_name="dr-drill-{db}")
def dr_drill(db: str, config: str | None = None) -> dict[str, Any]:
    """Rehearse a recovery: restore the newest chain to its newest point into a scratch copy and time it.

    The drill plans the restore a `drkit restore DB` to the latest point would run (rehydrating archived
    pieces first), restores into a new place under the policy's scratch directory, runs the verification
    checks on it, and always removes it afterwards. RTO is the time from the drill's start to a writable,
    validated copy; RPO is how far before the start the restored data ends. Both are compared with the
    database's `rto_target` and `rpo_target`, recorded in the catalog's audit (`drill.completed`) and
    published as the `DB-dr-drill` artifact. A missed target notifies `drill_missed`; a drill that
    cannot restore or validate a copy records `drill.failed`, notifies `drill_failed` and fails the run.

    Args:
        db: The policy's name of the database to drill.
        config: The policy file. Filled in by the deployment; leave it.
    """
    cfg = load_policy(config).database(db)
    started = datetime.now(UTC)
    t0 = time.monotonic()

    def now() -> datetime:  # measured on the monotonic clock, reported as wall-clock times
        return started + timedelta(seconds=time.monotonic() - t0)

    location: str | None = None
    restored: RestoreResult | None = None
    checks: list[CheckResult] = []
    try:
        location = scratch_location(db, config)
        plan = plan_restore(db, None, config)
        archived = start_rehydration(plan, config)
        if archived:
            wait_rehydrated(archived, config)
        restored = execute_restore(db, plan, location, None, True, config)
        writable_at = now()
        if archived:
            rearchive(archived, config)
        checks = validate_restored(db, restored, config)
        validated_at = now()
        error = drill.failed_checks_error(restored.location, checks)
        if error:
            raise VerificationError(error)
    except Exception as exc:
        record(db, drill.FAILED, ACTOR, drill.failed_detail(exc), config)
        publish_drill_report(db, drill.failed_markdown(db, started, exc, checks), f"DR drill of {db}: FAILED")
        notify(drill.EVENT_FAILED, f"drkit: the DR drill of {db} failed",
               f"database: {db}\nno writable, validated copy could be restored: {drill.failure_text(exc)}\n"
               "see the README's 'DR drills' section for what to do", config)
        raise
    finally:
        if location is not None:
            discard_scratch(db, location, restored, config)
    result = drill.DrillResult(
        database=db, backup_id=plan.full.backup.id, pieces=tuple(p.backup.id for p in plan.pieces),
        location=restored.location, started=started, writable_at=writable_at, validated_at=validated_at,
        reached=plan.reaches, rto_target=cfg.rto_target, rpo_target=cfg.rpo_target, checks=tuple(checks))
    record(db, drill.COMPLETED, ACTOR, result.audit_detail(), config)
    publish_drill_report(db, result.markdown(), f"DR drill of {db}: targets {'met' if result.met else 'MISSED'}")
    if not result.met:
        notify(drill.EVENT_MISSED, *drill.notice(result), config)
    return result.summary()
