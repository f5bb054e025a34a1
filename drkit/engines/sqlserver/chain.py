"""Restore-chain planning for SQL Server: which backups, joined by LSN, reach a point in time.

PostgreSQL chains join WAL segment by segment; SQL Server chains join by the log sequence numbers
recorded in ``msdb.dbo.backupset`` (kept in each catalog record's ``meta`` as decimal strings: they are
``numeric(25,0)``; a record without them is read from its ``start_lsn``/``end_lsn`` positions). The rules,
from the backupset documentation:

* a differential belongs to the full whose ``checkpoint_lsn`` equals its
  ``differential_base_lsn`` (and whose ``backup_set_uuid`` equals its
  ``differential_base_guid``); a copy-only full is never a differential base;
* the first log after a base (full or diff) has
  ``first_lsn <= base.last_lsn < last_lsn``;
* consecutive logs join exactly: ``next.first_lsn == previous.last_lsn``;
* recovery forks: a log continues the fork its predecessor ended on
  (``first_recovery_fork_guid == previous.last_recovery_fork_guid``), and a log
  that spans a fork (a restore happened) only follows a predecessor that ended
  at or before its ``fork_point_lsn``.

Everything here is pure (records in, :class:`drkit.plans.RestorePlan` out), so flows treat both engines
alike and the rules are property-tested; :data:`SQLSERVER_CHAIN` is these rules behind
:class:`drkit.engines.base.ChainModel`. A piece is read from the cheapest tier holding a complete copy; a
backup SQL Server wrote itself (to URL, or to its own disk) and that drkit holds no copy of is read by the
server from where it is, as tier :data:`NATIVE_TIER`.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, NamedTuple

from drkit.catalog.records import RESTORABLE_STATUSES, BackupRecord, CopyRecord
from drkit.engines.sqlserver.msdb import NATIVE_FORMATS
from drkit.errors import RestorePlanError
from drkit.plans import CopyIndex, Recovery, RestorePiece, RestorePlan
from drkit.plans import fmt_time as _fmt

NATIVE_TIER = "sqlserver"
"""Pseudo tier of a piece SQL Server reads from its own device (a blob URL or a path on its disk)."""



def _int(value: Any) -> int | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return int(str(value))
    except ValueError:
        return None


def _guid(value: Any) -> str | None:
    return str(value).strip("{}").lower() if value else None


class LsnInfo(NamedTuple):
    """The chain-relevant facts of one backup, parsed from its catalog record."""

    rec: BackupRecord
    end: datetime
    first: int
    last: int
    checkpoint: int | None
    diff_base: int | None
    diff_guid: str | None
    uuid: str | None
    copy_only: bool
    first_fork: str | None
    last_fork: str | None
    fork_point: int | None

    @property
    def id(self) -> str:
        return self.rec.id

    @property
    def kind(self) -> str:
        return self.rec.kind


def lsn_info(rec: BackupRecord) -> LsnInfo | None:
    """The LSN facts of ``rec``; None when it has no end time or no LSN range (not plannable).

    The range is ``first_lsn`` / ``last_lsn`` from ``meta`` (as msdb wrote them), else the record's
    positions (``start_lsn`` / ``end_lsn``); the fork a log ends on is ``last_recovery_fork_guid``, else
    the record's ``lineage``. Lean on purpose: a retention sweep reads every record of the catalog.
    """
    end = rec.end_time
    if end is None:
        return None
    meta = rec.meta
    get = meta.get
    first, last = _int(get("first_lsn")), _int(get("last_lsn"))
    if first is None:
        first = rec.start_lsn
    if last is None:
        last = rec.end_lsn
    if first is None or last is None:
        return None
    kind = rec.kind
    base = kind != "log"
    return LsnInfo(rec, end, first, last,
                   _int(get("checkpoint_lsn")) if base else None,
                   _int(get("differential_base_lsn")) if kind == "diff" else None,
                   _guid(get("differential_base_guid")) if kind == "diff" else None,
                   _guid(get("backup_set_uuid")) if kind == "full" else None,
                   bool(get("is_copy_only")),
                   _guid(get("first_recovery_fork_guid")),
                   _guid(get("last_recovery_fork_guid")) or (rec.lineage.lower() if rec.lineage else None),
                   _int(get("fork_point_lsn")))


def is_diff_base(full: LsnInfo, diff: LsnInfo) -> bool:
    """True when ``diff`` was taken on ``full`` (LSN and GUID rule; never a copy-only full)."""
    if full.kind != "full" or diff.kind != "diff" or full.copy_only:
        return False
    if diff.diff_base is None or full.checkpoint != diff.diff_base:
        return False
    return not (diff.diff_guid and full.uuid and diff.diff_guid != full.uuid)


def fork_continues(prev: LsnInfo, log: LsnInfo) -> bool:
    """True when ``log`` may follow ``prev`` as far as recovery forks are concerned."""
    if log.first_fork and prev.last_fork and log.first_fork != prev.last_fork:
        return False
    spans = log.fork_point is not None and log.first_fork != log.last_fork
    return not (spans and log.fork_point is not None and prev.last > log.fork_point)


def follows_base(base: LsnInfo, log: LsnInfo) -> bool:
    """``log`` is a first log after ``base``: it holds the LSN the base ends at."""
    return log.first <= base.last < log.last and fork_continues(base, log)


def follows_log(prev: LsnInfo, log: LsnInfo) -> bool:
    """``log`` continues ``prev`` exactly."""
    return log.first == prev.last and log.last > log.first and fork_continues(prev, log)


class _Sources(CopyIndex):
    """Where each backup can be read from: the cheapest tier with a complete copy, else natively."""

    def has(self, b: BackupRecord) -> bool:
        return super().has(b) or is_native(b)

    def piece(self, b: BackupRecord) -> RestorePiece:
        if super().has(b):
            return super().piece(b)
        devices = b.meta.get("devices") or [{}]
        first = devices[0].get("device", "") if isinstance(devices[0], Mapping) else str(devices[0])
        return RestorePiece(backup=b, tier=NATIVE_TIER, store_key=str(first), stored_bytes=b.stored_bytes,
                            sha256=None)


class _LogGraph:
    """Logs joined by exact LSN; ``reach[log]`` is the latest end time reachable from it."""

    def __init__(self, logs: Iterable[LsnInfo]) -> None:
        self.logs = sorted(logs, key=lambda lg: (lg.first, lg.last, lg.id))
        self.firsts = [lg.first for lg in self.logs]
        self.max_span = max((lg.last - lg.first for lg in self.logs), default=0)
        self.by_first: dict[int, list[LsnInfo]] = {}
        for lg in self.logs:
            self.by_first.setdefault(lg.first, []).append(lg)
        self.reach: dict[str, datetime] = {}
        # Along a join last_lsn strictly grows, so the graph is acyclic: settle the highest last_lsn first.
        for lg in sorted(self.logs, key=lambda x: x.last, reverse=True):
            best = lg.end
            for nxt in self.nexts(lg):
                best = max(best, self.reach[nxt.id])
            self.reach[lg.id] = best

    def nexts(self, log: LsnInfo) -> list[LsnInfo]:
        return [x for x in self.by_first.get(log.last, ()) if follows_log(log, x)]

    def starts(self, base: LsnInfo) -> list[LsnInfo]:
        """Logs holding the base's last LSN (scans back only as far as the widest log could reach)."""
        found = []
        i = bisect.bisect_right(self.firsts, base.last) - 1
        while i >= 0 and self.logs[i].first >= base.last - self.max_span:
            if follows_base(base, self.logs[i]):
                found.append(self.logs[i])
            i -= 1
        return found

    def latest(self, base: LsnInfo) -> list[LsnInfo]:
        """The path from ``base`` that reaches the latest end time (fewest logs on ties)."""
        starts = self.starts(base)
        if not starts:
            return []
        goal = max(self.reach[s.id] for s in starts)
        if goal <= base.end:
            return []
        cur = min((s for s in starts if self.reach[s.id] == goal), key=lambda s: (s.last, s.id))
        path = [cur]
        while cur.end != goal:
            cur = min((n for n in self.nexts(cur) if self.reach[n.id] == goal), key=lambda n: (n.last, n.id))
            path.append(cur)
        return path

    def to_time(self, base: LsnInfo, target: datetime) -> list[LsnInfo]:
        """The fewest logs from ``base`` to the first one whose end covers ``target`` ([] if none).

        A path that stays on one recovery fork is preferred: at a time before a restore, the
        database's history is the old fork's, not the fork-spanning log written after the restore.
        """
        return self._to_time(base, target, spans=False) or self._to_time(base, target, spans=True)

    def _to_time(self, base: LsnInfo, target: datetime, *, spans: bool) -> list[LsnInfo]:
        def ok(lg: LsnInfo) -> bool:
            return self.reach[lg.id] >= target and (spans or lg.first_fork == lg.last_fork)

        level = [s for s in self.starts(base) if ok(s)]
        parent: dict[str, LsnInfo | None] = {s.id: None for s in level}
        while level:
            covering = [lg for lg in level if lg.end >= target]
            if covering:
                cur: LsnInfo | None = min(covering, key=lambda lg: (lg.end, lg.id))
                path = []
                while cur is not None:
                    path.append(cur)
                    cur = parent[cur.id]
                return path[::-1]
            nxt_level = []
            for lg in level:
                for n in self.nexts(lg):
                    if n.id not in parent and ok(n):
                        parent[n.id] = lg
                        nxt_level.append(n)
            level = nxt_level
        return []

    def to_log(self, base: LsnInfo, goal: LsnInfo) -> list[LsnInfo]:
        """The fewest logs from ``base`` ending with ``goal`` ([] if it does not join)."""
        level = [s for s in self.starts(base) if s.last <= goal.last]
        parent: dict[str, LsnInfo | None] = {s.id: None for s in level}
        while level:
            if any(lg.id == goal.id for lg in level):
                cur: LsnInfo | None = goal
                path = []
                while cur is not None:
                    path.append(cur)
                    cur = parent[cur.id]
                return path[::-1]
            nxt_level = []
            for lg in level:
                for n in self.nexts(lg):
                    if n.id not in parent and n.last <= goal.last:
                        parent[n.id] = lg
                        nxt_level.append(n)
            level = nxt_level
        return []


