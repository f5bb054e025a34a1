"""SQL Server restore-chain planning (its chain model): msdb-shaped fixtures, then properties over histories.

LSNs are realistic numeric(25,0) values (VLF sequence × 10**15 + block × 10**5 + slot), most past 2**63, and
live in each record's meta as decimal strings, as drkit records them from msdb.dbo.backupset.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drkit import retention, retention_reference
from drkit.catalog.records import RESTORABLE_STATUSES, BackupRecord, CopyRecord, HoldRecord
from drkit.engines.sqlserver.chain import NATIVE_TIER
from drkit.engines.sqlserver.chain_model import SQLSERVER_CHAIN
from drkit.errors import RestorePlanError
from drkit.plans import RestorePlan
from drkit.retention import TierSpec
from tests.support.histories import Policy, policies

plan_restore = SQLSERVER_CHAIN.plan_restore
plan_for_backup = SQLSERVER_CHAIN.plan_for_backup

DB = "orders"
T0 = datetime(2026, 5, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=30)
TIERS = ("local", "blob")
FORK_A = "0c1f0000-0000-4000-8000-00000000000a"
FORK_B = "0c1f0000-0000-4000-8000-00000000000b"


def m(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def lsn(vlf: int, block: int = 0, slot: int = 1) -> int:
    return vlf * 10**15 + block * 10**5 + slot


@dataclass
class Msdb:
    backups: list[BackupRecord] = field(default_factory=list)
    copies: list[CopyRecord] = field(default_factory=list)
    _n: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, id: str, kind: str, first: int, last: int, end: datetime | None, *, checkpoint: int | None = None,
            diff_base: int | None = None, diff_guid: str | None = None, copy_only: bool = False,
            fork: tuple[str, str] = (FORK_A, FORK_A), fork_point: int | None = None, status: str = "completed",
            tiers: Sequence[str] = ("local",), native: bool = False, base_id: str | None = None) -> BackupRecord:
        meta: dict[str, Any] = {
            "first_lsn": str(first), "last_lsn": str(last),
            "checkpoint_lsn": str(checkpoint if checkpoint is not None else first + 10),
            "differential_base_lsn": None if diff_base is None else str(diff_base),
            "differential_base_guid": diff_guid, "backup_set_uuid": f"uuid-{id}", "is_copy_only": copy_only,
            "first_recovery_fork_guid": fork[0], "last_recovery_fork_guid": fork[1],
            "fork_point_lsn": None if fork_point is None else str(fork_point)}
        if native:
            meta["devices"] = [{"device": f"D:\\Backup\\{id}.bak", "type": "DISK"}]
        start = (end or T0) - timedelta(minutes=1)
        rec = BackupRecord(
            id=id, database=DB, kind=kind, status=status, base_id=base_id, timeline=None, start_lsn=None,
            end_lsn=None, start_wal=None, end_wal=None, started_at=start, finished_at=end, start_time=start,
            end_time=end, raw_bytes=100, stored_bytes=50, sha256=None if native else "c" * 64,
            format="mssql-native-disk" if native else "drkit-mssql-bak-v1", key_id=None, error=None,
            verified_at=None, meta=meta)
        self.backups.append(rec)
        for tier in () if native else tiers:
            n = next(self._n)
            self.copies.append(CopyRecord(id=n, backup_id=id, tier=tier, store_key=f"{tier}/{id}", status="complete",
                                          stored_bytes=50, sha256="c" * 64, created_at=start, updated_at=start))
        return rec

    def full(self, id: str, first: int, last: int, end: datetime, **kw: Any) -> BackupRecord:
        return self.add(id, "full", first, last, end, **kw)

    def diff(self, id: str, on: BackupRecord, first: int, last: int, end: datetime, **kw: Any) -> BackupRecord:
        return self.add(id, "diff", first, last, end, diff_base=int(on.meta["checkpoint_lsn"]),
                        diff_guid=on.meta["backup_set_uuid"], **kw)

    def log(self, id: str, first: int, last: int, end: datetime, **kw: Any) -> BackupRecord:
        return self.add(id, "log", first, last, end, **kw)

    def plan(self, target: datetime | None, now: datetime = NOW) -> RestorePlan:
        return plan_restore(DB, self.backups, self.copies, target=target, now=now, tier_order=TIERS)


def ids(plan: RestorePlan) -> list[str]:
    return [p.backup.id for p in plan.pieces]


def standard() -> Msdb:
    """F1 (m10), L1 (m20), D1 on F1 (m30), L2 (m40), L3 (m50), L4 (m60); logs joined exactly."""
    c = Msdb()
    c.full("F1", lsn(34, 100), lsn(34, 400), m(10), checkpoint=lsn(34, 120))
    c.log("L1", lsn(34, 50), lsn(34, 900), m(20))
    c.diff("D1", c.backups[0], lsn(34, 1000), lsn(34, 1300), m(30), checkpoint=lsn(34, 1010))
    c.log("L2", lsn(34, 900), lsn(35, 200), m(40))
    c.log("L3", lsn(35, 200), lsn(35, 800), m(50))
    c.log("L4", lsn(35, 800), lsn(36, 10), m(60))
    return c


# -- hand-written cases ----------------------------------------------------------------------------------


def test_full_diff_and_logs_with_stopat() -> None:
    plan = standard().plan(m(45))
    assert ids(plan) == ["F1", "D1", "L2", "L3"]
    assert (plan.recovery, plan.target_time, plan.reaches) == ("time", m(45), m(45))
    assert plan.diff is not None and [p.backup.id for p in plan.logs] == ["L2", "L3"]


def test_a_target_inside_a_bulk_logged_log_is_refused_with_the_reason() -> None:
    c = standard()
    c.backups[4].meta["has_bulk_logged_data"] = True  # L3 (m40 .. m50) holds minimally logged changes
    with pytest.raises(RestorePlanError, match=r"log backup L3 \(from .*T00:40:00.* to .*T00:50:00.*\) holds "
                                               r"bulk-logged changes \(has_bulk_logged_data = 1"):
        c.plan(m(45))
    at_end = c.plan(m(50))  # its end is a point SQL Server can restore to: applied whole, no STOPAT
    assert (ids(at_end), at_end.recovery) == (["F1", "D1", "L2", "L3"], "end")
    assert c.plan(m(55)).recovery == "time"  # past it: L3 is applied whole, STOPAT lands in L4


def test_first_log_after_the_base_holds_its_last_lsn() -> None:
    # D1 ends at LSN 34/1300; L2 runs 34/900 .. 35/200: first_lsn <= base.last_lsn < last_lsn
    assert ids(standard().plan(m(35))) == ["F1", "D1", "L2"]
    assert ids(standard().plan(m(15))) == ["F1", "L1"]


def test_exact_base_time_restores_immediately_and_latest_applies_every_log() -> None:
    assert (standard().plan(m(30)).recovery, ids(standard().plan(m(30)))) == ("immediate", ["F1", "D1"])
    latest = standard().plan(None)
    assert (latest.recovery, latest.reaches, ids(latest)) == ("end", m(60), ["F1", "D1", "L2", "L3", "L4"])


def test_diff_belongs_to_the_full_whose_checkpoint_is_its_base() -> None:
    c = standard()
    f0 = c.full("F0", lsn(30, 1), lsn(30, 50), m(1), checkpoint=lsn(30, 5))
    c.diff("DX", f0, lsn(35, 300), lsn(35, 400), m(45))  # on F0, not F1: never laid over F1
    c.add("DY", "diff", lsn(35, 300), lsn(35, 410), m(46), diff_base=lsn(34, 120), diff_guid="uuid-someone-else")
    assert ids(c.plan(m(55))) == ["F1", "D1", "L2", "L3", "L4"]
    # base_id is not trusted over the LSN rule: a diff recorded against the wrong full still lands on its real one
    c.add("DZ", "diff", lsn(35, 300), lsn(35, 420), m(47), diff_base=lsn(34, 120), diff_guid="uuid-F1",
          base_id="F0")
    assert ids(c.plan(m(55))) == ["F1", "DZ", "L3", "L4"]


def test_a_copy_only_full_is_never_a_differential_base_but_restores_with_logs() -> None:
    c = Msdb()
    c.full("FC", lsn(34, 100), lsn(34, 400), m(10), checkpoint=lsn(34, 120), copy_only=True)
    c.add("D?", "diff", lsn(34, 700), lsn(34, 800), m(25), diff_base=lsn(34, 120), diff_guid="uuid-FC")
    c.log("L1", lsn(34, 50), lsn(34, 900), m(30))
    plan = c.plan(m(28))
    assert ids(plan) == ["FC", "L1"] and plan.recovery == "time"
    assert "copy-only" in plan.reasons[0]


def test_a_gap_in_the_log_chain_says_where_it_breaks_and_what_exists() -> None:
    c = standard()
    c.backups = [b for b in c.backups if b.id != "L3"]
    with pytest.raises(RestorePlanError) as err:
        c.plan(m(55))
    msg = str(err.value)
    assert "gap" in msg and "reach only" in msg and str(lsn(35, 200)) in msg and "F1" in msg and "D1" in msg
    assert ids(c.plan(m(38))) == ["F1", "D1", "L2"]
    assert c.plan(None).reaches == m(40)


def test_before_the_first_backup_in_the_future_and_nothing_at_all() -> None:
    with pytest.raises(RestorePlanError, match=r"earliest.*F1"):
        standard().plan(m(5))
    with pytest.raises(RestorePlanError, match="future"):
        standard().plan(NOW + timedelta(seconds=1))
    with pytest.raises(RestorePlanError, match="no restorable full"):
        Msdb().plan(None)
    c = Msdb()
    c.full("F1", lsn(34, 1), lsn(34, 9), m(10), status="corrupt")
    with pytest.raises(RestorePlanError, match="corrupt"):
        c.plan(None)


def test_a_recovery_fork_is_never_crossed_by_numbers_alone() -> None:
    """The database was restored to LSN 34/600 (inside L1) at m35; fork B begins there."""
    c = Msdb()
    c.full("F1", lsn(34, 100), lsn(34, 400), m(10), checkpoint=lsn(34, 120))
    c.log("L1", lsn(34, 50), lsn(34, 900), m(20))  # fork A, later abandoned
    c.log("L2a", lsn(34, 900), lsn(35, 100), m(30))  # fork A
    # after the restore: the first log spans the fork (A → B) from L1's start; LSNs restart at the fork point
    c.log("L2b", lsn(34, 50), lsn(34, 950), m(40), fork=(FORK_A, FORK_B), fork_point=lsn(34, 600))
    c.log("L3b", lsn(34, 950), lsn(35, 100), m(50), fork=(FORK_B, FORK_B))
    # L4b starts at 35/100, which is also where fork A's L2a ended: by numbers alone F1, L1, L2a, L4b would do
    c.log("L4b", lsn(35, 100), lsn(35, 300), m(60), fork=(FORK_B, FORK_B))
    assert ids(c.plan(m(55))) == ["F1", "L2b", "L3b", "L4b"]
    assert ids(c.plan(m(45))) == ["F1", "L2b", "L3b"]
    assert ids(c.plan(m(25))) == ["F1", "L1", "L2a"]  # before the restore: fork A's own history
    latest = c.plan(None)
    assert (ids(latest), latest.reaches) == (["F1", "L2b", "L3b", "L4b"], m(60))
    # a full taken on fork A after the fork point cannot continue on fork B
    c.full("F2", lsn(34, 920), lsn(34, 990), m(32), checkpoint=lsn(34, 930))
    assert ids(c.plan(m(45))) == ["F1", "L2b", "L3b"]
    assert ids(c.plan(m(32))) == ["F2"]


def test_backups_on_the_servers_own_devices_are_read_natively() -> None:
    c = Msdb()
    c.full("F1", lsn(34, 100), lsn(34, 400), m(10), native=True)
    c.log("L1", lsn(34, 50), lsn(34, 900), m(20), native=True)
    plan = c.plan(m(15))
    assert [(p.tier, p.store_key) for p in plan.pieces] == [(NATIVE_TIER, "D:\\Backup\\F1.bak"),
                                                           (NATIVE_TIER, "D:\\Backup\\L1.bak")]


def test_cheapest_tier_and_unusable_copies() -> None:
    c = Msdb()
    c.full("F1", lsn(34, 100), lsn(34, 400), m(10), tiers=("blob", "local"))
    c.log("L1", lsn(34, 50), lsn(34, 900), m(20), tiers=("blob",))
    c.log("L2", lsn(34, 900), lsn(35, 1), m(30), tiers=("elsewhere",))
    assert [(p.backup.id, p.tier) for p in c.plan(m(15)).pieces] == [("F1", "local"), ("L1", "blob")]
    with pytest.raises(RestorePlanError):
        c.plan(m(25))


def test_plan_for_one_backup() -> None:
    c = standard()
    byid = {b.id: b for b in c.backups}
    assert ids(plan_for_backup(byid["F1"], c.backups, c.copies, tier_order=TIERS)) == ["F1"]
    assert ids(plan_for_backup(byid["D1"], c.backups, c.copies, tier_order=TIERS)) == ["F1", "D1"]
    plan = plan_for_backup(byid["L3"], c.backups, c.copies, tier_order=TIERS)
    assert ids(plan) == ["F1", "D1", "L2", "L3"] and plan.recovery == "end"
    orphan = c.add("DX", "diff", lsn(36, 1), lsn(36, 9), m(70), diff_base=lsn(1, 1))
    with pytest.raises(RestorePlanError, match="differential base"):
        plan_for_backup(orphan, c.backups, c.copies, tier_order=TIERS)


# -- generated histories -----------------------------------------------------------------------------------


@dataclass
class World:
    cat: Msdb
    now: datetime
    times: list[datetime]


STATUS = st.sampled_from(["completed"] * 10 + ["verified"] * 3 + ["corrupt", "failed"])
COPIES = st.sampled_from([("local",), ("blob",), ("local", "blob"), ("local",), ()])


@st.composite
def histories(draw: st.DrawFn) -> World:
    """A database's backup history as SQL Server writes it: one LSN stream, forks after restores."""
    cat = Msdb()
    t = 0.0
    cur = lsn(34, 100)
    fork = FORK_A
    forks = iter([FORK_B, "0c1f0000-0000-4000-8000-00000000000c", "0c1f0000-0000-4000-8000-00000000000d"])
    chain_point: int | None = None  # last_lsn of the last log backup (the log chain's position)
    diff_base: tuple[int, str] | None = None
    span_from: tuple[int, str, int] | None = None  # (first_lsn, old fork, fork point) for the next log
    regular_logs: list[BackupRecord] = []
    times: list[datetime] = []
    events = ["full", *draw(st.lists(st.sampled_from(
        ["full", "copyfull", "diff", *["log"] * 7, "copylog", "lose", "restore"]), min_size=2, max_size=25))]
    for n, ev in enumerate(events, 1):
        t += draw(st.integers(1, 60))
        cur += draw(st.integers(1, 5)) * 10**5
        if ev == "diff" and diff_base is None:
            ev = "full"
        if ev in ("log", "copylog", "lose") and chain_point is None:
            ev = "full"
        status, tiers = draw(STATUS), draw(COPIES)
        end = m(t)
        if ev in ("full", "copyfull", "diff"):
            first, ckpt, last = cur, cur + 10**5, cur + 3 * 10**5
            cur = last
            kw: dict[str, Any] = {"checkpoint": ckpt, "fork": (fork, fork), "status": status, "tiers": tiers}
            if ev == "diff":
                assert diff_base is not None
                cat.add(f"D{n}", "diff", first, last, end, diff_base=diff_base[0], diff_guid=diff_base[1], **kw)
            else:
                rec = cat.add(f"F{n}", "full", first, last, end, copy_only=ev == "copyfull", **kw)
                if ev == "full":
                    diff_base = (ckpt, rec.meta["backup_set_uuid"])
                if chain_point is None:
                    chain_point = first
            times.append(end)
        elif ev in ("log", "copylog", "lose"):
            assert chain_point is not None
            first = chain_point
            kw = {"fork": (fork, fork), "status": status, "tiers": tiers}
            if span_from is not None:
                first, old, point = span_from
                kw.update(fork=(old, fork), fork_point=point)
            last = cur
            if ev != "lose":
                rec = cat.add(f"L{n}", "log", first, last, end, copy_only=ev == "copylog", **kw)
                if ev == "log":
                    regular_logs.append(rec)
            if ev != "copylog":
                chain_point, span_from = last, None
            times.append(end)
        elif ev == "restore" and regular_logs:
            # the database is restored to a point inside a recorded log; a new fork starts there
            victim = draw(st.sampled_from(regular_logs))
            a, b = int(victim.meta["first_lsn"]), int(victim.meta["last_lsn"])
            point = a + (b - a) // 2
            old_fork = str(victim.meta["last_recovery_fork_guid"])
            new_fork = next(forks, None)
            if new_fork is None:
                continue
            fork = new_fork
            span_from = (a, old_fork, point)
            chain_point, cur = a, point + 10**5
            regular_logs = []
    now = m(t + draw(st.integers(0, 30)))
    return World(cat, now, times)


