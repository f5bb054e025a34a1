"""Initial catalog schema: backups, copies, audit_events (append-only), endpoints.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

The table definitions are spelled out here rather than imported from ``models.py``: a migration is a
frozen snapshot of the schema at one revision, and must keep producing that schema after the models move
on.

``audit_events`` is append-only, enforced by the database itself so that no code path (nor an operator
with a SQL shell and the catalog's credentials) can rewrite history by accident: triggers refuse UPDATE
and DELETE (and TRUNCATE on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_APPEND_ONLY = "audit_events is append-only"

_SQLITE_TRIGGERS = (
    "audit_events_no_update",
    "audit_events_no_delete",
)

_PG_FUNCTION = "drkit_audit_events_append_only"
_PG_TRIGGERS = (
    "audit_events_no_update_delete",
    "audit_events_no_truncate",
)


def _tz() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "backups",
        sa.Column("id", sa.String(80), nullable=False),
        sa.Column("database", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("base_id", sa.String(80), nullable=True),
        sa.Column("timeline", sa.Integer(), nullable=True),
        sa.Column("start_lsn", sa.BigInteger(), nullable=True),
        sa.Column("end_lsn", sa.BigInteger(), nullable=True),
        sa.Column("start_wal", sa.String(24), nullable=True),
        sa.Column("end_wal", sa.String(24), nullable=True),
        sa.Column("started_at", _tz(), nullable=False),
        sa.Column("finished_at", _tz(), nullable=True),
        sa.Column("start_time", _tz(), nullable=True),
        sa.Column("end_time", _tz(), nullable=True),
        sa.Column("raw_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("format", sa.String(32), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("verified_at", _tz(), nullable=True),
        sa.Column("meta", sa.JSON(), server_default=sa.text("'{}'"), nullable=False),
        sa.CheckConstraint("kind IN ('full', 'diff', 'log')", name=op.f("ck_backups_kind")),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'failed', 'verified', 'corrupt')",
            name=op.f("ck_backups_status"),
        ),
        sa.ForeignKeyConstraint(["base_id"], ["backups.id"], name=op.f("fk_backups_base_id_backups")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backups")),
    )
    op.create_index(op.f("ix_backups_database"), "backups", ["database"])
    op.create_index("ix_backups_database_kind_status", "backups", ["database", "kind", "status"])

    op.create_table(
        "copies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("backup_id", sa.String(80), nullable=False),
        sa.Column("tier", sa.String(32), nullable=False),
        sa.Column("store_key", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("created_at", _tz(), nullable=False),
        sa.Column("updated_at", _tz(), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'complete', 'deleted')", name=op.f("ck_copies_status")),
        sa.ForeignKeyConstraint(["backup_id"], ["backups.id"], name=op.f("fk_copies_backup_id_backups")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_copies")),
        sa.UniqueConstraint("backup_id", "tier", name=op.f("uq_copies_backup_id_tier")),
    )
    op.create_index(op.f("ix_copies_backup_id"), "copies", ["backup_id"])

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", _tz(), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("database", sa.String(128), nullable=True),
        sa.Column("subject", sa.String(256), nullable=True),
        sa.Column("detail", sa.JSON(), server_default=sa.text("'{}'"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_database"), "audit_events", ["database"])

    op.create_table(
        "endpoints",
        sa.Column("database", sa.String(128), nullable=False),
        sa.Column("dsn_hint", sa.String(512), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("updated_at", _tz(), nullable=False),
        sa.Column("updated_by", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("database", name=op.f("pk_endpoints")),
    )

    _create_append_only_triggers()


def _create_append_only_triggers() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        for name, event in zip(_SQLITE_TRIGGERS, ("UPDATE", "DELETE"), strict=True):
            body = f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
            op.execute(f"CREATE TRIGGER {name} BEFORE {event} ON audit_events {body}")
    elif dialect == "postgresql":
        op.execute(
            f"CREATE FUNCTION {_PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{_APPEND_ONLY}' USING ERRCODE = 'restrict_violation'; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {_PG_TRIGGERS[0]} BEFORE UPDATE OR DELETE ON audit_events "
            f"FOR EACH ROW EXECUTE FUNCTION {_PG_FUNCTION}()"
        )
        op.execute(
            f"CREATE TRIGGER {_PG_TRIGGERS[1]} BEFORE TRUNCATE ON audit_events "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {_PG_FUNCTION}()"
        )
    else:
        raise NotImplementedError(
            f"the drkit catalog supports SQLite and PostgreSQL, not {dialect}: "
            "audit_events could not be made append-only"
        )


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    elif dialect == "postgresql":
        for name in _PG_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON audit_events")
        op.execute(f"DROP FUNCTION IF EXISTS {_PG_FUNCTION}()")
    op.drop_table("endpoints")
    op.drop_index(op.f("ix_audit_events_database"), table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_index(op.f("ix_copies_backup_id"), table_name="copies")
    op.drop_table("copies")
    op.drop_index("ix_backups_database_kind_status", table_name="backups")
    op.drop_index(op.f("ix_backups_database"), table_name="backups")
    op.drop_table("backups")