class Choice(NamedTuple):
    """A restore the rules choose: the full, the base (the full itself, or a diff on it), the logs after it."""

    full: LsnInfo
    base: LsnInfo
    logs: tuple[LsnInfo, ...]
    recovery: Recovery
    reaches: datetime

    @property
    def backups(self) -> list[BackupRecord]:
        """The pieces in restore order."""
        return [i.rec for i in (self.full, *((self.base,) if self.base is not self.full else ()), *self.logs)]


class LsnCatalog:
    """One database's usable backups (restorable, readable, with an LSN range) and the chain rules over them.

    :func:`plan_restore`, :func:`plan_for_backup` and the retention index
    (:class:`drkit.engines.sqlserver.restore_index.SqlServerRestoreIndex`) all choose restores here, so
    they cannot disagree.
    """

    def __init__(self, usable: Sequence[LsnInfo]) -> None:
        self.usable = list(usable)
        self.fulls = sorted((i for i in self.usable if i.kind == "full"), key=lambda f: (f.end, f.last), reverse=True)
        self._full_ends = [f.end for f in reversed(self.fulls)]
        self.diffs = [i for i in self.usable if i.kind == "diff"]
        self._diffs_on: dict[int, list[LsnInfo]] = {}
        for d in sorted(self.diffs, key=lambda d: (d.end, d.last), reverse=True):
            if d.diff_base is not None:
                self._diffs_on.setdefault(d.diff_base, []).append(d)
        self.graph = _LogGraph(i for i in self.usable if i.kind == "log")
        self._on_full: dict[str, list[LsnInfo]] = {}
        self._reach: dict[str, datetime | None] = {}
        self._walks: dict[str, tuple[list[LsnInfo], list[datetime]] | None] = {}

    def fulls_until(self, target: datetime) -> Iterator[LsnInfo]:
        """The fulls ending at or before ``target``, newest first."""
        return itertools.islice(self.fulls, len(self.fulls) - bisect.bisect_right(self._full_ends, target), None)

    def bases(self, full: LsnInfo, target: datetime | None) -> list[LsnInfo]:
        """Diffs on ``full`` at or before ``target``, newest first, then the full itself."""
        on = self._on_full.get(full.id)
        if on is None:
            candidates = self._diffs_on.get(full.checkpoint, []) if full.checkpoint is not None else []
            on = self._on_full[full.id] = [d for d in candidates if is_diff_base(full, d)]
        return [*(d for d in on if target is None or d.end <= target), full]

    def to_time(self, target: datetime) -> Choice | None:
        """The restore to ``target``: the newest full at or before it, from its newest base that reaches it
        (its end is the target, or logs join it to one that covers the target); older bases when a newer one
        does not reach. None when nothing reaches."""
        for full in self.fulls_until(target):
            for base in self.bases(full, target):
                if base.end == target:
                    return Choice(full, base, (), "immediate", target)
                reach = self.reach(base)
                if reach is not None and reach >= target:
                    return Choice(full, base, tuple(self._logs_to(base, target)), "time", target)
        return None

    def reach(self, base: LsnInfo) -> datetime | None:
        """The latest end time of the logs that join ``base`` (None: none join it)."""
        if base.id not in self._reach:
            reach = self.graph.reach
            self._reach[base.id] = max((reach[s.id] for s in self.graph.starts(base)), default=None)
        return self._reach[base.id]

    def _logs_to(self, base: LsnInfo, target: datetime) -> list[LsnInfo]:
        """``graph.to_time(base, target)`` for a target the base reaches (:meth:`reach`).

        Where the logs after the base run one by one (each joined by exactly one, the usual case) the search
        is a walk: the logs up to the first whose end covers the target. The walk is kept and extended as
        later targets ask, so a retention sweep that plans every target walks each base's logs once.
        """
        if base.id not in self._walks:
            starts = self.graph.starts(base)
            self._walks[base.id] = ([starts[0]], [starts[0].end]) if len(starts) == 1 else None
        walk = self._walks[base.id]
        if walk is None:
            return self.graph.to_time(base, target)
        logs, peak = walk  # peak[i]: the latest end among logs[: i + 1]
        while peak[-1] < target:
            nexts = self.graph.nexts(logs[-1])
            if len(nexts) != 1:  # it branches (or ends, which reach() rules out): search
                self._walks[base.id] = None
                return self.graph.to_time(base, target)
            logs.append(nexts[0])
            peak.append(max(peak[-1], nexts[0].end))
        return logs[:bisect.bisect_left(peak, target) + 1]

    def latest(self) -> Choice:
        """The restore reaching furthest (ties: the newest full and base); there must be a full."""
        best: Choice | None = None
        ceiling = max((i.end for i in self.usable), default=None)
        for full in self.fulls:
            for base in self.bases(full, None):
                logs = self.graph.latest(base)
                reach = logs[-1].end if logs else base.end
                if best is None or reach > best.reaches:
                    best = Choice(full, base, tuple(logs), "end" if logs else "immediate", reach)
            if best is not None and best.reaches == ceiling:
                break  # nothing can reach further than the newest backup there is
        assert best is not None
        return best

    def diff_full(self, diff: LsnInfo) -> LsnInfo | None:
        """The full ``diff`` was taken on (the newest, should two qualify)."""
        return next((f for f in self.fulls if is_diff_base(f, diff)), None)

    def to_log(self, log: LsnInfo) -> Choice | None:
        """The smallest restore ending with ``log`` applied in full; None when no base joins it."""
        for full in self.fulls_until(log.end):
            for base in self.bases(full, log.end):
                logs = self.graph.to_log(base, log)
                if logs:
                    return Choice(full, base, tuple(logs), "end", log.end)
        return None