class Oracle:
    """Brute force over the documented rules, written independently of the planner."""

    def __init__(self, cat: Msdb) -> None:
        ok = {c.backup_id for c in cat.copies if c.status == "complete" and c.tier in TIERS}
        self.usable = [b for b in cat.backups if b.status in RESTORABLE_STATUSES and b.end_time and b.id in ok]
        self.fulls = [b for b in self.usable if b.kind == "full"]
        self.logs = [b for b in self.usable if b.kind == "log"]

    @staticmethod
    def v(b: BackupRecord, k: str) -> Any:
        x = b.meta.get(k)
        return int(x) if k.endswith("lsn") and x is not None else x

    def on(self, full: BackupRecord, d: BackupRecord) -> bool:
        return (not full.meta["is_copy_only"] and d.kind == "diff" and self.v(d, "differential_base_lsn")
                == self.v(full, "checkpoint_lsn") and d.meta["differential_base_guid"] == full.meta["backup_set_uuid"])

    def joins(self, prev: BackupRecord, log: BackupRecord, first: bool) -> bool:
        f, la, pl = self.v(log, "first_lsn"), self.v(log, "last_lsn"), self.v(prev, "last_lsn")
        lsn_ok = (f <= pl < la) if first else (f == pl and la > f)
        fork_ok = log.meta["first_recovery_fork_guid"] == prev.meta["last_recovery_fork_guid"]
        fp = self.v(log, "fork_point_lsn")
        if fp is not None and log.meta["first_recovery_fork_guid"] != log.meta["last_recovery_fork_guid"]:
            fork_ok = fork_ok and pl <= fp
        return lsn_ok and fork_ok

    def bases(self, full: BackupRecord, target: datetime | None) -> list[BackupRecord]:
        return [full, *(d for d in self.usable if self.on(full, d) and (target is None or d.end_time <= target))]

    def reach(self, base: BackupRecord) -> datetime:
        best = base.end_time
        todo = [lg for lg in self.logs if self.joins(base, lg, True)]
        seen: set[str] = set()
        while todo:
            lg = todo.pop()
            if lg.id in seen:
                continue
            seen.add(lg.id)
            best = max(best, lg.end_time)
            todo.extend(x for x in self.logs if self.joins(lg, x, False))
        assert best is not None
        return best

    def reaches(self, full: BackupRecord, target: datetime) -> bool:
        return full.end_time <= target and any(b.end_time == target or self.reach(b) >= target
                                                for b in self.bases(full, target))

    def reachable(self, target: datetime) -> bool:
        return any(self.reaches(f, target) for f in self.fulls)

    def latest(self) -> datetime:
        return max(self.reach(b) for f in self.fulls for b in self.bases(f, None))


