"""Copies can be recorded as ``missing`` or ``corrupt``: what a restore or ``catalog check`` found.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

A copy whose objects are gone (``missing``) or whose bytes do not match the recorded SHA-256 or fail
authentication (``corrupt``) stays in the catalog as evidence, and no planner reads it again. Only the
check constraint on ``copies.status`` changes; SQLite gets it through Alembic's batch mode (env.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "status IN ('pending', 'complete', 'deleted')"
_NEW = "status IN ('pending', 'complete', 'deleted', 'missing', 'corrupt')"


def _replace(check: str) -> None:
    with op.batch_alter_table("copies") as batch:
        batch.drop_constraint(op.f("ck_copies_status"), type_="check")
        batch.create_check_constraint(op.f("ck_copies_status"), check)


def upgrade() -> None:
    _replace(_NEW)


def downgrade() -> None:
    op.execute("UPDATE copies SET status = 'deleted' WHERE status IN ('missing', 'corrupt')")
    _replace(_OLD)
