"""Point-in-time restore flow: plan, fetch and replay, report."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from tasks.restore import execute_restore, plan_restore, publish_restore_report


@flow(name="restore-point-in-time", flow_run_name="restore-{db}")
def restore_point_in_time(
    db: str,
    into: str,
    target: datetime | None = None,
    port: int | None = None,
    keep_running: bool = False,
    config: str | None = None,
) -> dict[str, object]:
    """Restore ``db`` into the new directory ``into`` at ``target`` (None: latest)."""
    plan = plan_restore(db, target, config)
    result = execute_restore(db, plan, into, port, keep_running, config)
    publish_restore_report(result)
    return {"data_dir": str(result.data_dir), "port": result.port, "running": result.running,
            "reaches": plan.reaches.isoformat(), "pieces": [p.backup.id for p in plan.pieces],
            "seconds": round(result.seconds, 2)}
