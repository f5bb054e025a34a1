"""SQL Server restore chains indexed once per database, for a retention sweep.

:class:`SqlServerRestoreIndex` answers what :mod:`drkit.retention` asks of restore chains with the very
rules :func:`drkit.engines.sqlserver.chain.plan_restore` plans with (one
:class:`drkit.engines.sqlserver.chain.LsnCatalog`, built once), by planning every target where a plan
can change: a plan compares its target only with backups' end times, so between two consecutive end times
it is the same plan, and the latest target of such a stretch is the one just before the next end time.
Plain rather than clever: a few planning steps per backup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta

from drkit.catalog.records import RESTORABLE_STATUSES, BackupRecord
from drkit.engines.sqlserver.chain import LsnCatalog, LsnInfo, is_native, lsn_info
from drkit.plans import Need

_TICK = timedelta(microseconds=1)
_RESTORABLE = frozenset(RESTORABLE_STATUSES)
_VERIFIABLE = frozenset((*RESTORABLE_STATUSES, "corrupt"))


class SqlServerRestoreIndex:
    """Restore chains of one database over its usable backups, as plan_restore plans them
    (:class:`drkit.engines.base.RestoreIndex`).

    Usable: restorable, with an LSN range, and a copy (``has_copy(id)`` true) or a device SQL Server reads
    itself. The newest verified full counts only backups with a copy: it is about keeping one.
    """

    def __init__(self, backups: Iterable[BackupRecord], has_copy: Callable[[str], object]) -> None:
        self.has_copy = has_copy
        self.newest_verified_full: BackupRecord | None = None
        newest_end: datetime | None = None
        usable: list[LsnInfo] = []
        for b in backups:
            end = b.end_time
            if end is None or b.status not in _RESTORABLE:
                continue
            copy = bool(has_copy(b.id))
            if b.kind == "full" and b.status == "verified" and copy and (newest_end is None or end > newest_end):
                self.newest_verified_full, newest_end = b, end
            if copy or is_native(b):
                info = lsn_info(b)
                if info is not None:
                    usable.append(info)
        self.catalog = LsnCatalog(usable)

    def needs(self, now: datetime, since: datetime) -> dict[str, Need]:
        """For every backup a target in ``[since, now]`` (or the latest point) needs: the latest such
        target, and its base."""
        cat = self.catalog
        out: dict[str, Need] = {}
        if not cat.fulls:
            return out
        ends = {i.end for i in cat.usable if since <= i.end <= now}
        targets = sorted({since, now, *ends, *(t - _TICK for t in ends if t - _TICK >= since)})
        for target in targets:  # ascending: the last plan reading a backup is its latest
            choice = cat.to_time(target)
            if choice is None:
                continue
            need = Need(target, choice.base.rec)
            for b in choice.backups:
                out[b.id] = need
        latest = cat.latest()
        for b in latest.backups:
            was = out.get(b.id)
            out[b.id] = Need(max(latest.reaches, was.until) if was else latest.reaches,
                             was.base if was else latest.base.rec, True)
        return out

    def chain_of(self, b: BackupRecord, by_id: Mapping[str, BackupRecord]) -> list[BackupRecord]:
        """What :func:`drkit.engines.sqlserver.chain.plan_for_backup` reads to restore ``b``'s own
        point: a full alone; a diff on its full; a log with its chain. ``[b]`` when that does not plan."""
        if b.status not in _VERIFIABLE or not (self.has_copy(b.id) or is_native(b)):
            return [b]
        me = lsn_info(b)
        if me is None or b.kind == "full":
            return [b]
        cat = self.catalog
        if b.status not in _RESTORABLE:  # planned as if it were (re-verifying a corrupt backup)
            cat = LsnCatalog([*cat.usable, me])
        if b.kind == "diff":
            full = cat.diff_full(me)
            return [b] if full is None else [full.rec, b]
        choice = cat.to_log(me)
        return [b] if choice is None else choice.backups
