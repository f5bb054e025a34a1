"""Point-in-time restore flow: plan, fetch and replay, validate, report."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from drkit.errors import VerificationError
from tasks.restore import execute_restore, plan_restore, publish_restore_report, release_restored
from tasks.tiers import rearchive, start_rehydration, wait_rehydrated
from tasks.verify import validate_restored


@flow(name="restore-point-in-time", flow_run_name="restore-{db}")
def restore_point_in_time(
    db: str,
    into: str,
    target: datetime | None = None,
    keep_running: bool = False,
    port: int | None = None,
    run_checks: bool = True,
    target_lsn: str | None = None,
    config: str | None = None,
) -> dict[str, object]:
    """Restore a database to a point in time into a new place, validate it, and publish a report.

    The restore reads the newest full at or before the target, the newest differential on it and the log
    backups up to the target, each from the cheapest tier holding a good copy; recovery stops before the
    first commit after the target. The report artifact (``DB-restore-report``) says what was read from
    where, what the copy reaches and how each validation check went.

    Args:
        db: The policy's name of the database to restore.
        into: Where to restore. PostgreSQL: a new, empty directory on the worker's host (it must not
            exist yet, or be empty). SQL Server: the name of a new database on its server.
        target: Restore up to this moment (recovery stops before the first commit after it).
            Empty: the latest point the backups reach.
        keep_running: Off: stop the restored copy after validating it, leaving its data in `into`.
            On: keep it running as a new standby server (PostgreSQL: on `port`, reachable through its Unix
            socket in `into`; the report says how to connect).
        port: PostgreSQL: the port the restored cluster listens on. Empty: a free port below 32768.
        run_checks: Validate the restored copy with the policy's verification checks (amcheck,
            visibility map, SQL checks); the run fails if one fails.
        target_lsn: PostgreSQL only, instead of a target time: restore up to and including this WAL
            position (like 0/3000028).
        config: The policy file. Filled in by the deployment; leave it.
    """
    plan = plan_restore(db, target, config, target_lsn)
    archived = start_rehydration(plan, config)
    if archived:
        wait_rehydrated(archived, config)
    result = execute_restore(db, plan, into, port, True, config)
    if archived:
        rearchive(archived, config)
    checks = validate_restored(db, result, config) if run_checks else []
    running = keep_running or result.running and result.port is None
    publish_restore_report(result, checks, running=running)
    if not keep_running:
        release_restored(db, result, config)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise VerificationError(f"the database restored into {result.location} failed validation: "
                                + "; ".join(f"{c.name}: {c.detail[:200]}" for c in failed))
    return {"into": result.location, "data_dir": result.location, "port": result.port,
            "running": running, "connect": result.connect,
            "reaches": plan.reaches.isoformat(), "pieces": [p.backup.id for p in plan.pieces],
            "seconds": round(result.seconds, 2), "checks": [c.name for c in checks],
            "read_from": result.read_from, "warnings": result.warnings}