def is_native(b: BackupRecord) -> bool:
    """True for a backup SQL Server wrote to its own device (a blob URL, its disk), which it can read back."""
    devices = b.meta.get("devices")
    return b.format in NATIVE_FORMATS and isinstance(devices, list) and bool(devices)


class _Catalog(LsnCatalog):
    """An :class:`LsnCatalog` of records and copies, with what plans and their errors say."""

    def __init__(self, database: str, usable: Sequence[LsnInfo], src: _Sources, corrupt: list[BackupRecord]) -> None:
        super().__init__(usable)
        self.database = database
        self.src = src
        self.corrupt = corrupt

    def plan(self, choice: Choice, target: datetime | None, why: Sequence[str]) -> RestorePlan:
        pieces = tuple(self.src.piece(b) for b in choice.backups)
        return RestorePlan(self.database, target, choice.recovery, choice.reaches, pieces,
                           (*self.why(choice.full, choice.base), *why))

    def why(self, full: LsnInfo, base: LsnInfo) -> list[str]:
        why = [f"full {full.id}: ends {_fmt(full.end)}" + (" (copy-only)" if full.copy_only else "")]
        if base is not full:
            why.append(f"diff {base.id}: the newest differential on it (differential_base_lsn = the full's "
                       f"checkpoint_lsn {full.checkpoint}), ends {_fmt(base.end)}")
        if self.corrupt:
            why.append("skipped corrupt: " + ", ".join(b.id for b in self.corrupt))
        return why


