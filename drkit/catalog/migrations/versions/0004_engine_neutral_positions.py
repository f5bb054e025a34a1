"""Engine-neutral backup records: log positions that hold SQL Server LSNs, and the log chain link.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

* ``backups.start_lsn`` / ``end_lsn`` become *positions*: BIGINT could not hold SQL Server's
  ``numeric(25,0)`` LSNs, so they are stored as zero-padded decimal text of one width (30 digits), which
  sorts numerically in SQL on SQLite and PostgreSQL alike (``models.Position`` reads them back as ints).
  Existing PostgreSQL LSNs are padded in place.
* ``backups.lineage`` (new): the log chain link both engines fill. PostgreSQL rows get their timeline as
  text; SQL Server rows (``meta.engine`` is ``sqlserver``, or ``meta`` has ``first_lsn``) get
  ``meta.last_recovery_fork_guid`` (lowercase), and their positions from ``meta.first_lsn`` /
  ``meta.last_lsn``. ``meta`` itself is left as it was.

The SQL Server rows are found and filled in Python (JSON in SQL differs between the two dialects),
a thousand rows at a time by primary key, so a large catalog is never read into memory at once.

Downgrade: positions go back to BIGINT; SQL Server positions (and anything else beyond BIGINT) become
NULL, as they were before this revision; ``lineage`` is dropped. As in 0001, the schema is spelled out
here rather than imported from ``models.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DIGITS = 30
_BIGINT_MAX = 2**63 - 1
_BATCH = 1000
_POSITIONS = ("start_lsn", "end_lsn")

_backups = sa.table(
    "backups",
    sa.column("id", sa.String(80)),
    sa.column("start_lsn", sa.String(_DIGITS)),
    sa.column("end_lsn", sa.String(_DIGITS)),
    sa.column("lineage", sa.String(64)),
    sa.column("meta", sa.JSON()),
)


def _pad(value: Any) -> str | None:
    """``value`` (an int, or decimal text) as a stored position; None if it is no non-negative integer."""
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    digits = str(number)
    return digits.zfill(_DIGITS) if number >= 0 and len(digits) <= _DIGITS else None


def _is_sqlserver(meta: Mapping[str, Any]) -> bool:
    return meta.get("engine") == "sqlserver" or "first_lsn" in meta


def _sqlserver_rows(connection: sa.Connection) -> Iterator[list[tuple[str, Mapping[str, Any]]]]:
    """Batches of ``(id, meta)`` of the SQL Server rows, by id (keyset pages: no cursor held over updates)."""
    text_of_meta = sa.cast(_backups.c.meta, sa.Text)
    maybe = sa.or_(text_of_meta.like("%sqlserver%"), text_of_meta.like("%first_lsn%"))
    after = ""
    while True:
        page = connection.execute(
            sa.select(_backups.c.id, _backups.c.meta)
            .where(_backups.c.id > after, maybe)
            .order_by(_backups.c.id)
            .limit(_BATCH)
        ).all()
        if not page:
            return
        after = str(page[-1][0])
        batch = [(str(row_id), meta) for row_id, meta in page if isinstance(meta, Mapping) and _is_sqlserver(meta)]
        if batch:
            yield batch


def _refuse_negative_positions(connection: sa.Connection) -> None:
    found = connection.execute(
        sa.text("SELECT id FROM backups WHERE start_lsn < 0 OR end_lsn < 0 ORDER BY id LIMIT 1")
    ).scalar()
    if found is not None:
        raise RuntimeError(f"backup {found} has a negative LSN; fix or remove that row, then migrate again")


def upgrade() -> None:
    connection = op.get_bind()
    dialect = connection.dialect.name
    _refuse_negative_positions(connection)
    with op.batch_alter_table("backups") as batch:
        for name in _POSITIONS:
            batch.alter_column(
                name,
                existing_type=sa.BigInteger(),
                type_=sa.String(_DIGITS),
                existing_nullable=True,
                postgresql_using=f"lpad({name}::text, {_DIGITS}, '0')",
            )
        batch.add_column(sa.Column("lineage", sa.String(64), nullable=True))
    if dialect != "postgresql":  # SQLite copied the numbers as text; pad them (PostgreSQL did in USING)
        for name in _POSITIONS:
            column = _backups.c[name]
            padded = sa.func.printf(f"%0{_DIGITS}d", sa.cast(column, sa.Integer))
            op.execute(sa.update(_backups).where(column.is_not(None)).values({name: padded}))
    op.execute("UPDATE backups SET lineage = CAST(timeline AS VARCHAR(64)) WHERE timeline IS NOT NULL")
    update = (
        sa.update(_backups)
        .where(_backups.c.id == sa.bindparam("row_id"))
        .values(
            start_lsn=sa.bindparam("first"), end_lsn=sa.bindparam("last"), lineage=sa.bindparam("fork")
        )
    )
    for batch_rows in _sqlserver_rows(connection):
        params = []
        for row_id, meta in batch_rows:
            fork = meta.get("last_recovery_fork_guid")
            params.append({
                "row_id": row_id,
                "first": _pad(meta.get("first_lsn")),
                "last": _pad(meta.get("last_lsn")),
                "fork": str(fork).strip("{}").lower()[:64] if fork else None,
            })
        connection.execute(update, params)


def downgrade() -> None:
    connection = op.get_bind()
    dialect = connection.dialect.name
    clear = (
        sa.update(_backups)
        .where(_backups.c.id == sa.bindparam("row_id"))
        .values(start_lsn=None, end_lsn=None)
    )
    for batch_rows in _sqlserver_rows(connection):
        connection.execute(clear, [{"row_id": row_id} for row_id, _ in batch_rows])
    too_big = str(_BIGINT_MAX).zfill(_DIGITS)
    for name in _POSITIONS:
        column = _backups.c[name]
        op.execute(sa.update(_backups).where(column > sa.literal(too_big, sa.String(_DIGITS))).values({name: None}))
    with op.batch_alter_table("backups") as batch:
        batch.drop_column("lineage")
        for name in _POSITIONS:
            batch.alter_column(
                name,
                existing_type=sa.String(_DIGITS),
                type_=sa.BigInteger(),
                existing_nullable=True,
                postgresql_using=f"{name}::bigint",
            )
    if dialect != "postgresql":  # make sure SQLite holds integers, not the padded text it copied
        for name in _POSITIONS:
            column = _backups.c[name]
            op.execute(sa.update(_backups).where(column.is_not(None)).values({name: sa.cast(column, sa.Integer)}))
