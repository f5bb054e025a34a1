"""PostgreSQL's chain model: the planner in ``chain.py`` and the retention index in ``restore_index.py``
behind :class:`drkit.engines.base.ChainModel`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from drkit.catalog.records import BackupRecord, CopyRecord
from drkit.engines.base import RestoreIndex
from drkit.engines.postgres.chain import plan_for_backup, plan_restore, plan_restore_to_lsn
from drkit.engines.postgres.lsn import format_lsn, parse_lsn
from drkit.engines.postgres.restore_index import PostgresRestoreIndex
from drkit.plans import RestorePlan


class PostgresChainModel:
    """PostgreSQL's restore-chain rules (:class:`drkit.engines.base.ChainModel`): bases joined to log backups
    WAL segment by segment, on one timeline; positions are LSNs (``0/3000028``)."""

    def plan_restore(self, database: str, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord], *,
                     target: datetime | None, now: datetime, tier_order: Sequence[str]) -> RestorePlan:
        return plan_restore(database, backups, copies, target=target, now=now, tier_order=tier_order)

    def plan_to_position(self, database: str, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord],
                         *, position: int, tier_order: Sequence[str]) -> RestorePlan:
        return plan_restore_to_lsn(database, backups, copies, target_lsn=position, tier_order=tier_order)

    def plan_for_backup(self, target: BackupRecord, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord],
                        *, tier_order: Sequence[str]) -> RestorePlan:
        return plan_for_backup(target, backups, copies, tier_order=tier_order)

    def index(self, backups: Iterable[BackupRecord], has_copy: Callable[[str], object]) -> RestoreIndex:
        return PostgresRestoreIndex(backups, has_copy)

    def parse_position(self, text: str) -> int:
        return parse_lsn(text)

    def format_position(self, position: int) -> str:
        return format_lsn(position)


POSTGRES_CHAIN = PostgresChainModel()
"""The PostgreSQL chain model (``drkit.engines.chain_model("postgres")``)."""