def check(plan: RestorePlan, o: Oracle, target: datetime | None) -> None:
    pieces = [p.backup for p in plan.pieces]
    assert all(p in o.usable for p in pieces)
    full = pieces[0]
    assert full.kind == "full"
    diffs = [p for p in pieces if p.kind == "diff"]
    assert len(diffs) <= 1 and all(o.on(full, d) for d in diffs)
    base = diffs[0] if diffs else full
    logs = pieces[1 + len(diffs):]
    assert all(lg.kind == "log" for lg in logs)
    if logs:
        assert o.joins(base, logs[0], True)
        assert all(o.joins(a, b, False) for a, b in itertools.pairwise(logs))
    if target is None:
        assert plan.reaches == o.latest() == (logs[-1].end_time if logs else base.end_time)
        return
    assert full.end_time <= target and base.end_time <= target
    newer = [f for f in o.fulls if f.end_time > full.end_time and f.end_time <= target]
    assert not any(o.reaches(f, target) for f in newer), "a newer full reaches the target too"
    if plan.recovery == "time":
        assert logs and logs[-1].end_time >= target and all(lg.end_time < target for lg in logs[:-1])
        assert plan.target_time == plan.reaches == target
    else:
        assert plan.recovery == "immediate" and not logs and base.end_time == target


