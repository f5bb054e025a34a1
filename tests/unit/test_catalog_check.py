"""The catalog check planner (drkit.catalog_check.plan): findings and repairs from records and listings alone."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from drkit.catalog.records import AuditRecord, BackupRecord, CopyRecord
from drkit.catalog_check import GRACE, STALE_AFTER, Deep, Finding, Inventory, StoredObject, plan
from drkit.engines.postgres.chain_model import POSTGRES_CHAIN
from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE, segment_name
from drkit.status import check_status
from drkit.tiers.naming import DATA_OBJECT, DESCRIPTOR_OBJECT, MANIFEST_OBJECT, object_key

SEG = DEFAULT_SEGMENT_SIZE
DB = "app"
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
OLD = NOW - 2 * GRACE
LOCATIONS = {"local": "fs:/b", "blob": "azure:acct/c/", "archive": "azure:acct/c/"}
TIERS = ("local", "blob", "archive")
_ids = itertools.count(1)


def rec(n: int, kind: str = "full", *, status: str = "completed", first: int = 2, last: int = 2,
        started: datetime | None = None, base_id: str | None = None, meta: dict[str, object] | None = None,
        ) -> BackupRecord:
    start = started or NOW - timedelta(days=1, hours=-n)
    end = start + timedelta(minutes=5)
    return BackupRecord(
        id=f"{DB}-{kind}-{n:04d}", database=DB, kind=kind, status=status, base_id=base_id, timeline=1,
        start_lsn=first * SEG + (0 if kind == "log" else 0x28), end_lsn=(last + 1) * SEG,
        start_wal=segment_name(1, first), end_wal=segment_name(1, last), started_at=start,
        finished_at=None if status == "running" else end, start_time=start, end_time=end, raw_bytes=100,
        stored_bytes=50, sha256="ab" * 32, format="t", key_id="k", error=None, verified_at=None,
        meta={"segment_size": SEG, **(meta or {})})


def copy(b: BackupRecord, tier: str = "local", status: str = "complete", size: int = 50) -> CopyRecord:
    return CopyRecord(id=next(_ids), backup_id=b.id, tier=tier, store_key=object_key(b, DATA_OBJECT), status=status,
                      stored_bytes=size, sha256=b.sha256, created_at=b.started_at, updated_at=b.started_at)


def objects(*backups: BackupRecord, names: Iterable[str] = (DATA_OBJECT, MANIFEST_OBJECT, DESCRIPTOR_OBJECT),
            size: int = 50, at: datetime = OLD) -> dict[str, StoredObject]:
    out = {}
    for b in backups:
        for name in names:
            key = object_key(b, name)
            out[key] = StoredObject(key, size if name == DATA_OBJECT else 10, at)
    return out


def inventories(local: dict[str, StoredObject] | None = None, blob: dict[str, StoredObject] | None = None,
                partials: Sequence[StoredObject] = (), blob_error: str | None = None) -> dict[str, Inventory]:
    return {"fs:/b": Inventory(("local",), local or {}, tuple(partials)),
            "azure:acct/c/": Inventory(("blob", "archive"), blob or {}, error=blob_error)}


def check(backups: Sequence[BackupRecord], copies: Sequence[CopyRecord], invs: dict[str, Inventory],
          **kw: object) -> list[Finding]:
    return plan(backups, copies, LOCATIONS, invs, now=NOW, tier_order=TIERS, chains=lambda db: POSTGRES_CHAIN,
                **kw)  # type: ignore[arg-type]


def kinds(findings: Sequence[Finding]) -> list[tuple[str, str]]:
    return sorted((f.kind, f.subject) for f in findings)


def test_a_catalog_that_matches_its_stores_is_clean() -> None:
    full, log = rec(1), rec(2, "log", first=2, last=3)
    backups = [full, log]
    cps = [copy(full), copy(log), copy(full, "blob"), copy(log, "blob")]
    assert check(backups, cps, inventories(objects(full, log), objects(full, log))) == []


def test_a_missing_copy_is_marked_missing_and_the_next_copy_keeps_the_point() -> None:
    full = rec(1)
    findings = check([full], [copy(full), copy(full, "blob")], inventories({}, objects(full)))
    assert kinds(findings) == [("missing", full.id)]
    (f,) = findings
    assert f.tier == "local" and f.repair is not None
    assert (f.repair.kind, f.repair.tier, f.repair.status) == ("mark-copy", "local", "missing")


def test_the_only_copy_missing_loses_a_restore_point_and_says_what() -> None:
    full, diff = rec(1), rec(2, "diff", base_id=f"{DB}-full-0001", first=3, last=3)
    findings = check([full, diff], [copy(full), copy(diff)], inventories(objects(diff)))
    assert kinds(findings) == [("lost", full.id), ("missing", full.id)]
    lost = next(f for f in findings if f.kind == "lost")
    assert lost.repair is None and lost.database == DB
    assert "full backup" in lost.detail and "the 1 differential(s) based on it cannot be restored" in lost.detail
    assert "can no longer be restored at all" in lost.detail


def test_a_lost_log_names_the_span_it_cuts_and_the_new_latest_point() -> None:
    full, l1, l2 = rec(1), rec(2, "log", first=2, last=3), rec(3, "log", first=4, last=5)
    cps = [copy(full), copy(l1), copy(l2)]
    findings = check([full, l1, l2], cps, inventories(objects(full, l1)))
    lost = next(f for f in findings if f.kind == "lost")
    assert lost.subject == l2.id and "points after" in lost.detail
    assert f"newest restorable point is now {l1.end_time.isoformat(timespec='seconds')}" in lost.detail  # type: ignore[union-attr]


def test_a_loss_is_reported_until_repaired_then_it_is_on_record() -> None:
    full = rec(1)
    assert kinds(check([full], [copy(full)], inventories({}))) == [("lost", full.id), ("missing", full.id)]
    assert check([full], [copy(full, status="missing")], inventories({})) == []


def test_wrong_size_or_hash_is_corrupt_and_a_missing_manifest_is_missing() -> None:
    a, b, c = rec(1), rec(2), rec(3)
    local = {**objects(a, size=49), **objects(b), **objects(c, names=(DATA_OBJECT, DESCRIPTOR_OBJECT))}
    deep = {(b.id, "local"): Deep("corrupt", "sha mismatch")}
    cps = [copy(x) for x in (a, b, c)] + [copy(x, "blob") for x in (a, b, c)]
    findings = check([a, b, c], cps, inventories(local, objects(a, b, c)), deep=deep)
    assert kinds(findings) == [("corrupt", a.id), ("corrupt", b.id), ("missing", c.id)]
    assert {f.subject: f.repair.status for f in findings if f.repair} == {a.id: "corrupt", b.id: "corrupt",
                                                                           c.id: "missing"}
    assert "is 49 bytes, the catalog recorded 50" in findings[0].detail


def test_an_unreadable_copy_is_reported_but_not_marked() -> None:
    a = rec(1)
    findings = check([a], [copy(a)], inventories(objects(a)), deep={(a.id, "local"): Deep("unreadable", "timeout")})
    assert kinds(findings) == [("unreadable", a.id)] and findings[0].repair is None


def test_a_missing_backup_json_is_rewritten() -> None:
    a = rec(1)
    findings = check([a], [copy(a)], inventories(objects(a, names=(DATA_OBJECT, MANIFEST_OBJECT))))
    assert kinds(findings) == [("descriptor", a.id)]
    assert findings[0].repair is not None and findings[0].repair.kind == "write-descriptor"


def test_running_rows_are_stale_when_their_process_is_gone_or_they_ran_too_long() -> None:
    dead = rec(1, status="running", meta={"process": {"host": "h1", "pid": 4242}})
    young = rec(2, status="running", started=NOW - timedelta(minutes=5))
    ancient = rec(3, status="running", started=NOW - STALE_AFTER - timedelta(hours=1))
    partial = StoredObject(f"{DB}/{dead.id}/.data.drk.part-{'0' * 32}", 7, OLD)
    local = objects(dead, young, names=(DATA_OBJECT,))
    findings = check([dead, young, ancient], [], inventories(local, partials=[partial]), dead={dead.id})
    assert kinds(findings) == [("stale", dead.id), ("stale", ancient.id)]  # their objects: not orphans
    reasons = {f.subject: f.repair.reason for f in findings if f.repair}
    assert reasons[dead.id] == "interrupted: process 4242 on host h1 gone (found by catalog check)"
    assert reasons[ancient.id].startswith("interrupted: still running after 25.0 h")


def test_orphans_are_removed_only_when_older_than_the_grace_period() -> None:
    failed, young_failed, expired = rec(1, status="failed"), rec(2, status="failed"), rec(3)
    local = {**objects(failed), **objects(young_failed, at=NOW - timedelta(minutes=1)), **objects(expired)}
    findings = check([failed, young_failed, expired], [copy(expired, status="deleted")], inventories(local))
    assert kinds(findings) == [("orphan", failed.id), ("orphan", expired.id)]
    by = {f.subject: f for f in findings}
    assert "which is failed" in by[failed.id].detail and "has no copy in local" in by[expired.id].detail
    assert by[failed.id].repair is not None and len(by[failed.id].repair.keys) == 3


def test_a_backup_the_catalog_does_not_know_is_imported_by_rebuild_never_deleted() -> None:
    known, stranger, debris, foreign = rec(1), rec(2), rec(3), rec(4)
    local = {**objects(known), **objects(stranger), **objects(debris, names=(DATA_OBJECT,)),
             **objects(foreign, names=("x_01of01.bak",))}
    findings = check([known], [copy(known)], inventories(local))
    assert kinds(findings) == [("orphan", debris.id), ("orphan", foreign.id), ("unrecorded", stranger.id)]
    by = {f.subject: f for f in findings}
    assert by[stranger.id].repair is None and "drkit catalog rebuild --from local" in by[stranger.id].detail
    assert by[foreign.id].repair is None and "left for a person" in by[foreign.id].detail
    assert by[debris.id].repair is not None and by[debris.id].repair.keys == (object_key(debris, DATA_OBJECT),)


def test_old_partial_writes_are_debris_young_ones_are_in_flight() -> None:
    old = StoredObject(f"{DB}/{DB}-full-0009/.data.drk.part-{'a' * 32}", 5, OLD)
    young = StoredObject(f"{DB}/{DB}-full-0010/.data.drk.part-{'b' * 32}", 5, NOW - timedelta(seconds=30))
    findings = check([], [], inventories(partials=[old, young]))
    assert kinds(findings) == [("partial", old.key)]
    assert findings[0].repair is not None and findings[0].repair.keys == (old.key,)


def test_an_unreachable_store_is_one_finding_and_its_copies_are_not_judged() -> None:
    full = rec(1)
    findings = check([full], [copy(full, "blob")], inventories(blob_error="connection refused"))
    assert kinds(findings) == [("unreachable", "azure:acct/c/")]
    assert "connection refused" in findings[0].detail and findings[0].repair is None


def test_two_tiers_of_one_container_share_their_objects() -> None:
    full = rec(1)
    cps = [copy(full, "blob", status="deleted"), copy(full, "archive")]
    assert check([full], cps, inventories(blob=objects(full))) == []


def test_status_shows_the_last_check_per_database() -> None:
    event = AuditRecord(id=1, at=NOW - timedelta(hours=3), actor="a", action="catalog.check", database=None,
                        subject="quick", detail={"by_database": {"app": 2, "": 1}, "deep": False})
    st = check_status(event, "app")
    assert st.findings == 3 and st.text(NOW, lambda s: f"{int(s // 3600)}h") == "3 finding(s), 3h ago"
    assert check_status(event, "crm").findings == 1
    clean = AuditRecord(id=2, at=NOW, actor="a", action="catalog.check", database=None, subject="deep",
                        detail={"by_database": {}, "deep": True})
    assert check_status(clean, "app").as_json() == {"at": NOW.isoformat(), "findings": 0, "clean": True, "deep": True}
    assert check_status(None, "app").text(NOW, str) == "never"
