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
    port: int | None = None,
    keep_running: bool = False,
    config: str | None = None,
    target_lsn: str | None = None,
    run_checks: bool = True,
) -> dict[str, object]:
    """Restore ``db`` into ``into`` at ``target`` (None: latest), then validate it.

    ``into`` is where the engine restores to: PostgreSQL a new, empty directory on this host (the cluster
    listens on its Unix socket only); SQL Server the name of a new database on its server.
    """
    plan = plan_restore(db, target, config, target_lsn)
    archived = start_rehydration(plan, config)
    if archived:
        wait_rehydrated(archived, config)
    result = execute_restore(db, plan, into, port, True, config)
    if archived:
        rearchive(archived, config)
    checks = validate_restored(db, result, config) if run_checks else []
    publish_restore_report(result, checks)
    if not keep_running:
        release_restored(db, result, config)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise VerificationError(f"the database restored into {result.location} failed validation: "
                                + "; ".join(f"{c.name}: {c.detail[:200]}" for c in failed))
    return {"into": result.location, "data_dir": result.location, "port": result.port,
            "running": keep_running or result.running and result.port is None, "connect": result.connect,
            "reaches": plan.reaches.isoformat(), "pieces": [p.backup.id for p in plan.pieces],
            "seconds": round(result.seconds, 2), "checks": [c.name for c in checks],
            "read_from": result.read_from, "warnings": result.warnings}