@st.composite
def history_and_target(draw: st.DrawFn) -> tuple[World, datetime | None]:
    w = draw(histories())
    kind = draw(st.sampled_from(["none", "event", "event", "between", "between", "between", "future", "early"]))
    if kind == "none":
        return w, None
    if kind == "event" and w.times:
        return w, draw(st.sampled_from(w.times)) + timedelta(seconds=draw(st.sampled_from([-1, 0, 0, 1])))
    if kind == "future":
        return w, w.now + timedelta(seconds=draw(st.integers(1, 10**6)))
    if kind == "early":
        return w, m(-draw(st.integers(0, 100)))
    return w, T0 + (w.now - T0) * draw(st.integers(1, 999)) / 1000


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history_and_target())
def test_plans_are_sound_complete_and_errors_are_real(wt: tuple[World, datetime | None]) -> None:
    w, target = wt
    o = Oracle(w.cat)
    try:
        plan = w.cat.plan(target, now=w.now)
    except RestorePlanError as exc:
        msg = str(exc)
        if not o.fulls:
            assert "no restorable full" in msg
            return
        assert target is not None, f"latest must be plannable when a full exists: {msg}"
        if target > w.now:
            assert "future" in msg
            return
        earliest = min(f.end_time for f in o.fulls)
        if target < earliest:
            assert "earliest" in msg
            return
        assert not o.reachable(target), f"planner refused a reachable target {target}: {msg}"
        assert "cannot reach" in msg
        return
    check(plan, o, target)
    assert target is None or (target <= w.now and o.reachable(target))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_every_restorable_log_can_be_verified_with_a_valid_chain(w: World, data: st.DataObject) -> None:
    o = Oracle(w.cat)
    if not o.logs:
        return
    log = data.draw(st.sampled_from(o.logs))
    try:
        plan = plan_for_backup(log, w.cat.backups, w.cat.copies, tier_order=TIERS)
    except RestorePlanError:
        assert not any(log.id in self_path for self_path in _paths_to(o, log))
        return
    assert plan.pieces[-1].backup.id == log.id
    check_chain = [p.backup for p in plan.pieces]
    base = next(b for b in reversed(check_chain) if b.kind != "log")
    logs = [b for b in check_chain if b.kind == "log"]
    assert o.joins(base, logs[0], True) and all(o.joins(a, b, False) for a, b in itertools.pairwise(logs))


