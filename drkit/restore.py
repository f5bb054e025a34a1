"""Restore orchestration, engine-neutral: the plan to a point, and how long reading it should take.

Each engine runs a plan its own way (``Engine.restore``); what to read is its chain model's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from drkit.binding import require_key
from drkit.catalog.records import AuditRecord
from drkit.engines.base import ChainModel
from drkit.errors import ConfigError
from drkit.plans import RestorePlan
from drkit.runtime import Runtime


def make_plan(rt: Runtime, db: str, chain: ChainModel, target: datetime | None, now: datetime | None = None, *,
              position: str | None = None) -> RestorePlan:
    """The restore plan for ``db`` (by its engine's ``chain`` rules) to a time, a log position as typed
    (``--lsn``), or the latest point.

    A plan the key cannot read is refused here, before anything is fetched.
    """
    model = chain
    backups = rt.catalog.list_backups(db)
    copies = rt.catalog.all_copies(db)
    if position is not None:
        try:
            at = model.parse_position(position)
        except ValueError as exc:
            raise ConfigError(f"--lsn: {exc}") from None
        plan = model.plan_to_position(db, backups, copies, position=at, tier_order=rt.tier_order)
    else:
        plan = model.plan_restore(db, backups, copies, target=target, now=now or datetime.now(UTC),
                                  tier_order=rt.tier_order)
    require_key(rt, [p.backup for p in plan.pieces])
    return plan


def measured_rate_mib_s(verifications: Sequence[AuditRecord]) -> float | None:
    """Stored MiB/s read by the newest of these ``backup.verify`` events (oldest first) that measured one."""
    for event in reversed(verifications):
        rate = float(event.detail.get("stored_throughput_mib_s") or 0)
        if rate > 0:
            return rate
    return None


def estimated_seconds(rt: Runtime, db: str, plan: RestorePlan) -> tuple[float, str]:
    """Estimated restore time from the last verification's measured throughput (else an assumed 100 MiB/s)."""
    rate = measured_rate_mib_s(rt.catalog.audit_events(database=db, action="backup.verify"))
    if rate is not None:
        return plan.total_bytes / 2**20 / rate, f"at {rate:.0f} MiB/s measured by the last verification"
    return plan.total_bytes / 2**20 / 100, "at an assumed 100 MiB/s (no verification measured yet)"