def _catalog(database: str, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord],
             tier_order: Sequence[str], *, allow: BackupRecord | None = None) -> _Catalog:
    src = _Sources(copies, tier_order)
    mine = [b for b in backups if b.database == database]
    corrupt = [b for b in mine if b.status == "corrupt" and (allow is None or b.id != allow.id)]
    usable: list[LsnInfo] = []
    for b in mine:
        if b.status not in RESTORABLE_STATUSES and not (allow is not None and b.id == allow.id):
            continue
        info = lsn_info(b)
        if info is not None and src.has(b):
            usable.append(info)
    if not any(i.kind == "full" for i in usable):
        extra = f" ({len(corrupt)} corrupt backup(s) are not used)" if corrupt else ""
        no_source = [b.id for b in mine if b.kind == "full" and b.status in RESTORABLE_STATUSES and not src.has(b)]
        if no_source:
            extra += (f"; full backup(s) {', '.join(no_source)} have no complete copy in the tiers "
                      f"{', '.join(tier_order)} and no device SQL Server could read")
        raise RestorePlanError(f"no restorable full backup of {database!r} in the catalog{extra}; run "
                               f"`drkit backup full {database}` (or `drkit import-history {database}`) first")
    return _Catalog(database, usable, src, corrupt)


def plan_restore(
    database: str,
    backups: Sequence[BackupRecord],
    copies: Sequence[CopyRecord],
    *,
    target: datetime | None,
    now: datetime,
    tier_order: Sequence[str],
) -> RestorePlan:
    """The chain that restores ``database`` to ``target`` (None: the latest point the backups reach).

    Recovery is ``immediate`` (the base alone, WITH RECOVERY), ``time`` (the last log WITH
    STOPAT = target) or ``end`` (every log applied in full).
    """
    cat = _catalog(database, backups, copies, tier_order)
    if target is None:
        latest = cat.latest()
        logs = latest.logs
        return cat.plan(latest, None, [f"{len(logs)} log backup(s) from LSN {logs[0].first} to {logs[-1].last}, "
                                       "applied in full"] if logs else [])
    if target > now:
        raise RestorePlanError(f"target {_fmt(target)} is in the future (now is {_fmt(now)})")
    earliest = min(cat.fulls, key=lambda f: f.end)
    if target < earliest.end:
        raise RestorePlanError(
            f"target {_fmt(target)} is before the earliest restorable point of {database!r}, "
            f"{_fmt(earliest.end)} (full backup {earliest.id})")
    choice = cat.to_time(target)
    if choice is not None and choice.recovery == "immediate":
        return cat.plan(choice, target, ["recovery stops at the base backup's end"])
    if choice is not None:
        logs = choice.logs
        last = logs[-1]
        if last.rec.meta.get("has_bulk_logged_data"):
            if target < last.end:
                before = choice.logs[-2].end if len(logs) > 1 else choice.base.end
                raise RestorePlanError(
                    f"cannot stop at {_fmt(target)} for {database!r}: log backup {last.id} (from {_fmt(before)} to "
                    f"{_fmt(last.end)}) holds bulk-logged changes (has_bulk_logged_data = 1, BULK_LOGGED recovery "
                    "model), and SQL Server restores such a log only to its end: pick a target at or before "
                    f"{_fmt(before)}, or at {_fmt(last.end)}")
            return cat.plan(choice._replace(recovery="end"), target, [
                f"{len(logs)} log backup(s) from LSN {logs[0].first} to {last.last}, applied in full (the last one "
                "holds bulk-logged changes and ends at the target)"])
        return cat.plan(choice, target, [f"{len(logs)} log backup(s) from LSN {logs[0].first} to {logs[-1].last}, "
                                         f"each restored WITH STOPAT = {_fmt(target)}"])
    failures = []
    first = next(cat.fulls_until(target), None)
    if first is not None:
        base = cat.bases(first, target)[0]
        latest_logs = cat.graph.latest(base)
        reached = latest_logs[-1].end if latest_logs else base.end
        ends = latest_logs[-1].last if latest_logs else base.last
        failures.append(f"from {base.kind} {base.id} the logs reach only {_fmt(reached)} (no log backup "
                        f"continues at LSN {ends})")
    newest_log = max((i.end for i in cat.usable if i.kind == "log"), default=None)
    hint = ""
    if newest_log is not None and newest_log >= target:
        hint = (f"; log backups exist past the target (up to {_fmt(newest_log)}) but do not join: a gap in the "
                "log chain (a log backup taken outside drkit, or lost); restore to a time before it, run "
                f"`drkit import-history {database}`, or take a new full backup")
    elif newest_log is not None:
        hint = f"; the latest log backup ends {_fmt(newest_log)}"
    shown = sorted((i for i in cat.usable if i.kind != "log"), key=lambda i: i.end)
    raise RestorePlanError(
        f"cannot reach {_fmt(target)} for {database!r}: " + "; ".join(failures or ["no base before it"]) + hint
        + ". Backups: " + ", ".join(f"{i.id} ({_fmt(i.end)})" for i in shown))


