"""PostgreSQL restore chains indexed once per database, for a retention sweep.

:class:`PostgresRestoreIndex` answers what :mod:`drkit.retention` asks of restore chains (which backups
a restore to a target inside a window reads, and until when) with the rules of
:func:`drkit.engines.postgres.chain.plan_restore`, without planning each target: the catalog is split
into *stretches* of targets that restore from one base, and each base's log chain is walked once over
the logs sorted by segment. The property tests hold it to ``plan_restore``'s answers.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from itertools import accumulate
from typing import NamedTuple

from drkit.catalog.records import RESTORABLE_STATUSES, BackupRecord
from drkit.engines.postgres.chain import start_segment
from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE, segment_span
from drkit.plans import Need

_TICK = timedelta(microseconds=1)
_RESTORABLE = frozenset(RESTORABLE_STATUSES)
_VERIFIABLE = frozenset((*RESTORABLE_STATUSES, "corrupt"))


class _Logs:
    """The usable log backups of one database and timeline, sorted by first segment for chain walks.

    Parallel lists rather than a tuple per log: millions of small tracked objects would wake the cyclic
    garbage collector over and over during a sweep.
    """

    def __init__(self) -> None:
        self.first: list[int] = []
        self.last: list[int] = []
        self.end: list[datetime] = []
        self.rec: list[BackupRecord] = []

    def index(self) -> None:
        n = len(self.first)
        self.order = list(range(n))  # catalog order, which breaks ties as plan_restore's max() does
        if n > 1 and self.first[0] > self.first[-1]:  # the catalog lists newest first
            for column in (self.first, self.last, self.end, self.rec, self.order):
                column.reverse()
        if self.first != sorted(self.first):
            perm = sorted(range(n), key=self.first.__getitem__)
            self.first = [self.first[i] for i in perm]
            self.last = [self.last[i] for i in perm]
            self.end = [self.end[i] for i in perm]
            self.rec = [self.rec[i] for i in perm]
            self.order = [self.order[i] for i in perm]
        self.reach = list(accumulate(self.last, max))  # running max of last segments
        self.pos = dict(zip(reversed(self.first), range(n - 1, -1, -1), strict=True))  # first index per start

    def _covering(self, segno: int, hint: int) -> list[int]:
        """The logs plan_restore may pick for ``segno``: those starting there, else those holding it."""
        first = self.first
        n = len(first)
        i = hint if hint < n and first[hint] == segno else self.pos.get(segno, -1)
        if i >= 0:  # the usual case: the next log starts where the last one ended
            j = i + 1
            while j < n and first[j] == segno:
                j += 1
            return list(range(i, j))
        found = []
        i = bisect_right(first, segno) - 1
        while i >= 0 and self.reach[i] >= segno:
            if self.last[i] >= segno:
                found.append(i)
            i -= 1
        return found

    def _best(self, found: list[int]) -> int:
        """plan_restore's choice: max by (last segment, end time); the first such in catalog order."""
        last, end, order = self.last, self.end, self.order
        best = found[0]
        for i in found[1:]:
            if (last[i], end[i]) > (last[best], end[best]) or (
                    (last[i], end[i]) == (last[best], end[best]) and order[i] < order[best]):
                best = i
        return best

    def steps(self, base: BackupRecord, until: datetime | None) -> list[int]:
        """The log chain :func:`drkit.engines.postgres.chain.plan_restore` joins to ``base`` up to ``until``
        (as indices here), without rescanning the logs."""
        need = start_segment(base)
        chain: list[int] = []
        first, last, ends = self.first, self.last, self.end
        n = len(first)
        i = -1
        while True:
            if until is not None and i >= 0 and ends[i] >= until:
                return chain
            j = i + 1
            if j < n and first[j] == need and (j + 1 == n or first[j + 1] != need):
                i = j  # the usual case: exactly one log starts where the last one ended, and it is next
            else:
                found = self._covering(need, j)
                if not found:
                    return chain
                i = found[0] if len(found) == 1 else self._best(found)
            chain.append(i)
            need = last[i] + 1


class _Stretch(NamedTuple):
    """Targets from ``start`` until the next stretch restore from ``full`` (and ``diff``)."""

    start: datetime
    full: BackupRecord
    diff: BackupRecord | None


