"""SQL Server's chain model: the planner in ``chain.py`` and the retention index in ``restore_index.py``
behind :class:`drkit.engines.base.ChainModel`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from drkit.catalog.records import BackupRecord, CopyRecord
from drkit.engines.base import RestoreIndex
from drkit.engines.sqlserver.chain import plan_for_backup, plan_restore
from drkit.engines.sqlserver.restore_index import SqlServerRestoreIndex
from drkit.errors import RestorePlanError
from drkit.plans import RestorePlan


class SqlServerChainModel:
    """SQL Server's restore-chain rules (:class:`drkit.engines.base.ChainModel`): bases and log backups
    joined by the LSNs msdb records; positions are decimal LSNs (``34000000012300001``)."""

    def plan_restore(self, database: str, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord], *,
                     target: datetime | None, now: datetime, tier_order: Sequence[str]) -> RestorePlan:
        return plan_restore(database, backups, copies, target=target, now=now, tier_order=tier_order)

    def plan_to_position(self, database: str, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord],
                         *, position: int, tier_order: Sequence[str]) -> RestorePlan:
        raise RestorePlanError(f"SQL Server restores of {database!r} stop at a time, not at a log position "
                               f"(LSN {position}); give a target time (--to TIME) instead")

    def plan_for_backup(self, target: BackupRecord, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord],
                        *, tier_order: Sequence[str]) -> RestorePlan:
        return plan_for_backup(target, backups, copies, tier_order=tier_order)

    def index(self, backups: Iterable[BackupRecord], has_copy: Callable[[str], object]) -> RestoreIndex:
        """Usable here: restorable, with an LSN range, and a copy (``has_copy(id)``) or a device SQL Server
        reads itself, as :func:`plan_restore` counts them."""
        return SqlServerRestoreIndex(backups, has_copy)

    def parse_position(self, text: str) -> int:
        value = text.strip()
        if not value.isdigit():
            raise ValueError(f"not a SQL Server LSN: {text!r} (expected a decimal number like 34000000012300001)")
        return int(value)

    def format_position(self, position: int) -> str:
        return str(position)


SQLSERVER_CHAIN = SqlServerChainModel()
"""The SQL Server chain model (``drkit.engines.chain_model("sqlserver")``)."""