def plan_for_backup(
    target: BackupRecord,
    backups: Sequence[BackupRecord],
    copies: Sequence[CopyRecord],
    *,
    tier_order: Sequence[str],
) -> RestorePlan:
    """The smallest restore that proves ``target``: a full alone; a diff on its full; a log with its chain.

    ``target`` itself is used whatever its verification status (re-verifying a corrupt backup is
    allowed); what it depends on must be restorable.
    """
    if target.status not in (*RESTORABLE_STATUSES, "corrupt") or target.end_time is None:
        raise RestorePlanError(f"backup {target.id} is {target.status}; only completed backups can be verified")
    info = lsn_info(target)
    if info is None:
        raise RestorePlanError(f"backup {target.id} has no LSN range in its catalog record; it cannot be planned")
    promoted = replace(target, status="completed") if target.status == "corrupt" else target
    others = [b for b in backups if b.id != target.id]
    src = _Sources(copies, tier_order)
    if not src.has(target):
        raise RestorePlanError(f"backup {target.id} has no complete copy in the tiers {', '.join(tier_order)} "
                               "and no device SQL Server could read")
    if target.kind == "full":
        return RestorePlan(target.database, None, "immediate", info.end, (src.piece(target),),
                           (f"full {target.id} alone, WITH RECOVERY",))
    try:
        cat = _catalog(target.database, [*others, promoted], copies, tier_order, allow=promoted)
    except RestorePlanError as exc:
        raise RestorePlanError(f"{target.kind} {target.id} cannot be verified: {exc}") from None
    me = next(i for i in cat.usable if i.id == target.id)
    if target.kind == "diff":
        full = cat.diff_full(me)
        if full is None:
            raise RestorePlanError(
                f"diff {target.id} cannot be verified: no restorable full backup has checkpoint_lsn "
                f"{me.diff_base} (its differential base) in the catalog; `drkit import-history "
                f"{target.database}` imports one taken outside drkit")
        return RestorePlan(target.database, None, "immediate", me.end, (src.piece(full.rec), src.piece(target)),
                           (f"full {full.id}, then diff {target.id}, WITH RECOVERY",))
    choice = cat.to_log(me)
    if choice is None:
        raise RestorePlanError(f"log backup {target.id} is not part of any restorable chain (no full or diff joins "
                               f"it through unbroken logs up to LSN {me.first})")
    return cat.plan(choice, None, [f"{len(choice.logs)} log backup(s) up to {target.id}"])