class PostgresRestoreIndex:
    """Restore chains of one database over its usable backups, as plan_restore would plan them
    (:class:`drkit.engines.base.RestoreIndex`)."""

    def __init__(self, backups: Iterable[BackupRecord], has_copy: Callable[[str], object]) -> None:
        """Index the usable backups among ``backups``: restorable, with a copy (``has_copy(id)`` true),
        and what plan_restore asks of each kind."""
        self.has_copy = has_copy
        self.logs: dict[int | None, _Logs] = {}
        self.newest_verified_full: BackupRecord | None = None
        newest_end: datetime | None = None
        fulls: list[BackupRecord] = []
        diffs: dict[str, list[tuple[datetime, int, BackupRecord]]] = {}
        logs: _Logs | None = None
        timeline: int | None = None
        size = DEFAULT_SEGMENT_SIZE
        restorable = _RESTORABLE
        for order, b in enumerate(backups):
            end = b.end_time
            if end is None or b.status not in restorable or not has_copy(b.id):
                continue
            kind = b.kind
            if kind == "log":
                start, stop = b.start_wal, b.end_wal
                if not start or not stop or b.start_lsn is None:
                    continue
                seg_size = b.meta.get("segment_size", DEFAULT_SEGMENT_SIZE)
                if seg_size != size:
                    size = int(seg_size)
                span = segment_span(start, stop, size)  # chain.log_segments, inline: this runs per log
                if span is None or span[1] < span[0]:
                    continue  # not segment names: no chain uses it
                lo, hi = span
                if logs is None or b.timeline != timeline:
                    timeline = b.timeline
                    logs = self.logs.get(timeline)
                    if logs is None:
                        logs = self.logs[timeline] = _Logs()
                logs.first.append(lo)
                logs.last.append(hi)
                logs.end.append(end)
                logs.rec.append(b)
            elif kind == "full":
                if b.status == "verified" and (newest_end is None or end > newest_end):
                    self.newest_verified_full, newest_end = b, end  # needs no LSNs, chains do
                if b.start_lsn is not None:
                    fulls.append(b)
            elif kind == "diff" and b.base_id is not None and b.start_lsn is not None:
                diffs.setdefault(b.base_id, []).append((end, order, b))
        for logs in self.logs.values():
            logs.index()
        first_full: dict[datetime, BackupRecord] = {}
        for f in fulls:  # plan_restore: among fulls ending at the same instant, the first in catalog order
            assert f.end_time is not None
            first_full.setdefault(f.end_time, f)
        diff_ends: dict[str, list[datetime]] = {}
        for full_id, group in diffs.items():
            group.sort(key=lambda d: (d[0], d[1]))
            diff_ends[full_id] = [d[0] for d in group]
        times = sorted({*first_full, *(d[0] for group in diffs.values() for d in group)})
        self.stretches: list[_Stretch] = []
        full: BackupRecord | None = None
        for t in times:
            full = first_full.get(t, full)
            if full is None:
                continue
            diff = None
            ends = diff_ends.get(full.id)
            if ends:
                n = bisect_right(ends, t)
                if n:
                    diff = diffs[full.id][bisect_left(ends, ends[n - 1])][2]
            last = self.stretches[-1] if self.stretches else None
            if last is None or last.full is not full or last.diff is not diff:
                self.stretches.append(_Stretch(t, full, diff))
        self.starts = [s.start for s in self.stretches]

    def walk(self, base: BackupRecord, until: datetime | None) -> list[BackupRecord]:
        logs = self.logs.get(base.timeline)
        return [logs.rec[i] for i in logs.steps(base, until)] if logs is not None else []

    def needs(self, now: datetime, since: datetime) -> dict[str, Need]:
        """For every backup a target in ``[since, now]`` (or the latest point) needs: the latest such
        target, and its base."""
        out: dict[str, Need] = {}
        k = max(0, bisect_right(self.starts, since) - 1)
        for i in range(k, len(self.stretches)):
            s = self.stretches[i]
            if s.start > now:
                break
            hi = min(now, self.stretches[i + 1].start - _TICK) if i + 1 < len(self.stretches) else now
            if hi < since:
                continue
            base = s.diff or s.full
            s_end = reach = base.end_time
            assert s_end is not None and reach is not None
            logs = self.logs.get(base.timeline)
            chain = logs.steps(base, hi) if logs is not None else []
            if chain:
                assert logs is not None
                ends = logs.end
                for j in chain:
                    if ends[j] > reach:
                        reach = ends[j]
            if reach > hi:
                reach = hi
            if reach < s.start or reach < since:
                continue  # no target of this stretch inside the window is reachable
            need = Need(reach, base)
            out[s.full.id] = need
            if s.diff is not None:
                out[s.diff.id] = need
            if reach > s_end:
                assert logs is not None
                ends, rec = logs.end, logs.rec
                for j in chain:
                    out[rec[j].id] = need
                    if ends[j] >= reach:
                        break
        if self.stretches:  # the latest point: the newest base and the whole unbroken run after it
            s = self.stretches[-1]
            base = s.diff or s.full
            assert base.end_time is not None
            latest = self.walk(base, None)
            reach = max([base.end_time, *(lg.end_time for lg in latest if lg.end_time is not None)])
            for b in (s.full, s.diff, *latest):
                if b is not None:
                    was = out.get(b.id)
                    out[b.id] = Need(max(reach, was.until) if was else reach, was.base if was else base, True)
        return out

    def chain_of(self, b: BackupRecord, by_id: Mapping[str, BackupRecord]) -> list[BackupRecord]:
        """What :func:`drkit.engines.postgres.chain.plan_for_backup` reads to restore ``b``'s own point: a
        full alone; a diff on its full; a log with its chain. ``[b]`` when that does not plan."""
        if b.end_time is None or b.status not in _VERIFIABLE or not self.has_copy(b.id):
            return [b]
        if b.kind == "diff":
            full = by_id.get(b.base_id or "")
            if full is None or full.status not in _RESTORABLE or not self.has_copy(full.id):
                return [b]
            return [full, b]
        if b.kind != "log":
            return [b]
        k = bisect_right(self.starts, b.end_time) - 1
        if k < 0:
            return [b]
        s = self.stretches[k]
        base = s.diff or s.full
        assert base.end_time is not None
        if base.end_time >= b.end_time:
            return [b]  # that point restores from the base alone
        chain = self.walk(base, b.end_time)
        if b not in chain or chain[-1].end_time is None or chain[-1].end_time < b.end_time:
            return [b]
        return [s.full, *([s.diff] if s.diff else []), *chain]
