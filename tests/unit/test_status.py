"""Per-database status (drkit.status.database_status): newest backups, how far a restore reaches, RPO now."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from drkit.catalog.records import BackupRecord, CopyRecord
from drkit.engines.postgres.chain_model import POSTGRES_CHAIN
from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE, segment_name
from drkit.status import DatabaseStatus, database_status

SEG = DEFAULT_SEGMENT_SIZE
DB = "orders"
T0 = datetime(2024, 5, 1, tzinfo=UTC)
NOW = T0 + timedelta(hours=2)
TIERS = ("local", "blob")
_ids = itertools.count(1)


def m(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def rec(id: str, kind: str, first: int, last: int, end: datetime | None, *, status: str = "completed",
        base_id: str | None = None, database: str = DB) -> BackupRecord:
    started = (end or NOW) - timedelta(minutes=1)
    return BackupRecord(
        id=id, database=database, kind=kind, status=status, base_id=base_id, timeline=1,
        start_lsn=first * SEG + (0 if kind == "log" else 0x28), end_lsn=(last + 1) * SEG,
        start_wal=segment_name(1, first), end_wal=segment_name(1, last), started_at=started,
        finished_at=end, start_time=started, end_time=end, raw_bytes=10, stored_bytes=5, sha256=None,
        format="t", key_id="k", error=None if status != "failed" else "boom", verified_at=None,
        meta={"segment_size": SEG})


def copies(backups: Sequence[BackupRecord], tier: str = "local", status: str = "complete") -> list[CopyRecord]:
    return [CopyRecord(id=next(_ids), backup_id=b.id, tier=tier, store_key=b.id, status=status, stored_bytes=5,
                       sha256=None, created_at=b.started_at, updated_at=b.started_at) for b in backups]


def status_of(backups: Sequence[BackupRecord], cps: Sequence[CopyRecord] | None = None) -> DatabaseStatus:
    return database_status(DB, backups, copies(backups) if cps is None else cps, now=NOW, tier_order=TIERS,
                           chain=POSTGRES_CHAIN)


def test_newest_of_each_kind_and_rpo_from_the_end_of_the_log_chain() -> None:
    backups = [
        rec("F1", "full", 2, 2, m(10)),
        rec("L1", "log", 2, 4, m(20)),
        rec("D1", "diff", 5, 5, m(30), base_id="F1"),
        rec("L2", "log", 5, 6, m(40)),
        rec("L3", "log", 7, 8, m(50)),
    ]
    st = status_of(backups)
    assert {k: (v.id if v else None) for k, v in st.newest.items()} == {"full": "F1", "diff": "D1", "log": "L3"}
    assert st.restorable_until == m(50)
    assert st.rpo_seconds == (NOW - m(50)).total_seconds() == 70 * 60
    assert (st.corrupt, st.failed) == (0, 0)


def test_newest_ignores_corrupt_and_failed_but_counts_them() -> None:
    backups = [
        rec("F1", "full", 2, 2, m(10)),
        rec("F2", "full", 5, 5, m(60), status="corrupt"),
        rec("F3", "full", 6, 6, m(70), status="failed"),
        rec("F4", "full", 7, 7, None, status="running"),
        rec("L1", "log", 2, 3, m(20), status="verified"),
        rec("L2", "log", 4, 5, m(30), status="failed"),
    ]
    st = status_of(backups)
    assert st.newest["full"] is not None and st.newest["full"].id == "F1"
    assert st.newest["log"] is not None and st.newest["log"].id == "L1"
    assert st.newest["diff"] is None
    assert (st.corrupt, st.failed) == (1, 2)
    assert st.restorable_until == m(20)


def test_rpo_stops_at_a_gap() -> None:
    backups = [
        rec("F1", "full", 2, 2, m(10)),
        rec("L1", "log", 2, 4, m(20)),
        rec("L3", "log", 7, 8, m(50)),  # segments 5..6 never shipped
    ]
    st = status_of(backups)
    assert st.newest["log"] is not None and st.newest["log"].id == "L3"
    assert st.restorable_until == m(20)  # not L3's end: nothing joins it
    assert st.rpo_seconds == (NOW - m(20)).total_seconds()


def test_full_only_rpo_is_its_age() -> None:
    st = status_of([rec("F1", "full", 2, 2, m(100))])
    assert st.restorable_until == m(100)
    assert st.rpo_seconds == 20 * 60


def test_nothing_restorable_has_no_rpo() -> None:
    for backups in ([], [rec("F1", "full", 2, 2, m(10), status="corrupt")], [rec("L1", "log", 2, 3, m(20))]):
        st = status_of(backups)
        assert st.restorable_until is None
        assert st.rpo_seconds is None


def test_backups_without_a_complete_copy_do_not_count_as_restorable() -> None:
    backups = [rec("F1", "full", 2, 2, m(10)), rec("L1", "log", 2, 3, m(20))]
    assert status_of(backups, copies(backups, status="pending")).rpo_seconds is None
    assert status_of(backups, copies(backups, tier="elsewhere")).rpo_seconds is None
    only_full = copies(backups[:1])
    assert status_of(backups, only_full).restorable_until == m(10)


def test_other_databases_are_not_mixed_in() -> None:
    backups = [
        rec("F1", "full", 2, 2, m(10)),
        rec("B1", "full", 2, 2, m(100), database="billing"),
        rec("BL", "log", 2, 9, m(110), database="billing"),
        rec("BC", "full", 3, 3, m(5), status="corrupt", database="billing"),
    ]
    st = status_of(backups)
    assert st.newest["full"] is not None and st.newest["full"].id == "F1"
    assert st.newest["log"] is None
    assert st.restorable_until == m(10)
    assert st.corrupt == 0


def test_as_json() -> None:
    backups = [rec("F1", "full", 2, 2, m(10)), rec("L1", "log", 2, 3, m(20)),
               rec("X", "full", 4, 4, m(30), status="corrupt")]
    out = status_of(backups).as_json(NOW)
    assert out["database"] == DB
    assert out["restorable_until"] == m(20).isoformat()
    assert out["rpo_seconds"] == 100 * 60
    newest = out["newest"]
    assert isinstance(newest, dict)
    assert newest["full"] == {"id": "F1", "status": "completed", "end_time": m(10).isoformat(),
                              "age_seconds": 110 * 60, "stored_bytes": 5}
    assert newest["diff"] is None
    assert out["corrupt"] == 1 and out["failed"] == 0
    empty = status_of([]).as_json(NOW)
    assert empty["rpo_seconds"] is None and empty["restorable_until"] is None
