"""Point-in-time restore flow: plan, fetch and replay, validate, report."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from drkit.config import load_policy
from drkit.errors import VerificationError
from tasks.restore import execute_restore, plan_restore, publish_restore_report, restore_sqlserver, stop_cluster
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
    """Restore ``db`` into the new directory ``into`` at ``target`` (None: latest), then validate it.

    SQL Server: ``into`` is the new database's name; the restore runs on the server itself.
    """
    if load_policy(config).database(db).engine == "sqlserver":
        return restore_sqlserver(db, into, target, config)
    plan = plan_restore(db, target, config, target_lsn)
    archived = start_rehydration(plan, config)
    if archived:
        wait_rehydrated(archived, config)
    result = execute_restore(db, plan, into, port, True, config)
    if archived:
        rearchive(archived, config)
    checks = validate_restored(db, result.port, config, str(result.data_dir)) if run_checks else []
    publish_restore_report(result, checks)
    if not keep_running:
        stop_cluster(db, str(result.data_dir), result.port, config)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise VerificationError(f"the restored cluster in {result.data_dir} failed validation: "
                                + "; ".join(f"{c.name}: {c.detail[:200]}" for c in failed))
    return {"data_dir": str(result.data_dir), "port": result.port, "running": keep_running,
            "reaches": plan.reaches.isoformat(), "pieces": [p.backup.id for p in plan.pieces],
            "seconds": round(result.seconds, 2), "checks": [c.name for c in checks],
            "read_from": result.read_from, "warnings": result.warnings}
