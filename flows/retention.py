"""The retention sweep: plan (pure), then apply copies, moves and deletes; a table of what was done."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow
from prefect.artifacts import create_table_artifact

from tasks.tiers import apply_action, plan_retention


@flow(name="retention-sweep")
def retention_sweep(config: str | None = None, now: datetime | None = None) -> list[dict[str, str]]:
    """Apply the retention plan at ``now`` (default: the current time; set it to rehearse the future).

    Idempotent: a crash half-way, then a rerun, ends in the same state (each action is).
    """
    at = now or datetime.now(UTC)
    actions = plan_retention(at, config)
    rows = []
    for action in actions:
        if not action.changes:
            continue
        done = apply_action(action, config)
        rows.append({"backup": action.backup_id, "database": action.database, "action": action.kind,
                     "from": action.tier_from, "to": action.tier_to or "", "done": done, "reason": action.reason})
    create_table_artifact(table=rows or [{"result": f"nothing to do at {at.isoformat(timespec='seconds')}"}],
                          key="retention-sweep", description=f"retention sweep at {at.isoformat()}")
    return rows
