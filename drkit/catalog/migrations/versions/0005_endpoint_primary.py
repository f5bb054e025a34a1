"""The endpoint record says which server is the database's primary: its side and its data directory.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

``endpoints`` (one row per database: where clients connect) gains

* ``side``: which server is the primary now: ``primary`` (the policy's own server), ``dr`` (its DR
  replica, promoted by a failover) or ``recovered`` (a cluster restored by corruption recovery). NULL in
  rows written before this revision (read as the primary's record they were).
* ``data_dir``: that server's data directory on this host, when drkit manages it (backups read it).

Existing rows keep their host:port and role. Downgrade drops both columns (an older drkit then backs up
the policy's server again, as it always did).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("side", sa.String(16), nullable=True))
        batch.add_column(sa.Column("data_dir", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("data_dir")
        batch.drop_column("side")
