"""Restore-chain planning (PostgreSQL chain model): hand-written cases, then properties over generated catalogs.

The generated catalogs follow how drkit really writes them: WAL advances segment by segment on one timeline
at a time; a full/diff starts in the segment being written; log backups ship the spool contiguously, a failed
log backup leaves its range to be shipped again, and a lost segment (a gap) is only healed by a new full.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drkit.catalog.records import RESTORABLE_STATUSES, BackupRecord, CopyRecord
from drkit.engines.postgres.chain import plan_restore
from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE, parse_segment_name, segment_name
from drkit.errors import RestorePlanError
from drkit.plans import RestorePlan

SEG = DEFAULT_SEGMENT_SIZE
DB = "orders"
T0 = datetime(2024, 5, 1, 0, 0, tzinfo=UTC)
TIER_ORDER = ("local", "blob", "archive")


def m(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


NOW = m(10_000)


# -- building catalogs -------------------------------------------------------------------------------


@dataclass
class Cat:
    backups: list[BackupRecord] = field(default_factory=list)
    copies: list[CopyRecord] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _add(self, rec: BackupRecord, tiers: Sequence[str] | dict[str, str]) -> BackupRecord:
        self.backups.append(rec)
        items = tiers.items() if isinstance(tiers, dict) else ((t, "complete") for t in tiers)
        for tier, status in items:
            n = next(self._ids)
            self.copies.append(CopyRecord(
                id=n, backup_id=rec.id, tier=tier, store_key=f"{tier}/{rec.id}", status=status,
                stored_bytes=100 + n, sha256=None, created_at=rec.started_at, updated_at=rec.started_at))
        return rec

    def base(self, id: str, kind: str, *, seg: int, end: datetime | None, tl: int = 1, base_id: str | None = None,
             status: str = "completed", tiers: Sequence[str] | dict[str, str] = ("local",),
             database: str = DB) -> BackupRecord:
        """A full or diff whose consistency point is ``end`` and whose WAL starts in segment ``seg``."""
        start = (end or m(0)) - timedelta(minutes=1)
        return self._add(BackupRecord(
            id=id, database=database, kind=kind, status=status, base_id=base_id, timeline=tl,
            start_lsn=seg * SEG + 0x28, end_lsn=seg * SEG + 0x1000, start_wal=segment_name(tl, seg),
            end_wal=segment_name(tl, seg), started_at=start, finished_at=end, start_time=start, end_time=end,
            raw_bytes=1000, stored_bytes=500, sha256="a" * 64, format="t", key_id="k", error=None,
            verified_at=None, meta={"segment_size": SEG}), tiers)

    def full(self, id: str, **kw: Any) -> BackupRecord:
        return self.base(id, "full", **kw)

    def diff(self, id: str, base_id: str, **kw: Any) -> BackupRecord:
        return self.base(id, "diff", base_id=base_id, **kw)

    def log(self, id: str, first: int, last: int, *, end: datetime | None, tl: int = 1, status: str = "completed",
            tiers: Sequence[str] | dict[str, str] = ("local",), database: str = DB) -> BackupRecord:
        """A log backup holding segments ``first``..``last`` and commits up to ``end``."""
        start = (end or m(0)) - timedelta(minutes=1)
        return self._add(BackupRecord(
            id=id, database=database, kind="log", status=status, base_id=None, timeline=tl,
            start_lsn=first * SEG, end_lsn=(last + 1) * SEG, start_wal=segment_name(tl, first),
            end_wal=segment_name(tl, last), started_at=start, finished_at=end, start_time=start, end_time=end,
            raw_bytes=1000, stored_bytes=500, sha256="b" * 64, format="t", key_id="k", error=None,
            verified_at=None, meta={"segment_size": SEG, "segments": last - first + 1}), tiers)

    def plan(self, target: datetime | None, *, now: datetime = NOW,
             tier_order: Sequence[str] = TIER_ORDER) -> RestorePlan:
        return plan_restore(DB, self.backups, self.copies, target=target, now=now, tier_order=tier_order)


def ids(plan: RestorePlan) -> list[str]:
    return [p.backup.id for p in plan.pieces]


def standard() -> Cat:
    """F1 (seg 2, ends m10), L1 2..4 (m20), D1 on F1 (seg 5, m30), L2 5..6 (m40), L3 7..9 (m50), L4 10..11 (m60)."""
    c = Cat()
    c.full("F1", seg=2, end=m(10))
    c.log("L1", 2, 4, end=m(20))
    c.diff("D1", "F1", seg=5, end=m(30))
    c.log("L2", 5, 6, end=m(40))
    c.log("L3", 7, 9, end=m(50))
    c.log("L4", 10, 11, end=m(60))
    return c


# -- hand-written cases ------------------------------------------------------------------------------


def test_full_only_restores_to_its_consistency_point() -> None:
    c = Cat()
    c.full("F1", seg=2, end=m(10))
    latest = c.plan(None)
    assert (latest.recovery, latest.reaches, ids(latest)) == ("immediate", m(10), ["F1"])
    exact = c.plan(m(10))
    assert (exact.recovery, exact.reaches, ids(exact)) == ("immediate", m(10), ["F1"])


def test_full_only_cannot_reach_a_later_time() -> None:
    c = Cat()
    c.full("F1", seg=2, end=m(10))
    with pytest.raises(RestorePlanError, match="F1"):
        c.plan(m(11))


def test_diff_at_or_before_target_is_used_and_logs_start_from_its_segment() -> None:
    plan = standard().plan(m(35))
    assert ids(plan) == ["F1", "D1", "L2"]
    assert plan.diff is not None and plan.diff.backup.id == "D1"
    assert (plan.recovery, plan.reaches, plan.target_time) == ("time", m(35), m(35))


def test_diff_exactly_at_target_restores_immediately() -> None:
    plan = standard().plan(m(30))
    assert ids(plan) == ["F1", "D1"]
    assert plan.recovery == "immediate"


def test_diff_after_target_is_ignored() -> None:
    plan = standard().plan(m(25))
    assert ids(plan) == ["F1", "L1", "L2"]
    assert plan.diff is None
    assert plan.recovery == "time"


def test_newest_diff_on_the_full_wins_and_skips_the_logs_it_replaces() -> None:
    c = standard()
    c.diff("D2", "F1", seg=7, end=m(45))
    plan = c.plan(m(55))
    assert ids(plan) == ["F1", "D2", "L3", "L4"]


def test_diff_of_another_full_is_not_applied() -> None:
    c = standard()
    c.full("F0", seg=0, end=m(1))
    c.diff("DX", "F0", seg=8, end=m(48))  # on the older full: must not be laid over F1
    plan = c.plan(m(55))
    assert ids(plan) == ["F1", "D1", "L2", "L3", "L4"]


def test_target_between_two_logs_stops_at_the_covering_log() -> None:
    plan = standard().plan(m(42))
    assert ids(plan) == ["F1", "D1", "L2", "L3"]
    plan = standard().plan(m(40))
    assert ids(plan) == ["F1", "D1", "L2"]
    assert plan.reaches == m(40)


def test_newest_full_before_target_is_chosen() -> None:
    c = standard()
    c.full("F2", seg=12, end=m(70))
    c.log("L5", 12, 13, end=m(80))
    assert ids(c.plan(m(75))) == ["F2", "L5"]
    assert ids(c.plan(m(65))) == ["F1", "D1", "L2", "L3", "L4", "L5"]


def test_target_in_the_future_is_refused() -> None:
    with pytest.raises(RestorePlanError, match="future"):
        standard().plan(m(20_000))


def test_target_before_the_earliest_full_names_the_earliest_point() -> None:
    with pytest.raises(RestorePlanError) as err:
        standard().plan(m(5))
    msg = str(err.value)
    assert "earliest" in msg and m(10).isoformat(timespec="seconds") in msg and "F1" in msg


def test_gap_in_the_logs_is_reported_with_where_the_chain_ends() -> None:
    c = Cat()
    c.full("F1", seg=2, end=m(10))
    c.log("L1", 2, 4, end=m(20))
    c.diff("D1", "F1", seg=5, end=m(30))
    c.log("L2", 5, 6, end=m(40))
    # segments 7..9 never shipped
    c.log("L4", 10, 11, end=m(60))
    with pytest.raises(RestorePlanError) as err:
        c.plan(m(55))
    msg = str(err.value)
    assert "gap" in msg
    assert segment_name(1, 6) in msg  # where the unbroken chain ends
    assert m(40).isoformat(timespec="seconds") in msg  # how far it reaches
    assert "F1" in msg and "D1" in msg  # what does exist
    # Before the gap the same catalog still restores.
    assert ids(c.plan(m(38))) == ["F1", "D1", "L2"]
    # Latest: as far as the unbroken run goes, not the log beyond the gap.
    latest = c.plan(None)
    assert (latest.recovery, latest.reaches, ids(latest)) == ("end", m(40), ["F1", "D1", "L2"])


def test_gap_is_healed_by_a_newer_full() -> None:
    c = Cat()
    c.full("F1", seg=2, end=m(10))
    c.log("L1", 2, 4, end=m(20))
    c.full("F2", seg=8, end=m(50))  # segments 5..7 lost; the chain restarts at F2
    c.log("L3", 8, 9, end=m(60))
    assert ids(c.plan(m(55))) == ["F2", "L3"]
    assert ids(c.plan(m(15))) == ["F1", "L1"]
    with pytest.raises(RestorePlanError, match="cannot reach"):
        c.plan(m(30))  # inside the gap


def test_corrupt_full_is_skipped_for_an_older_good_one() -> None:
    c = standard()
    c.full("F2", seg=12, end=m(70), status="corrupt")
    c.log("L5", 12, 13, end=m(80))
    plan = c.plan(m(75))
    assert ids(plan) == ["F1", "D1", "L2", "L3", "L4", "L5"]
    assert any("corrupt" in r and "F2" in r for r in plan.reasons)


@pytest.mark.parametrize("status", ["corrupt", "failed", "running"])
def test_unusable_statuses_are_never_planned(status: str) -> None:
    c = standard()
    c.full("FX", seg=10, end=m(55), status=status)
    c.diff("DX", "F1", seg=9, end=m(49), status=status)
    c.log("LX", 12, 13, end=m(70), status=status)
    assert ids(c.plan(m(58))) == ["F1", "D1", "L2", "L3", "L4"]
    with pytest.raises(RestorePlanError):
        c.plan(m(65))


def test_only_corrupt_full_says_so() -> None:
    c = Cat()
    c.full("F1", seg=2, end=m(10), status="corrupt")
    with pytest.raises(RestorePlanError, match="corrupt"):
        c.plan(None)


def test_corrupt_log_breaks_the_chain() -> None:
    c = standard()
    c.backups[4] = dataclasses.replace(c.backups[4], status="corrupt")  # L3
    assert c.backups[4].id == "L3"
    with pytest.raises(RestorePlanError, match=segment_name(1, 6)):
        c.plan(m(55))


def test_cheapest_tier_with_a_complete_copy_is_chosen() -> None:
    c = Cat()
    c.full("F1", seg=2, end=m(10), tiers=["archive", "blob", "local"])
    c.log("L1", 2, 3, end=m(20), tiers=["archive", "blob"])
    c.log("L2", 4, 5, end=m(30), tiers={"local": "pending", "blob": "deleted", "archive": "complete"})
    plan = c.plan(m(25))
    assert [(p.backup.id, p.tier) for p in plan.pieces] == [("F1", "local"), ("L1", "blob"), ("L2", "archive")]
    assert plan.pieces[0].store_key == "local/F1"
    # tier_order decides what "cheapest" means
    plan = c.plan(m(25), tier_order=["archive", "blob", "local"])
    assert [p.tier for p in plan.pieces] == ["archive", "archive", "archive"]


def test_backup_without_a_complete_copy_is_unusable() -> None:
    c = Cat()
    c.full("F1", seg=2, end=m(10))
    c.log("L1", 2, 3, end=m(20))
    c.log("L2", 4, 5, end=m(30), tiers={"local": "pending", "blob": "deleted"})
    c.log("L3", 6, 7, end=m(40))
    c.full("F2", seg=8, end=m(45), tiers=["elsewhere"])  # a tier not in tier_order
    with pytest.raises(RestorePlanError):
        c.plan(m(25))
    assert c.plan(None).reaches == m(20)
    c2 = Cat()
    c2.full("F1", seg=2, end=m(10), tiers=[])
    with pytest.raises(RestorePlanError, match="no restorable full"):
        c2.plan(None)


def test_latest_replays_to_the_end_of_the_last_contiguous_log() -> None:
    plan = standard().plan(None)
    assert plan.recovery == "end"
    assert plan.reaches == m(60)
    assert plan.target_time is None
    assert ids(plan) == ["F1", "D1", "L2", "L3", "L4"]


def test_other_databases_and_timelines_do_not_fill_a_gap() -> None:
    c = Cat()
    c.full("F1", seg=2, end=m(10))
    c.log("L1", 2, 4, end=m(20))
    c.log("OTHER", 5, 6, end=m(30), database="billing")
    c.log("TL2", 5, 6, end=m(30), tl=2)
    c.log("L3", 7, 8, end=m(40))
    with pytest.raises(RestorePlanError):
        c.plan(m(35))
    assert c.plan(None).reaches == m(20)


def test_chain_does_not_cross_a_promotion() -> None:
    c = Cat()
    c.full("F1", seg=2, end=m(10))
    c.log("L1", 2, 4, end=m(20))
    # promoted at segment 5: timeline 2 continues at the same segment numbers
    c.full("F2", seg=5, end=m(40), tl=2)
    c.log("L2", 5, 6, end=m(50), tl=2)
    assert ids(c.plan(m(45))) == ["F2", "L2"]
    assert ids(c.plan(m(15))) == ["F1", "L1"]
    with pytest.raises(RestorePlanError):
        c.plan(m(30))  # timeline 1 after its last shipped log: not restorable


def test_logs_must_cover_the_base_start_segment() -> None:
    c = Cat()
    c.full("F1", seg=5, end=m(10))
    c.log("L1", 6, 8, end=m(20))  # starts after the full's start segment: WAL 5 is missing
    with pytest.raises(RestorePlanError):
        c.plan(m(15))
    c.log("L0", 3, 5, end=m(9))  # shipped during the backup: covers segment 5
    assert ids(c.plan(m(15))) == ["F1", "L0", "L1"]


def test_plan_totals_and_roles() -> None:
    plan = standard().plan(m(45))
    assert [p.role for p in plan.pieces] == ["full", "diff", "log", "log"]
    assert plan.full.backup.id == "F1"
    assert [p.backup.id for p in plan.logs] == ["L2", "L3"]
    assert plan.total_bytes == sum(p.stored_bytes for p in plan.pieces) > 0


# -- generated catalogs ------------------------------------------------------------------------------


@dataclass
class World:
    cat: Cat
    now: datetime
    times: list[datetime]


SHIPPED = ("completed", "verified", "corrupt")  # the bytes were written (and the spool pruned)
_ANY_COPIES = st.lists(
    st.tuples(st.sampled_from(["local", "blob", "archive", "elsewhere"]),
              st.sampled_from(["complete", "pending", "deleted"])),
    min_size=0, max_size=3, unique_by=lambda t: t[0]).map(dict)
TIER_CHOICES = st.one_of(
    # mostly: one complete copy somewhere in tier_order, maybe more copies elsewhere
    st.tuples(st.sampled_from(TIER_ORDER), _ANY_COPIES).map(lambda t: {**t[1], t[0]: "complete"}),
    st.tuples(st.sampled_from(TIER_ORDER), _ANY_COPIES).map(lambda t: {**t[1], t[0]: "complete"}),
    st.tuples(st.sampled_from(TIER_ORDER), _ANY_COPIES).map(lambda t: {**t[1], t[0]: "complete"}),
    _ANY_COPIES,  # sometimes: whatever, often no usable copy
)
STATUS = st.sampled_from(["completed"] * 9 + ["verified"] * 4 + ["corrupt", "failed", "running"])


@st.composite
def worlds(draw: st.DrawFn) -> World:
    cat = Cat()
    t = 0.0
    tl = 1
    cur = 2  # segment being written
    next_log: int | None = None  # first segment not yet shipped on this timeline; None: no chain
    last_full: BackupRecord | None = None
    times: list[datetime] = []
    kinds = ["full", "diff", "diff", *["log"] * 8, "gap", "break", "promote"]
    events = ["full", *draw(st.lists(st.sampled_from(kinds), min_size=2, max_size=30))]
    for n, ev in enumerate(events, 1):
        t += draw(st.integers(1, 90))
        if ev != "promote":
            cur += draw(st.integers(0, 2))  # writes fill segments
        if ev == "diff" and (last_full is None or last_full.timeline != tl):
            ev = "full"
        if ev == "log" and next_log is None:
            ev = "full"
        if ev in ("full", "diff"):
            status = draw(STATUS)
            end = None if status == "running" else m(t)
            tiers = draw(TIER_CHOICES)
            if ev == "full":
                rec = cat.full(f"F{n}", seg=cur, end=end, tl=tl, status=status, tiers=tiers)
                if status in SHIPPED:
                    last_full = rec
                    if next_log is None:
                        next_log = cur  # the log chain (re)starts at the full
            else:
                assert last_full is not None
                cat.diff(f"D{n}", last_full.id, seg=cur, end=end, tl=tl, status=status, tiers=tiers)
            cur += 1  # pg_backup_stop switches segment
            times.append(m(t))
        elif ev == "log":
            assert next_log is not None
            cur = max(cur, next_log)
            status = draw(STATUS)
            end = None if status == "running" else m(t)
            cat.log(f"L{n}", next_log, cur, end=end, tl=tl, status=status, tiers=draw(TIER_CHOICES))
            if status in SHIPPED:
                next_log = cur + 1
            cur += 1  # pg_switch_wal
            times.append(m(t))
        elif ev == "gap" and next_log is not None:
            next_log += draw(st.integers(1, 3))  # segments never shipped, or their log backup lost
            cur = max(cur, next_log)
        elif ev == "break":
            next_log = None  # the spool lost WAL: no log backup until a new full restarts the chain
            cur += draw(st.integers(1, 3))
        elif ev == "promote":
            # The new timeline continues at the same segment number; its WAL is not shipped until a new full.
            tl += 1
            next_log = None
    now = m(t + draw(st.integers(0, 60)))
    return World(cat, now, times)


def _segs(b: BackupRecord) -> tuple[int, int]:
    assert b.start_wal and b.end_wal
    return parse_segment_name(b.start_wal)[1], parse_segment_name(b.end_wal)[1]


class Oracle:
    """Brute force: every full, every diff on it, every path of exactly joined logs."""

    def __init__(self, cat: Cat) -> None:
        ok = {c.backup_id for c in cat.copies if c.status == "complete" and c.tier in TIER_ORDER}
        self.usable = [b for b in cat.backups if b.database == DB and b.status in RESTORABLE_STATUSES
                       and b.end_time is not None and b.id in ok]
        self.fulls = [b for b in self.usable if b.kind == "full"]
        self.logs = [b for b in self.usable if b.kind == "log"]
        self.best_tier = {}
        for tier in reversed(TIER_ORDER):
            for c in cat.copies:
                if c.status == "complete" and c.tier == tier:
                    self.best_tier[c.backup_id] = tier

    def bases(self, full: BackupRecord, target: datetime | None) -> list[BackupRecord]:
        diffs = [d for d in self.usable if d.kind == "diff" and d.base_id == full.id
                 and (target is None or d.end_time <= target)]
        return [full, *diffs]

    def reach(self, base: BackupRecord) -> datetime:
        """The latest end_time of any log reachable from ``base`` by exact joins (or the base's own end)."""
        assert base.start_lsn is not None and base.end_time is not None
        start = base.start_lsn // SEG
        on = [lg for lg in self.logs if lg.timeline == base.timeline]
        todo = [lg for lg in on if _segs(lg)[0] <= start <= _segs(lg)[1]]
        seen: set[str] = set()
        best = base.end_time
        while todo:
            lg = todo.pop()
            if lg.id in seen:
                continue
            seen.add(lg.id)
            assert lg.end_time is not None
            best = max(best, lg.end_time)
            todo.extend(x for x in on if _segs(x)[0] == _segs(lg)[1] + 1)
        return best

    def reachable(self, target: datetime) -> bool:
        return any(self.reach(b) >= target for f in self.fulls if f.end_time <= target
                   for b in self.bases(f, target))

    def latest(self) -> datetime:
        return max(self.reach(b) for f in self.fulls for b in self.bases(f, None))


def check_plan(plan: RestorePlan, oracle: Oracle, target: datetime | None) -> None:
    pieces = [p.backup for p in plan.pieces]
    # (e) nothing corrupt, failed or without a complete copy; each piece from its cheapest tier
    for p in plan.pieces:
        assert p.backup in oracle.usable, p.backup.id
        assert p.tier == oracle.best_tier[p.backup.id]
    # (a) a restorable full at or before the target, the newest such
    full = pieces[0]
    assert full.kind == "full"
    assert full.end_time is not None
    if target is not None:
        assert full.end_time <= target
        assert full.end_time == max(f.end_time for f in oracle.fulls if f.end_time <= target)
    # (b) at most one diff, on that full, at or before the target, the newest such
    diffs = [b for b in pieces if b.kind == "diff"]
    assert len(diffs) <= 1
    candidates = oracle.bases(full, target)[1:]
    if diffs:
        assert pieces[1] is diffs[0]
        assert diffs[0].base_id == full.id
        assert target is None or diffs[0].end_time <= target
        assert diffs[0].end_time == max(d.end_time for d in candidates)
    else:
        assert not candidates
    base = diffs[0] if diffs else full
    assert base.start_lsn is not None and base.end_time is not None
    # (c) logs: on the base's timeline, the first holds the base's start segment, then exact joins
    logs = pieces[1 + len(diffs):]
    assert all(lg.kind == "log" for lg in logs)
    assert all(lg.timeline == base.timeline for lg in logs)
    if logs:
        first, _ = _segs(logs[0])
        assert first <= base.start_lsn // SEG <= _segs(logs[0])[1]
        for a, b in itertools.pairwise(logs):
            assert _segs(b)[0] == _segs(a)[1] + 1
    # (d) recovery reaches the target, and no further log than needed is read
    if target is None:
        assert plan.recovery == ("end" if logs else "immediate")
        assert plan.reaches == (logs[-1].end_time if logs else base.end_time)
        assert plan.reaches == oracle.latest()
    elif plan.recovery == "time":
        assert logs and logs[-1].end_time is not None and logs[-1].end_time >= target
        assert all(lg.end_time < target for lg in logs[:-1])
        assert plan.reaches == target
    else:
        assert plan.recovery == "immediate"
        assert not logs and base.end_time == target == plan.reaches


@st.composite
def world_and_target(draw: st.DrawFn) -> tuple[World, datetime | None]:
    w = draw(worlds())
    kind = draw(st.sampled_from(["none", "event", "event", "between", "between", "between", "between", "future",
                                 "early"]))
    if kind == "none":
        return w, None
    if kind == "event" and w.times:
        # at an event, or just before/after it: where off-by-one and boundary mistakes show
        return w, draw(st.sampled_from(w.times)) + timedelta(seconds=draw(st.sampled_from([-1, 0, 0, 1])))
    if kind == "future":
        return w, w.now + timedelta(seconds=draw(st.integers(1, 10**6)))
    if kind == "early":
        return w, m(-draw(st.integers(0, 100)))
    start = w.times[0] if w.times else T0
    return w, start + (w.now - start) * draw(st.integers(1, 999)) / 1000


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world_and_target())
def test_plans_are_sound_and_errors_are_real(wt: tuple[World, datetime | None]) -> None:
    w, target = wt
    oracle = Oracle(w.cat)
    try:
        plan = w.cat.plan(target, now=w.now)
    except RestorePlanError as exc:
        msg = str(exc)
        if not oracle.fulls:
            assert "no restorable full" in msg
            return
        assert target is not None, f"latest must always be plannable when a full exists: {msg}"
        if target > w.now:
            assert "future" in msg
            return
        earliest = min(f.end_time for f in oracle.fulls)
        if target < earliest:
            assert "earliest" in msg and earliest.isoformat(timespec="seconds") in msg
            return
        assert not oracle.reachable(target), f"planner refused a reachable target {target}: {msg}"
        assert "cannot reach" in msg and "reach only" in msg
        return
    assert target is None or target <= w.now
    check_plan(plan, oracle, target)
    assert target is None or oracle.reachable(target)


