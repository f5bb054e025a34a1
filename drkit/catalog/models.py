"""SQLAlchemy ORM mapping of the catalog tables; private to ``drkit.catalog``.

Only :mod:`drkit.catalog.repository` (and Alembic's autogenerate, via ``Base.metadata``) use these
classes; everything outside the package receives :mod:`drkit.catalog.records` values instead. The schema
itself is owned by the migrations in ``migrations/versions``: when you change a model here, add a
migration too (``alembic revision --autogenerate`` compares against this metadata).

Datetimes go through :class:`UTCDateTime` so callers always get timezone-aware UTC values back, even on
SQLite, which stores datetimes without an offset. Log positions go through :class:`Position`, so that
both engines' positions (PostgreSQL LSNs, SQL Server's ``numeric(25,0)`` LSNs, beyond BIGINT) fit and sort
numerically in SQL on both SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from drkit.catalog.records import BACKUP_KINDS, BACKUP_STATUSES, COPY_STATUSES

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Deterministic constraint names, so later migrations (and SQLite batch mode) can refer to them."""

BACKUP_ID_LENGTH = 80
"""Width of ``backups.id`` (``{database}-{kind}-{started_at:%Y%m%dT%H%M%S%fZ}``)."""

POSITION_DIGITS = 30
"""Width of a stored log position: zero-padded decimal digits (SQL Server LSNs have at most 25)."""

LINEAGE_LENGTH = 64
"""Width of ``backups.lineage`` (a PostgreSQL timeline as text, or a SQL Server recovery fork GUID)."""

VERSION_TABLE = "drkit_catalog_version"
"""Alembic's revision table; drkit-specific so a catalog can share a database with other Alembic users."""


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC on the Python side.

    Binding a naive datetime is refused (it is ambiguous); aware values are converted to UTC before they
    are stored, so SQLite's offset-less text sorts correctly and reads back as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"catalog datetimes must be timezone-aware, got naive {value.isoformat()}")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):  # pragma: no cover - drivers always return datetime here
            raise TypeError(f"expected a datetime from the catalog, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Position(TypeDecorator[int]):
    """A log position: a non-negative int on the Python side, stored as fixed-width zero-padded decimal text.

    Text of one width sorts like the numbers it spells, so ``ORDER BY`` and comparisons in SQL are numeric
    on every backend, for values far beyond BIGINT. Negative or wider values are refused.
    """

    impl = String(POSITION_DIGITS)
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"a catalog log position must be an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"a catalog log position is never negative, got {value}")
        digits = str(value)
        if len(digits) > POSITION_DIGITS:
            raise ValueError(f"a catalog log position has at most {POSITION_DIGITS} digits, got {digits}")
        return digits.zfill(POSITION_DIGITS)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return int(value)


def position_fits(value: int | None) -> bool:
    """True when :class:`Position` can store ``value`` (None, or 0 up to :data:`POSITION_DIGITS` digits)."""
    return value is None or (not isinstance(value, bool) and 0 <= value < 10**POSITION_DIGITS)


class Base(DeclarativeBase):
    """Declarative base of the catalog schema."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Backup(Base):
    """Row of ``backups``: one full, diff or log backup and the restore range it provides."""

    __tablename__ = "backups"
    __table_args__ = (
        Index("ix_backups_database_kind_status", "database", "kind", "status"),
        CheckConstraint(_in("kind", BACKUP_KINDS), name="kind"),
        CheckConstraint(_in("status", BACKUP_STATUSES), name="status"),
    )

    id: Mapped[str] = mapped_column(String(BACKUP_ID_LENGTH), primary_key=True)
    database: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    base_id: Mapped[str | None] = mapped_column(String(BACKUP_ID_LENGTH), ForeignKey("backups.id"))
    timeline: Mapped[int | None] = mapped_column(Integer)
    start_lsn: Mapped[int | None] = mapped_column(Position())
    end_lsn: Mapped[int | None] = mapped_column(Position())
    start_wal: Mapped[str | None] = mapped_column(String(24))
    end_wal: Mapped[str | None] = mapped_column(String(24))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    start_time: Mapped[datetime | None] = mapped_column(UTCDateTime())
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime())
    raw_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    sha256: Mapped[str | None] = mapped_column(String(64))
    format: Mapped[str | None] = mapped_column(String(32))
    key_id: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    lineage: Mapped[str | None] = mapped_column(String(LINEAGE_LENGTH))


class Copy(Base):
    """Row of ``copies``: where one backup's bytes live in one storage tier."""

    __tablename__ = "copies"
    __table_args__ = (
        UniqueConstraint("backup_id", "tier"),
        CheckConstraint(_in("status", COPY_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    backup_id: Mapped[str] = mapped_column(String(BACKUP_ID_LENGTH), ForeignKey("backups.id"), index=True)
    tier: Mapped[str] = mapped_column(String(32))
    store_key: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16))
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditEvent(Base):
    """Row of ``audit_events``; the database refuses UPDATE and DELETE on this table (see migration)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    database: Mapped[str | None] = mapped_column(String(128), index=True)
    subject: Mapped[str | None] = mapped_column(String(256))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default=text("'{}'"))


class Endpoint(Base):
    """Row of ``endpoints``: which server is the database's primary now, where clients connect to it."""

    __tablename__ = "endpoints"

    database: Mapped[str] = mapped_column(String(128), primary_key=True)
    dsn_hint: Mapped[str] = mapped_column(String(512))
    role: Mapped[str] = mapped_column(String(32))
    side: Mapped[str | None] = mapped_column(String(16))  # primary / dr / recovered (migration 0005)
    data_dir: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(256))


class Hold(Base):
    """Row of ``holds``: a legal hold on one backup; removing it keeps the row (``removed_*`` set)."""

    __tablename__ = "holds"
    __table_args__ = (Index("ix_holds_backup_id_removed_at", "backup_id", "removed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    backup_id: Mapped[str] = mapped_column(String(BACKUP_ID_LENGTH), ForeignKey("backups.id"))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(256))
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    removed_by: Mapped[str | None] = mapped_column(String(256))
    removed_reason: Mapped[str | None] = mapped_column(Text)