def _paths_to(o: Oracle, goal: BackupRecord) -> list[set[str]]:
    found = []
    for f in o.fulls:
        for base in o.bases(f, goal.end_time):
            todo = [(lg, {lg.id}) for lg in o.logs if o.joins(base, lg, True)]
            while todo:
                lg, path = todo.pop()
                if lg.id == goal.id:
                    found.append(path)
                    continue
                todo.extend((x, path | {x.id}) for x in o.logs if x.id not in path and o.joins(lg, x, False)
                            and int(x.meta["last_lsn"]) <= int(goal.meta["last_lsn"]))
    return found


# -- the retention index: the same rules, indexed once ----------------------------------------------------


def _usable(w: World, tiers: Sequence[str]) -> set[str]:
    return {c.backup_id for c in w.cat.copies if c.status == "complete" and c.tier in tiers}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.integers(0, 200))
def test_the_restore_index_needs_exactly_what_plan_restore_reads(w: World, window_minutes: int) -> None:
    since = w.now - timedelta(minutes=window_minutes)
    index = SQLSERVER_CHAIN.index(w.cat.backups, _usable(w, TIERS).__contains__)
    needs = index.needs(w.now, since)
    points = {since, w.now, *(x + timedelta(microseconds=e) for x in w.times for e in (-1, 0, 1))}
    for target in [None, *sorted(p for p in points if since <= p <= w.now)]:
        try:
            got = w.cat.plan(target, now=w.now)
        except RestorePlanError:
            continue
        for piece in got.pieces:
            assert piece.backup.id in needs, f"{piece.backup.id} is read for {target} but not needed"
            assert target is None or needs[piece.backup.id].until >= target
            assert target is not None or needs[piece.backup.id].latest
    for backup_id, need in needs.items():
        if need.until < since:
            assert need.latest
            continue
        got = w.cat.plan(min(need.until, w.now), now=w.now)
        assert {backup_id, need.base.id} <= {p.backup.id for p in got.pieces}, (backup_id, need)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_the_restore_index_chain_of_a_backup_is_its_plan_for_backup(w: World, data: st.DataObject) -> None:
    b = data.draw(st.sampled_from(w.cat.backups))
    index = SQLSERVER_CHAIN.index(w.cat.backups, _usable(w, TIERS).__contains__)
    try:
        want = [p.backup.id for p in plan_for_backup(b, w.cat.backups, w.cat.copies, tier_order=TIERS).pieces]
    except RestorePlanError:
        want = [b.id]
    assert [x.id for x in index.chain_of(b, {x.id: x for x in w.cat.backups})] == want


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), policies(), st.integers(0, 60 * 24 * 3))
def test_fast_and_reference_retention_agree_on_msdb_histories(w: World, p: Policy, later: int) -> None:
    """Forks, copy-only backups and natively readable ones included (both planners read the chain model)."""
    tiers = {t: TierSpec(k) for t, k in p.keep_days.items()}
    holds = [HoldRecord(id=n, backup_id=b.id, database=DB, reason="INC-1", created_at=T0, created_by="alice",
                        removed_at=None, removed_by=None, removed_reason=None)
             for n, b in enumerate(w.cat.backups[::7], 1)]
    now = w.now + timedelta(minutes=later)
    fast = retention.plan(w.cat.backups, w.cat.copies, holds, tiers, now, chains=lambda db: SQLSERVER_CHAIN,
                          **p.options)
    ref = retention_reference.plan(w.cat.backups, w.cat.copies, holds, tiers, now,
                                   chains=lambda db: SQLSERVER_CHAIN, **p.options)
    assert [(a.kind, a.backup_id, a.tier_from, a.tier_to) for a in fast] == [
        (a.kind, a.backup_id, a.tier_from, a.tier_to) for a in ref]


def test_retention_keeps_logs_that_a_full_on_the_servers_own_device_needs() -> None:
    """F1 was written by SQL Server to its own disk (drkit holds no copy); the logs after it are the only
    way to restore past it, so retention keeps their last copies."""
    c = Msdb()
    c.full("F1", lsn(34, 100), lsn(34, 400), m(10), native=True, status="verified")
    c.log("L1", lsn(34, 50), lsn(34, 900), m(20))
    c.log("L2", lsn(34, 900), lsn(35, 200), m(30))
    now = m(3 * 24 * 60)
    actions = retention.plan(c.backups, c.copies, [], {"local": TierSpec(1)}, now, chains=lambda db: SQLSERVER_CHAIN)
    assert [(a.kind, a.backup_id) for a in actions] == [("keep", "L1"), ("keep", "L2")]
    assert actions[0].reason.startswith("kept: the only copy left; the latest restore point of orders")
