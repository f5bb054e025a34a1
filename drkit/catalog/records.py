"""Plain, immutable values the catalog hands to the rest of drkit.

Planners (retention, restore chains, verification schedules) are pure functions over these records, so
they must not drag a database session along: an ORM object would lazy-load, expire after commit, or
silently write changes back. The catalog converts every row into one of these frozen dataclasses before
its session closes. This module deliberately imports nothing from SQLAlchemy.

All datetimes are timezone-aware UTC. Mapping fields (``meta``, ``detail``) are private copies of the
stored JSON; treat them as read-only. They are excluded from ``hash()`` so records stay hashable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

BACKUP_KINDS: tuple[str, ...] = ("full", "diff", "log")
"""``full``: a complete base backup; ``diff``: changes since its ``base_id`` full; ``log``: archived WAL."""

BACKUP_STATUSES: tuple[str, ...] = ("running", "completed", "failed", "verified", "corrupt")
"""Lifecycle: running -> completed | failed; completed -> verified | corrupt (by a verifier)."""

RESTORABLE_STATUSES: tuple[str, ...] = ("completed", "verified")
"""Statuses a restore plan may build on."""

COPY_STATUSES: tuple[str, ...] = ("pending", "complete", "deleted", "missing", "corrupt")
"""Lifecycle of one stored copy of a backup in one storage tier: pending -> complete -> deleted, or
complete -> missing | corrupt when a restore or ``catalog check`` finds its objects gone or damaged."""


@dataclass(frozen=True)
class BackupRecord:
    """One backup (full, diff or log range) of one database, in fields both engines fill.

    * ``start_lsn`` / ``end_lsn``: the engine's log positions the backup spans, as comparable ints
      (PostgreSQL: its LSNs; SQL Server: the backup set's ``first_lsn`` / ``last_lsn``, which exceed
      64 bits). Positions compare only within one ``lineage``.
    * ``base_id``: the full a differential is based on.
    * ``lineage``: the log chain link, the history a log continues: PostgreSQL's timeline as text
      (``"1"``), SQL Server's ``last_recovery_fork_guid`` (lowercase). None when unknown.
    * ``timeline``, ``start_wal``, ``end_wal``: PostgreSQL's own fields (None for SQL Server).
    * ``meta``: everything else the engine recorded; :mod:`drkit.engines.postgres.records` and
      :mod:`drkit.engines.sqlserver.records` read it as typed values.
    """

    id: str
    database: str
    kind: str
    status: str
    base_id: str | None
    timeline: int | None
    start_lsn: int | None
    end_lsn: int | None
    start_wal: str | None
    end_wal: str | None
    started_at: datetime
    finished_at: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    raw_bytes: int
    stored_bytes: int
    sha256: str | None
    format: str | None
    key_id: str | None
    error: str | None
    verified_at: datetime | None
    meta: Mapping[str, Any] = field(hash=False)
    lineage: str | None = None

    @property
    def restorable(self) -> bool:
        """True when a restore may use this backup (it completed, and no verifier found it corrupt)."""
        return self.status in RESTORABLE_STATUSES


@dataclass(frozen=True)
class CopyRecord:
    """One copy of a backup's bytes in one storage tier (e.g. ``local``, ``offsite``)."""

    id: int
    backup_id: str
    tier: str
    store_key: str
    status: str
    stored_bytes: int
    sha256: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class AuditRecord:
    """One append-only audit event: who did what to which database, and why."""

    id: int
    at: datetime
    actor: str
    action: str
    database: str | None
    subject: str | None
    detail: Mapping[str, Any] = field(hash=False)


@dataclass(frozen=True)
class HoldRecord:
    """One legal hold on a backup. A removed hold stays in the catalog as history (``removed_at`` set).

    While a hold is active, retention never deletes (nor moves away) any copy of the backup or of the
    pieces its restore needs. ``database`` is the held backup's database.
    """

    id: int
    backup_id: str
    database: str
    reason: str
    created_at: datetime
    created_by: str
    removed_at: datetime | None
    removed_by: str | None
    removed_reason: str | None

    @property
    def active(self) -> bool:
        """True until the hold is removed."""
        return self.removed_at is None


PRIMARY_SIDES: tuple[str, ...] = ("primary", "dr", "recovered")
"""Which server is a database's primary: the policy's own (``primary``), its DR replica promoted by a
failover (``dr``), or a cluster restored by corruption recovery (``recovered``)."""


@dataclass(frozen=True)
class EndpointRecord:
    """Which server is a database's primary now, and where clients connect to it (one row per database).

    ``dsn_hint``: its ``host:port`` (never credentials); ``role``: the traffic router's name for it
    (``traffic.primary`` / ``traffic.dr``, or ``recovered``); ``side``: one of :data:`PRIMARY_SIDES` (None
    in records written before the catalog knew it); ``data_dir``: its data directory when drkit manages
    it on this host. Every change is one ``endpoint.set`` audit event.
    """

    database: str
    dsn_hint: str
    role: str
    side: str | None
    data_dir: str | None
    updated_at: datetime
    updated_by: str

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON (what the Prefect Variable ``drkit_endpoint_<db>`` holds, and `drkit status`)."""
        return {"database": self.database, "side": self.side, "endpoint": self.dsn_hint, "active": self.role,
                "data_dir": self.data_dir, "updated_at": self.updated_at.isoformat(),
                "updated_by": self.updated_by}


@dataclass(frozen=True)
class BackupTally:
    """One database's backups of one kind and status, counted by the catalog (``GROUP BY kind, status``)."""

    kind: str
    status: str
    count: int
    newest_start: datetime | None
    """The latest ``started_at`` among them."""
    newest_end: datetime | None
    """The latest ``end_time`` among them (None when none has one)."""
