"""Restore plans, engine-neutral: which backups, read from which tier, reach a point.

Each engine's chain model (``drkit.engines.<engine>.chain``) makes these from catalog records; the restore
and verification orchestration, retention, status and the CLI read them without knowing the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, NamedTuple

from drkit.catalog.records import BackupRecord, CopyRecord

Recovery = Literal["immediate", "time", "lsn", "end"]


@dataclass(frozen=True)
class RestorePiece:
    backup: BackupRecord
    tier: str
    store_key: str
    stored_bytes: int
    sha256: str | None

    @property
    def role(self) -> str:
        return self.backup.kind


@dataclass(frozen=True)
class RestorePlan:
    database: str
    target_time: datetime | None
    recovery: Recovery
    reaches: datetime
    pieces: tuple[RestorePiece, ...]
    reasons: tuple[str, ...] = field(default=())
    target_lsn: int | None = None

    @property
    def full(self) -> RestorePiece:
        return self.pieces[0]

    @property
    def diff(self) -> RestorePiece | None:
        return next((p for p in self.pieces if p.role == "diff"), None)

    @property
    def logs(self) -> tuple[RestorePiece, ...]:
        return tuple(p for p in self.pieces if p.role == "log")

    @property
    def total_bytes(self) -> int:
        return sum(p.stored_bytes for p in self.pieces)


class CopyIndex:
    """Where each backup is read from: the cheapest tier (first in ``tier_order``) with a complete copy."""

    def __init__(self, copies: Sequence[CopyRecord], tier_order: Sequence[str]) -> None:
        rank = {t: i for i, t in enumerate(tier_order)}
        self._best: dict[str, CopyRecord] = {}
        for c in copies:
            if c.status != "complete" or c.tier not in rank:
                continue
            cur = self._best.get(c.backup_id)
            if cur is None or rank[c.tier] < rank[cur.tier]:
                self._best[c.backup_id] = c

    def has(self, b: BackupRecord) -> bool:
        return b.id in self._best

    def piece(self, b: BackupRecord) -> RestorePiece:
        c = self._best[b.id]
        return RestorePiece(backup=b, tier=c.tier, store_key=c.store_key, stored_bytes=c.stored_bytes,
                            sha256=c.sha256 or b.sha256)



class Need(NamedTuple):
    """Why retention must keep a backup: the latest target time whose restore reads it, and that restore's
    base (full or diff). ``latest``: a restore to the latest point reads it too."""

    until: datetime
    base: BackupRecord
    latest: bool = False


def fmt_time(t: datetime | None) -> str:
    """A time as plans and their reasons print it (seconds, ISO 8601); ``?`` when unknown."""
    return t.isoformat(timespec="seconds") if t else "?"


@dataclass
class RestoreResult:
    """What a restore produced, whatever the engine."""

    plan: RestorePlan
    location: str
    """Where the restored database is: PostgreSQL a data directory on this host, SQL Server a database name."""
    port: int | None
    running: bool
    seconds: float
    bytes_read: int
    timeline: int | None = None
    steps: list[tuple[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. a copy found missing, read from the next tier
    read_from: dict[str, str] = field(default_factory=dict)  # backup id -> tier of the copy actually read
    connect: str = ""
    """How an operator reaches the restored database (a psql line, or the server and database name)."""

    @property
    def data_dir(self) -> Path:
        """``location`` as a path (for an engine that restores into a directory)."""
        return Path(self.location)