@settings(max_examples=200, deadline=None)
@given(worlds(), st.data())
def test_a_target_past_a_gap_is_always_refused(w: World, data: st.DataObject) -> None:
    """Past the newest full, any target beyond where the unbroken log run ends is an error, not a silent plan."""
    oracle = Oracle(w.cat)
    if not oracle.fulls:
        return
    newest = max(oracle.fulls, key=lambda f: f.end_time)
    latest = w.cat.plan(None, now=w.now).reaches
    assert latest >= newest.end_time
    if latest >= w.now:
        return
    target = latest + (w.now - latest) * data.draw(st.floats(0, 1, exclude_min=True))
    if target <= latest:
        return
    with pytest.raises(RestorePlanError, match="cannot reach"):
        w.cat.plan(target, now=w.now)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2**32 - 1), st.integers(0, 2**40), st.sampled_from([2**k for k in range(20, 31)]),
       st.sampled_from(["", "x", " ", "_", "g", "\n", "٣"]))
def test_the_fast_segment_name_reader_agrees_with_the_parser(tl: int, segno: int, size: int, junk: str) -> None:
    """The planners read WAL names with lsn.segment_number_of / segment_span: the parser's numbers, and
    None (never an exception, never a number) for what the parser refuses."""
    from drkit.engines.postgres.lsn import segment_number_of, segment_span

    segno %= (2**32) * (2**32 // size)
    name = segment_name(tl, segno, size)
    assert segment_number_of(name, size) == parse_segment_name(name, size)[1] == segno
    assert segment_span(name, name, size) == (segno, segno)
    bad = [name[:-1] + junk if junk else name[:-1], " " + name[1:], name[:10] + "_" + name[11:], name[:-1] + "\n"]
    for other in bad:
        if other == name:
            continue
        with pytest.raises(ValueError):
            parse_segment_name(other, size)
        assert segment_number_of(other, size) is None and segment_span(name, other, size) is None
