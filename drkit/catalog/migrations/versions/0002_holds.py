"""Legal holds: one row per hold on a backup; a removed hold stays as history.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02

A hold is active while ``removed_at`` is NULL. Removing it sets ``removed_at``, ``removed_by`` and
``removed_reason`` instead of deleting the row, so the catalog answers "what was held, by whom, why, and
until when" long after the hold ends (the audit trail has the same facts as ``hold.add`` and
``hold.remove`` events). As in 0001, the table is spelled out rather than imported from ``models.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tz() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "holds",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("backup_id", sa.String(80), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", _tz(), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("removed_at", _tz(), nullable=True),
        sa.Column("removed_by", sa.String(256), nullable=True),
        sa.Column("removed_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["backup_id"], ["backups.id"], name=op.f("fk_holds_backup_id_backups")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
    )
    op.create_index("ix_holds_backup_id_removed_at", "holds", ["backup_id", "removed_at"])


def downgrade() -> None:
    op.drop_index("ix_holds_backup_id_removed_at", table_name="holds")
    op.drop_table("holds")
