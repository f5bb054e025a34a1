"""Retention planning (drkit.retention.plan): hand-written cases, then properties over generated catalogs.

The hand-written cases follow the policy of the operations guide: local 7 days; blob 30 days, once verified;
then the archive (a move) until 2555 days. The properties apply a plan to a simulated set of copies and check
what must never happen: a restore point inside a tier's window that stops planning (or plans to other
pieces), the newest verified full or a held backup losing a copy, a second sweep that still changes
something, a crash half-way that ends elsewhere than an uninterrupted sweep.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drkit import retention_reference
from drkit.catalog.records import BackupRecord, CopyRecord, HoldRecord
from drkit.engines.base import ChainModel
from drkit.engines.postgres.chain_model import POSTGRES_CHAIN, plan_restore
from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE, segment_name
from drkit.errors import RestorePlanError
from drkit.plans import Need
from drkit.retention import Action, TierSpec
from drkit.retention import plan as retention_plan

SEG = DEFAULT_SEGMENT_SIZE
DB = "orders"
T0 = datetime(2020, 1, 1, tzinfo=UTC)
TIERS = {"local": TierSpec(7), "blob": TierSpec(30), "archive": TierSpec(2555)}


def postgres(database: str) -> ChainModel:
    return POSTGRES_CHAIN


def plan(backups: Iterable[BackupRecord], copies: Iterable[CopyRecord], holds: Iterable[HoldRecord],
         tiers: Mapping[str, TierSpec], now: datetime, **kw: Any) -> list[Action]:
    """drkit.retention.plan with every database on PostgreSQL."""
    return retention_plan(backups, copies, holds, tiers, now, chains=postgres, **kw)


def same_as_reference(actions: Sequence[Action], backups: Sequence[BackupRecord], copies: Sequence[CopyRecord],
                      holds: Sequence[HoldRecord], tiers: Mapping[str, TierSpec], now: datetime, **kw: Any) -> bool:
    """True when drkit.retention_reference plans the same actions (kinds, backups, tiers; not the reasons)."""
    ref = retention_reference.plan(backups, copies, holds, tiers, now, chains=postgres, **kw)
    got = [(a.kind, a.backup_id, a.tier_from, a.tier_to) for a in actions]
    want = [(a.kind, a.backup_id, a.tier_from, a.tier_to) for a in ref]
    assert got == want
    return True


def restore_needs(backups: Sequence[BackupRecord], copies: Iterable[CopyRecord], *, tier_order: Sequence[str],
                  now: datetime, since: datetime) -> dict[str, Need]:
    """What the PostgreSQL restore index says the targets in ``[since, now]`` read (one database)."""
    ok = {c.backup_id for c in copies if c.status == "complete" and c.tier in tier_order}
    return POSTGRES_CHAIN.index(backups, ok.__contains__).needs(now, since)


def d(days: float) -> datetime:
    return T0 + timedelta(days=days)


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


# -- building catalogs -------------------------------------------------------------------------------

State = dict[tuple[str, str], str]  # (backup id, tier) -> copy status


@dataclass
class Cat:
    backups: list[BackupRecord] = field(default_factory=list)
    state: State = field(default_factory=dict)
    holds: list[HoldRecord] = field(default_factory=list)

    def _add(self, rec: BackupRecord, tiers: Iterable[str] | Mapping[str, str]) -> BackupRecord:
        self.backups.append(rec)
        items = tiers.items() if isinstance(tiers, Mapping) else ((t, "complete") for t in tiers)
        for tier, status in items:
            self.state[(rec.id, tier)] = status
        return rec

    def base(self, id: str, kind: str, *, seg: int, end: datetime | None, tl: int = 1, base_id: str | None = None,
             status: str = "verified", tiers: Iterable[str] | Mapping[str, str] = ("local",),
             database: str = DB) -> BackupRecord:
        start = (end or T0) - timedelta(minutes=1)
        return self._add(BackupRecord(
            id=id, database=database, kind=kind, status=status, base_id=base_id, timeline=tl,
            start_lsn=seg * SEG + 0x28, end_lsn=seg * SEG + 0x1000, start_wal=segment_name(tl, seg),
            end_wal=segment_name(tl, seg), started_at=start, finished_at=end, start_time=start, end_time=end,
            raw_bytes=1000, stored_bytes=500, sha256="a" * 64, format="t", key_id="k", error=None,
            verified_at=end if status == "verified" else None, meta={"segment_size": SEG}), tiers)

    def full(self, id: str, **kw: Any) -> BackupRecord:
        return self.base(id, "full", **kw)

    def diff(self, id: str, base_id: str, **kw: Any) -> BackupRecord:
        return self.base(id, "diff", base_id=base_id, **kw)

    def log(self, id: str, first: int, last: int, *, end: datetime | None, tl: int = 1, status: str = "verified",
            tiers: Iterable[str] | Mapping[str, str] = ("local",), database: str = DB) -> BackupRecord:
        start = (end or T0) - timedelta(minutes=1)
        return self._add(BackupRecord(
            id=id, database=database, kind="log", status=status, base_id=None, timeline=tl,
            start_lsn=first * SEG, end_lsn=(last + 1) * SEG, start_wal=segment_name(tl, first),
            end_wal=segment_name(tl, last), started_at=start, finished_at=end, start_time=start, end_time=end,
            raw_bytes=1000, stored_bytes=500, sha256="b" * 64, format="t", key_id="k", error=None,
            verified_at=None, meta={"segment_size": SEG}), tiers)

    def hold(self, backup_id: str, *, by: str = "alice", reason: str = "INC-42", removed: bool = False) -> None:
        self.holds.append(HoldRecord(
            id=len(self.holds) + 1, backup_id=backup_id, database=DB, reason=reason, created_at=T0, created_by=by,
            removed_at=T0 if removed else None, removed_by="bob" if removed else None,
            removed_reason="closed" if removed else None))

    @property
    def copies(self) -> list[CopyRecord]:
        return copies_of(self.state)

    def plan(self, now: datetime, tiers: Mapping[str, TierSpec] = TIERS, **kw: Any) -> list[Action]:
        """The fast planner's actions, checked against the reference planner's."""
        actions = plan(self.backups, self.copies, self.holds, tiers, now, **kw)
        assert same_as_reference(actions, self.backups, self.copies, self.holds, tiers, now, **kw)
        return actions

    def where(self, backup_id: str) -> set[str]:
        return {t for (b, t), s in self.state.items() if b == backup_id and s == "complete"}

    def sweep(self, now: datetime, tiers: Mapping[str, TierSpec] = TIERS, **kw: Any) -> list[Action]:
        actions = self.plan(now, tiers, **kw)
        self.state = apply(self.state, actions)
        return actions


def copies_of(state: State) -> list[CopyRecord]:
    return [CopyRecord(id=n, backup_id=b, tier=t, store_key=f"{t}/{b}", status=s, stored_bytes=1, sha256=None,
                       created_at=T0, updated_at=T0) for n, ((b, t), s) in enumerate(sorted(state.items()), 1)]


def apply(state: State, actions: Iterable[Action], *, strict: bool = True) -> State:
    """The state after the actions; each must make sense (a source that is complete, no duplicate copy)."""
    out = dict(state)
    for a in actions:
        src = (a.backup_id, a.tier_from)
        if a.kind in ("copy", "move"):
            assert a.tier_to is not None
            dst = (a.backup_id, a.tier_to)
            if out.get(src) != "complete":
                assert not strict, f"{a}: no complete source copy"
                continue  # the source went away: this copy fails, the next sweep plans it again
            assert out.get(dst) != "complete", f"{a}: the destination already holds a complete copy"
            out[dst] = "complete"
            if a.kind == "move":
                out[src] = "deleted"
        elif a.kind == "delete":
            assert out.get(src) == "complete", f"{a}: nothing to delete"
            out[src] = "deleted"
        else:
            assert out.get(src) == "complete", f"{a}: nothing to keep"
    return out


def of(actions: Sequence[Action], backup_id: str, tier: str | None = None) -> list[Action]:
    return [a for a in actions if a.backup_id == backup_id and (tier is None or a.tier_from == tier)]


def changes(actions: Iterable[Action]) -> list[Action]:
    return [a for a in actions if a.changes]


def one(actions: Sequence[Action], backup_id: str, tier: str | None = None) -> Action:
    found = of(actions, backup_id, tier)
    assert len(found) == 1, found
    return found[0]


# -- hand-written cases ------------------------------------------------------------------------------


def diff_world(tiers: Iterable[str] = ("local",)) -> Cat:
    """F1 (d0) L1 (d0.25) D1 on F1 (d0.5) L2 (d0.75) L3 (d1.0) F2 (d1.1) L4 (d2): all verified."""
    c = Cat()
    c.full("F1", seg=2, end=d(0), tiers=tiers)
    c.log("L1", 2, 4, end=d(0.25), tiers=tiers)
    c.diff("D1", "F1", seg=5, end=d(0.5), tiers=tiers)
    c.log("L2", 5, 6, end=d(0.75), tiers=tiers)
    c.log("L3", 7, 8, end=d(1.0), tiers=tiers)
    c.full("F2", seg=9, end=d(1.1), tiers=tiers)
    c.log("L4", 9, 10, end=d(2), tiers=tiers)
    return c


LOCAL_ONLY = {"local": TierSpec(7)}


def test_a_diffs_full_outlives_the_diff() -> None:
    c = diff_world()
    actions = c.plan(d(7.3), LOCAL_ONLY)
    keep = one(actions, "F1")
    assert keep.kind == "keep"
    assert keep.reason == "kept: diff D1 on this full is inside local's 7-day window"
    assert not of(actions, "D1")  # D1 is 6.8 days old: simply inside the window
    # Sweep hour by hour: the diff never exists without its full.
    for hour in range(6 * 24, 12 * 24):
        c.sweep(h(hour), LOCAL_ONLY)
        if c.where("D1"):
            assert c.where("F1"), f"D1 kept without its full at hour {hour}"
    assert not c.where("D1") and not c.where("F1")


def test_in_blob_the_reason_names_the_diff_and_the_window() -> None:
    c = diff_world(("blob",))
    actions = c.plan(d(30.6))  # blob's window starts at d0.6: targets there restore from D1
    assert one(actions, "F1").reason == "kept: diff D1 on this full is inside blob's 30-day window"
    assert one(actions, "F1").kind == "keep"
    assert one(actions, "L1").kind == "move"  # needed by no target inside blob's window: goes to archive


def test_logs_needed_by_a_retained_point_are_kept() -> None:
    c = diff_world()
    # Window [d0.9, d7.9]: target d0.9 restores from D1 with L2 and L3; targets up to F2 (d1.1) need L4.
    # L3 and L4 are younger than 7 days anyway; L2 (7.15 days) is kept for them, L1 is needed by nothing.
    actions = c.plan(d(7.9), LOCAL_ONLY)
    assert [(a.backup_id, a.kind) for a in actions] == [
        ("L1", "delete"), ("F1", "keep"), ("D1", "keep"), ("L2", "keep")]
    assert one(actions, "L2").reason == ("kept: restore points up to 2020-01-02T02:23:59+00:00 inside local's 7-day "
                                         "window replay this log (from diff D1)")
    assert one(actions, "D1").reason == ("kept: restore points up to 2020-01-02T02:23:59+00:00 inside local's 7-day "
                                         "window restore from this diff")
    assert one(actions, "L1").reason.startswith("local copy older than 7 d (7.7 d); no restore point")
    c.state = apply(c.state, actions)
    for target in (d(0.9), d(0.95), d(1.05), d(1.1), d(1.5), None):
        plan_restore(DB, c.backups, c.copies, target=target, now=d(7.9), tier_order=["local"])
    # Once the window starts after F2, the whole first chain goes.
    later = c.plan(d(8.2), LOCAL_ONLY)
    assert {a.backup_id for a in later if a.kind == "delete"} == {"F1", "D1", "L2", "L3"}


def test_legal_hold_wins_and_covers_the_held_backups_chain() -> None:
    c = diff_world(("archive",))
    c.full("F9", seg=20, end=d(3000), tiers=("local",))  # a newer verified full: F1/F2 are not "newest"
    c.hold("L2", by="alice", reason="INC-42")
    c.hold("L4", by="bob", reason="INC-7", removed=True)  # a removed hold protects nothing
    actions = c.plan(d(3000.5))
    assert not [a for a in actions if a.kind == "delete" and a.backup_id in {"F1", "D1", "L2"}]
    assert one(actions, "L2").reason == "kept: legal hold by alice: INC-42"
    assert one(actions, "F1").reason == ("kept: restoring L2 needs it, and that backup is under legal hold by "
                                         "alice: INC-42")
    assert one(actions, "D1").kind == "keep"
    assert {a.backup_id for a in actions if a.kind == "delete"} == {"L1", "L3", "F2", "L4"}
    assert all("older than 2555 d" in a.reason for a in actions if a.kind == "delete")


def test_held_backup_is_copied_but_never_moved_away() -> None:
    c = Cat()
    c.full("F1", seg=2, end=d(0), tiers=("blob",))
    c.full("F2", seg=4, end=d(31), tiers=("local", "blob"))
    c.hold("F1")
    actions = c.plan(d(31.5))
    assert [(a.kind, a.tier_from, a.tier_to) for a in of(actions, "F1")] == [
        ("copy", "blob", "archive"), ("keep", "blob", None)]
    assert of(actions, "F1")[1].reason == "kept: legal hold by alice: INC-42"


def test_unverified_backup_is_not_copied_to_blob() -> None:
    c = Cat()
    c.full("F1", seg=2, end=d(0), status="completed")
    c.log("L1", 2, 3, end=d(0.5), status="completed")
    c.full("F2", seg=4, end=d(1), status="verified")
    c.full("FX", seg=6, end=d(1.5), status="corrupt")
    actions = c.plan(d(1.6))
    assert [(a.kind, a.backup_id, a.tier_from, a.tier_to) for a in actions] == [
        ("copy", "F2", "local", "blob")]
    assert actions[0].reason == "copy to blob: verified; blob keeps backups for 30 d (this one is 14.4 h old)"
    # Past local's window, the unverified pieces a restore point needs stay local: the only copy.
    actions = c.plan(d(8.6))
    assert one(actions, "F1").kind == "keep"
    assert "the only copy left" in one(actions, "F1").reason
    assert "(not verified, so it cannot go to blob)" in one(actions, "F1").reason
    assert one(actions, "FX").kind == "delete"
    assert one(actions, "FX").reason.startswith("local copy of a corrupt backup older than 7 d")
    assert (one(actions, "F2").kind, one(actions, "F2").tier_to) == ("move", "blob")


def test_verified_kinds_limits_the_gate() -> None:
    c = Cat()
    c.full("F1", seg=2, end=d(0), status="completed")
    c.log("L1", 2, 3, end=d(0.5), status="completed")
    actions = c.plan(d(1), verified_kinds={"full"})  # verification only ever marks fulls
    assert [(a.kind, a.backup_id, a.tier_to) for a in actions] == [("copy", "L1", "blob")]
    assert actions[0].reason == "copy to blob: blob keeps backups for 30 d (this one is 12.0 h old)"


def test_verification_after_the_local_window_moves_the_backup_to_blob() -> None:
    c = Cat()
    c.full("F1", seg=2, end=d(0))
    c.full("F2", seg=4, end=d(1))
    actions = c.plan(d(8))
    move = one(actions, "F1")
    assert (move.kind, move.tier_from, move.tier_to) == ("move", "local", "blob")
    assert move.reason == "local copy older than 7 d (8.0 d); blob keeps it until 30 d (verified)"


def test_newest_verified_full_is_never_deleted_even_when_old() -> None:
    c = Cat()
    c.full("F1", seg=2, end=d(0), tiers=("archive",))
    c.full("F0", seg=1, end=d(-1), tiers=("archive",))  # older, verified
    c.full("F2", seg=4, end=d(1), status="completed", tiers=("archive",))  # newer, but never verified
    c.full("F3", seg=6, end=d(2), status="corrupt", tiers=("archive",))
    actions = c.plan(d(4000))
    assert one(actions, "F1").kind == "keep"
    assert one(actions, "F1").reason == "kept: newest verified full of orders"
    # the latest restore point (plan_restore(target=None)) keeps its chain too, verified or not
    assert one(actions, "F2").kind == "keep"
    assert one(actions, "F2").reason == ("kept: the only copy left; the latest restore point of orders "
                                         "(2020-01-02T00:00:00+00:00) restores from it (not verified, so it "
                                         "cannot go to blob)")
    assert [(a.backup_id, a.kind) for a in actions if a.kind == "delete"] == [("F0", "delete"), ("F3", "delete")]


def test_newest_verified_full_stays_readable() -> None:
    c = Cat()
    c.full("F1", seg=2, end=d(0), tiers=("local", "blob"))
    actions = c.plan(d(40))  # backups stopped 40 days ago
    assert [(a.kind, a.tier_from, a.tier_to) for a in actions] == [
        ("copy", "blob", "archive"), ("delete", "local", None), ("keep", "blob", None)]
    assert of(actions, "F1")[2].reason == ("kept: newest verified full of orders; its last copy readable "
                                                 "without rehydration")
    c.state = apply(c.state, actions)
    assert not changes(c.plan(d(41)))
    c.full("F2", seg=4, end=d(41), tiers=("local", "blob"))  # once a newer one exists, F1 archives normally
    assert [(a.kind, a.tier_from) for a in of(c.plan(d(41.5)), "F1")] == [("delete", "blob")]


def test_blob_expiry_moves_to_archive_and_archive_expiry_deletes() -> None:
    c = Cat()
    c.full("F1", seg=2, end=d(0), tiers=("blob",))
    c.full("F2", seg=4, end=d(1), tiers=("local", "blob"))
    move = one(c.plan(d(31)), "F1")
    assert (move.kind, move.tier_from, move.tier_to) == ("move", "blob", "archive")
    assert move.reason == "blob copy older than 30 d (31.0 d); archive keeps it until 2555 d"
    c.sweep(d(31))
    assert c.where("F1") == {"archive"}
    assert not changes(of(c.plan(d(2554.9)), "F1"))
    delete = one(c.plan(d(2555.1)), "F1")  # without logs, F1 restores only its own point, d0
    assert delete.kind == "delete"
    assert delete.reason == ("archive copy older than 2555 d (2555.1 d); no restore point inside any tier's window "
                             "needs it and no tier keeps it any longer")


def test_full_lifecycle_under_daily_sweeps() -> None:
    c = Cat()
    c.full("F1", seg=2, end=d(0), status="completed")
    c.log("L1", 2, 3, end=d(0.9))
    c.full("F2", seg=4, end=d(1))
    seen: list[tuple[float, set[str]]] = []
    for day in range(0, 2600, 1):
        if day == 3:
            c.backups[0] = dataclasses.replace(c.backups[0], status="verified")
        c.sweep(d(day + 0.5))
        seen.append((day, c.where("F1")))
    assert dict(seen)[0] == {"local"}  # not verified yet
    assert dict(seen)[3] == {"local", "blob"}  # verified on day 3
    assert dict(seen)[7] == {"local", "blob"}  # targets d0.5 to d0.9 (L1) restore from it: inside the window
    assert dict(seen)[8] == {"blob"}
    assert dict(seen)[30] == {"blob"}
    assert dict(seen)[31] == {"archive"}
    assert dict(seen)[2555] == {"archive"}
    assert dict(seen)[2556] == set()
    # the newest verified full keeps its readable blob copy; its archive copy expired with the archive window
    assert dict(seen)[2599] == set() and c.where("F2") == {"blob"}


def test_no_deletes_when_a_tier_holds_the_only_copy() -> None:
    c = diff_world(("local",))
    for b in list(c.backups):
        c.backups[c.backups.index(b)] = dataclasses.replace(b, status="completed")
    actions = c.plan(d(20))  # everything past local's window, nothing verified, so nothing can go to blob
    needed = {"F2", "L4"}  # the latest chain: inside every window
    for backup_id in needed:
        assert one(actions, backup_id).kind == "keep"
        assert "the only copy left" in one(actions, backup_id).reason
    deleted = {a.backup_id for a in actions if a.kind == "delete"}
    assert not deleted & needed
    plan_restore(DB, c.backups, copies_of(apply(c.state, actions)), target=None, now=d(20),
                 tier_order=list(TIERS))


def test_pending_copy_is_planned_again_and_foreign_tiers_and_running_backups_are_left_alone() -> None:
    c = Cat()
    c.full("F1", seg=2, end=d(0), tiers={"local": "complete", "blob": "pending", "tape": "complete"})
    c.full("R", seg=4, end=None, status="running", tiers=("local",))
    actions = c.plan(d(1))
    assert [(a.kind, a.backup_id, a.tier_to) for a in actions] == [("copy", "F1", "blob")]
    assert actions[0].reason.endswith("; a previous copy was left pending")
    assert not [a for a in c.plan(d(5000)) if a.tier_from == "tape" or a.backup_id == "R"]


def test_routine_keeps_list_every_kept_copy() -> None:
    c = diff_world(("local", "blob"))
    quiet = c.plan(d(2.5))
    loud = c.plan(d(2.5), routine_keeps=True)
    assert not quiet
    assert len(loud) == 2 * len(c.backups) and {a.kind for a in loud} == {"keep"}
    assert one(loud, "F2", "blob").reason == "blob copy is 1.4 d old, inside its 30-day window"


def test_huge_windows_and_naive_now() -> None:
    c = diff_world()
    actions = c.plan(d(10), {"local": TierSpec(10**6), "blob": TierSpec(10**9)})
    assert {a.kind for a in actions} == {"copy"} and len(actions) == len(c.backups)
    with pytest.raises(ValueError, match="timezone-aware"):
        c.plan(datetime(2020, 1, 10))


def test_tier_validation() -> None:
    with pytest.raises(ValueError, match="first"):
        plan([], [], [], {"archive": TierSpec(7), "local": TierSpec(7)}, d(0))
    with pytest.raises(ValueError, match="negative"):
        plan([], [], [], {"local": TierSpec(-1)}, d(0))
    assert plan([], [], [], {}, d(0)) == []


def test_action_tier_and_changes() -> None:
    copy = Action("copy", "F1", DB, "local", "blob", "r")
    delete = Action("delete", "F1", DB, "local", None, "r")
    assert (copy.tier, copy.changes, delete.tier, delete.changes) == ("blob", True, "local", True)
    assert not Action("keep", "F1", DB, "local", None, "r").changes


# -- generated catalogs and policies -----------------------------------------------------------------


@dataclass
class World:
    cat: Cat
    now: datetime
    tiers: dict[str, TierSpec]
    options: dict[str, Any]
    times: list[datetime]

    @property
    def order(self) -> list[str]:
        return list(self.tiers)

    def plan(self, state: State | None = None) -> list[Action]:
        copies = copies_of(self.cat.state if state is None else state)
        return plan(self.cat.backups, copies, self.cat.holds, self.tiers, self.now, **self.options)


_COPY_TIERS = st.sampled_from(["local", "blob", "archive", "tape"])
_COPY_STATUS = st.sampled_from(["complete"] * 6 + ["pending", "deleted"])
STATUS = st.sampled_from(["verified"] * 6 + ["completed"] * 4 + ["corrupt", "failed", "running"])


@st.composite
def copy_sets(draw: st.DrawFn, order: Sequence[str]) -> dict[str, str]:
    """Mostly a complete copy in a policy tier, often several; sometimes anything at all."""
    out: dict[str, str] = dict(draw(st.lists(st.tuples(_COPY_TIERS, _COPY_STATUS), max_size=3)))
    if draw(st.integers(0, 9)):
        out[draw(st.sampled_from(list(order)))] = "complete"
    return out


@st.composite
def policies(draw: st.DrawFn) -> tuple[dict[str, TierSpec], dict[str, Any]]:
    names = ["local"] + [t for t in ("blob", "archive") if draw(st.booleans())]
    keeps = {"local": st.integers(0, 6), "blob": st.integers(0, 25), "archive": st.integers(0, 60)}
    tiers = {t: TierSpec(draw(keeps[t])) for t in names}
    options: dict[str, Any] = {}
    if draw(st.integers(0, 3)):
        options["verified_only_to"] = frozenset(draw(st.lists(st.sampled_from(names[1:] or ["blob"]), max_size=2)))
    if not draw(st.integers(0, 3)):
        options["verified_kinds"] = frozenset(draw(st.lists(st.sampled_from(["full", "diff", "log"]), max_size=3)))
    if len(names) > 1 and draw(st.integers(0, 3)):
        options["move_into"] = frozenset(draw(st.lists(st.sampled_from(names[1:]), max_size=2)))
    elif len(names) > 1 and not draw(st.integers(0, 3)):
        options["move_into"] = frozenset()
    return tiers, options


@st.composite
def worlds(draw: st.DrawFn) -> World:
    """Backups as drkit writes them (see test_chain.worlds), hours apart, copies scattered over tiers."""
    tiers, options = draw(policies())
    order = list(tiers)
    cat = Cat()
    t = 0.0
    tl = 1
    cur = 2
    next_log: int | None = None
    last_full: BackupRecord | None = None
    times: list[datetime] = []
    kinds = ["full", "diff", "diff", *["log"] * 8, "gap", "break", "promote"]
    events = ["full", *draw(st.lists(st.sampled_from(kinds), min_size=2, max_size=25))]
    for n, ev in enumerate(events, 1):
        t += draw(st.integers(1, 40))
        if ev != "promote":
            cur += draw(st.integers(0, 2))
        if ev == "diff" and (last_full is None or last_full.timeline != tl):
            ev = "full"
        if ev == "log" and next_log is None:
            ev = "full"
        if ev in ("full", "diff", "log"):
            status = draw(STATUS)
            end = None if status == "running" else h(t)
            where = draw(copy_sets(order))
        if ev == "full":
            rec = cat.full(f"F{n}", seg=cur, end=end, tl=tl, status=status, tiers=where)
            if status in ("completed", "verified", "corrupt"):
                last_full = rec
                if next_log is None:
                    next_log = cur
            cur += 1
            times.append(h(t))
        elif ev == "diff":
            assert last_full is not None
            cat.diff(f"D{n}", last_full.id, seg=cur, end=end, tl=tl, status=status, tiers=where)
            cur += 1
            times.append(h(t))
        elif ev == "log":
            assert next_log is not None
            cur = max(cur, next_log)
            cat.log(f"L{n}", next_log, cur, end=end, tl=tl, status=status, tiers=where)
            if status in ("completed", "verified", "corrupt"):
                next_log = cur + 1
            cur += 1
            times.append(h(t))
        elif ev == "gap" and next_log is not None:
            next_log += draw(st.integers(1, 3))
            cur = max(cur, next_log)
        elif ev == "break":
            next_log = None
            cur += draw(st.integers(1, 3))
        elif ev == "promote":
            tl += 1
            next_log = None
    for b in cat.backups:
        if draw(st.integers(0, 12)) == 0:
            cat.hold(b.id, removed=draw(st.booleans()))
    now = h(t + draw(st.integers(0, 24 * 90)))
    return World(cat, now, tiers, options, times)


def targets(w: World) -> list[datetime]:
    """Every instant where a restore chain can change, and around it, inside the widest window."""
    since = w.now - timedelta(days=max(t.keep_days for t in w.tiers.values()))
    points = {w.now, since, *(w.now - timedelta(days=t.keep_days) for t in w.tiers.values())}
    for x in w.times:
        points.update({x, x - timedelta(microseconds=1), x + timedelta(microseconds=1), x - timedelta(minutes=30)})
    return sorted(p for p in points if since <= p <= w.now)


def restores(w: World, state: State) -> dict[datetime | None, list[str] | None]:
    copies = copies_of(state)
    out: dict[datetime | None, list[str] | None] = {}
    for target in [None, *targets(w)]:
        try:
            got = plan_restore(DB, w.cat.backups, copies, target=target, now=w.now, tier_order=w.order)
        except RestorePlanError:
            out[target] = None
        else:
            out[target] = [p.backup.id for p in got.pieces]
    return out


def newest_verified_full(w: World, state: State) -> BackupRecord | None:
    with_copy = {b for (b, t), s in state.items() if s == "complete" and t in w.tiers}
    fulls = [b for b in w.cat.backups if b.kind == "full" and b.status == "verified" and b.end_time is not None
             and b.id in with_copy]
    return max(fulls, key=lambda b: b.end_time or T0, default=None)


def protected(w: World) -> set[str]:
    """The held backups and every piece their own restore reads (plan_for_backup, when it plans; for a diff
    of any status and for a restorable backup)."""
    held = {hd.backup_id for hd in w.cat.holds if hd.active}
    out = set(held)
    copies = w.cat.copies
    by_id = {b.id: b for b in w.cat.backups}
    for backup_id in held:
        b = by_id[backup_id]
        if b.kind == "diff" or b.status in ("completed", "verified"):
            try:
                got = POSTGRES_CHAIN.plan_for_backup(b, w.cat.backups, copies, tier_order=w.order)
            except RestorePlanError:
                continue
            out.update(p.backup.id for p in got.pieces)
    return out


def complete(state: State, tiers: Iterable[str]) -> set[tuple[str, str]]:
    names = set(tiers)
    return {k for k, s in state.items() if s == "complete" and k[1] in names}


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(worlds())
def test_every_restore_point_inside_a_window_still_plans_to_the_same_pieces(w: World) -> None:
    actions = w.plan()
    after = apply(w.cat.state, actions)
    before_plans, after_plans = restores(w, w.cat.state), restores(w, after)
    for target, pieces in before_plans.items():
        if pieces is not None:
            assert after_plans[target] == pieces, f"target {target}: {pieces} -> {after_plans[target]}"


@SETTINGS
@given(worlds())
def test_actions_are_sound(w: World) -> None:
    actions = w.plan()
    by_id = {b.id: b for b in w.cat.backups}
    seen: set[tuple[str, str]] = set()
    options = {"verified_only_to": frozenset({"blob"}), "move_into": frozenset({"archive"}), **w.options}
    for a in actions:
        assert a.tier_from in w.tiers and (a.tier_to is None or a.tier_to in w.tiers), a
        assert by_id[a.backup_id].status != "running", a
        assert a.reason, a
        key = (a.backup_id, a.tier)
        assert key not in seen, f"two actions on one copy: {a}"
        seen.add(key)
        if a.kind in ("copy", "move"):
            assert a.tier_to is not None
            assert w.order.index(a.tier_from) < w.order.index(a.tier_to), f"copies only flow down the tiers: {a}"
            assert by_id[a.backup_id].status in ("completed", "verified"), a
            kind = by_id[a.backup_id].kind
            if a.tier_to in options["verified_only_to"] and kind in w.options.get("verified_kinds", {kind}):
                assert by_id[a.backup_id].status == "verified", f"unverified backup promoted: {a}"
    assert [a.kind for a in actions] == sorted((a.kind for a in actions), key=["copy", "move", "delete",
                                                                               "keep"].index)
    apply(w.cat.state, actions)  # sources exist, nothing is copied twice, deletes hit complete copies


@SETTINGS
@given(worlds())
def test_newest_verified_full_and_held_backups_keep_their_copies(w: World) -> None:
    after = apply(w.cat.state, w.plan())
    newest = newest_verified_full(w, w.cat.state)
    if newest is not None:
        before = {t for (b, t) in complete(w.cat.state, w.tiers) if b == newest.id}
        now = {t for (b, t) in complete(after, w.tiers) if b == newest.id}
        assert now, f"newest verified full {newest.id} lost its last copy"
        readable = set(w.order) - set(w.options.get("move_into", {"archive"}))
        if before & readable:
            assert now & readable, f"newest verified full {newest.id} is no longer readable without rehydration"
    keep = protected(w)
    for key in complete(w.cat.state, w.tiers):
        if key[0] in keep:
            assert after.get(key) == "complete", f"copy {key} of a held chain is gone"


@SETTINGS
@given(worlds())
def test_the_last_copy_of_a_needed_or_promised_backup_is_never_deleted(w: World) -> None:
    after = apply(w.cat.state, w.plan())
    since = w.now - timedelta(days=max(t.keep_days for t in w.tiers.values()))
    needs = restore_needs(w.cat.backups, w.cat.copies, tier_order=w.order, now=w.now, since=since)
    gated: set[str] = set()
    moves = w.options.get("move_into", {"archive"})
    for i, name in enumerate(w.order):  # a move tier takes over from the tier before it, and its gate
        if name in w.options.get("verified_only_to", {"blob"}) or (name in moves and w.order[i - 1] in gated):
            gated.add(name)
    for b in w.cat.backups:
        had = {t for (x, t) in complete(w.cat.state, w.tiers) if x == b.id}
        has = {t for (x, t) in complete(after, w.tiers) if x == b.id}
        if not had or has:
            continue
        assert b.id not in needs, f"{b.id} is needed until {needs[b.id].until} and lost its last copy"
        ref = b.end_time or b.finished_at or b.started_at
        for name, tier in w.tiers.items():
            passes = b.status == "verified" or b.kind not in w.options.get("verified_kinds", {b.kind})
            promised = ref > w.now - timedelta(days=tier.keep_days) and (
                name in had or (b.status in ("completed", "verified") and (passes or name not in gated)))
            assert not promised, f"{b.id}: {name} still promises it, yet its last copy went"


@SETTINGS
@given(worlds())
def test_the_reference_planner_gives_the_same_actions(w: World) -> None:
    assert same_as_reference(w.plan(), w.cat.backups, w.cat.copies, w.cat.holds, w.tiers, w.now, **w.options)


@SETTINGS
@given(worlds())
def test_planning_again_changes_nothing(w: World) -> None:
    after = apply(w.cat.state, w.plan())
    again = w.plan(after)
    assert not changes(again), changes(again)


@SETTINGS
@given(worlds(), st.data())
def test_a_crash_half_way_then_a_rerun_ends_in_the_same_state(w: World, data: st.DataObject) -> None:
    actions = w.plan()
    whole = apply(w.cat.state, actions)
    partial: list[Action] = []
    for a in actions:
        fate = data.draw(st.sampled_from(["done", "not done", "half"]))
        if fate == "done":
            partial.append(a)
        elif fate == "half" and a.kind == "move":  # copied, but the source not yet deleted
            partial.append(Action("copy", a.backup_id, a.database, a.tier_from, a.tier_to, a.reason))
    crashed = apply(w.cat.state, partial, strict=False)
    rerun = apply(crashed, w.plan(crashed), strict=False)
    rerun = apply(rerun, w.plan(rerun))  # a copy whose source a move took away is planned from its new place
    assert complete(rerun, w.tiers) == complete(whole, w.tiers)


@SETTINGS
@given(worlds())
def test_restore_needs_are_exactly_what_plan_restore_reads(w: World) -> None:
    since = w.now - timedelta(days=max(t.keep_days for t in w.tiers.values()))
    needs = restore_needs(w.cat.backups, w.cat.copies, tier_order=w.order, now=w.now, since=since)
    plans = restores(w, w.cat.state)
    for target, pieces in plans.items():
        for piece in pieces or []:
            assert piece in needs, f"{piece} is read for {target} but not needed"
            assert target is None or needs[piece].until >= target, (piece, target, needs[piece])
    copies = w.cat.copies
    for backup_id, need in needs.items():
        got = plan_restore(DB, w.cat.backups, copies, target=need.until, now=w.now, tier_order=w.order)
        assert backup_id in [p.backup.id for p in got.pieces], (backup_id, need)
        assert need.base.id in [p.backup.id for p in got.pieces]


@SETTINGS
@given(worlds(), st.data())
def test_the_chain_of_a_held_backup_is_its_plan_for_backup(w: World, data: st.DataObject) -> None:
    b = data.draw(st.sampled_from(w.cat.backups))
    copies = w.cat.copies
    ok = {c.backup_id for c in copies if c.status == "complete" and c.tier in w.order}
    index = POSTGRES_CHAIN.index(w.cat.backups, ok.__contains__)
    try:
        got = POSTGRES_CHAIN.plan_for_backup(b, w.cat.backups, copies, tier_order=w.order)
        want = [p.backup.id for p in got.pieces]
    except RestorePlanError:
        want = [b.id]
    if b.kind == "log" and b.status not in ("completed", "verified"):
        return  # retention asks only for a diff of any status or a restorable backup
    assert [x.id for x in index.chain_of(b, {x.id: x for x in w.cat.backups})] == want


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_daily_sweeps_keep_every_window_restorable(w: World) -> None:
    """Sweep every day from the first backup on, applying each plan: the invariants hold at every step."""
    state = dict(w.cat.state)
    start = w.times[0] if w.times else T0
    span = max(t.keep_days for t in w.tiers.values()) + 3
    for day in itertools.count():
        now = start + timedelta(days=day, hours=5)
        if now > w.now + timedelta(days=span):
            break
        step = World(Cat(w.cat.backups, state, w.cat.holds), now, w.tiers, w.options, w.times)
        actions = step.plan()
        after = apply(state, actions)
        before_plans, after_plans = restores(step, state), restores(step, after)
        for target, pieces in before_plans.items():
            if pieces is not None:
                assert after_plans[target] == pieces, f"day {day}, target {target}"
        assert not changes(step.plan(after)), f"day {day}"
        state = after
