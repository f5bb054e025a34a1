"""The metrics and ``drkit status`` asked of the catalog (aggregates, the newest chain's records, the newest audit
events: drkit.metrics ``catalog_families``, drkit.status ``catalog_status``) equal the plain computation over every
record (``catalog_families(reference=True)``, ``database_status``), on generated catalogs, through both the sqlite3
fast reader and the SQLAlchemy repository.

The generated histories are time-ordered as drkit writes them (WAL segments advance with time; a log covers the
segments since the last log), with every kind, status (failed, running, corrupt, verified), copies on tiers of the
policy and not (complete, missing, deleted, pending), WAL gaps (a failed log loses its segments), several
databases (one not in the policy), verifications with and without a measured throughput, drills and a catalog check.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from drkit.catalog import Catalog
from drkit.catalog.reader import ReadFirstCatalog
from drkit.catalog.records import BackupRecord
from drkit.config import parse_policy
from drkit.engines import chain_for
from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE, segment_name
from drkit.metrics import DrkitCollector
from drkit.runtime import Runtime
from drkit.status import catalog_status, database_status

SEG = DEFAULT_SEGMENT_SIZE
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
DATABASES = ("app", "web", "gone")  # "gone" is in the catalog, not in the policy
STATUSES = ("completed", "completed", "completed", "completed", "verified", "failed", "corrupt", "running")
COPY_STATUSES = ("complete", "complete", "complete", "missing", "deleted", "pending")

backup_step = st.tuples(
    st.sampled_from(("full", "diff", "log", "log", "log")),
    st.sampled_from(STATUSES),
    st.integers(1, 3000),  # minutes since the previous backup (up to two days: past the one-day margin)
    st.integers(0, 3),  # WAL segments written since
    st.sampled_from([frozenset(t) for t in (("local",), ("local", "offsite"), ("local", "offsite"), ("offsite",),
                                            ("cold",), ("offsite", "cold"), ())]),  # "cold" is in no policy tier
    st.sampled_from(COPY_STATUSES),
    st.integers(0, 10**6),
)
audit = st.tuples(
    st.sampled_from(DATABASES),
    st.sampled_from(("backup.verify", "drill.completed", "drill.failed", "catalog.check")),
    st.booleans(),
    st.sampled_from((None, 0, 42.5, 120.0)),
)
worlds = st.tuples(st.tuples(*(st.tuples(st.just(db), st.lists(backup_step, max_size=n))
                               for db, n in zip(DATABASES, (24, 10, 5), strict=True))),
                   st.lists(audit, max_size=8))


def history(db: str, events: list[tuple[Any, ...]]) -> list[tuple[BackupRecord, frozenset[str], str]]:
    t = NOW - timedelta(days=60)
    seg, log_next, last_full = 2, 2, None
    out = []
    for i, (kind, status, minutes, advance, tiers, copy_status, size) in enumerate(events):
        t += timedelta(minutes=minutes)
        seg = max(seg + advance, log_next)  # WAL goes on in the segment after the last one a log archived
        done = status not in ("failed", "running")
        first = seg
        if kind == "log":
            first, log_next = log_next, seg + 1
        start = t - timedelta(minutes=2)
        b = BackupRecord(
            id=f"{db}-{i}-{kind}", database=db, kind=kind, status=status,
            base_id=last_full if kind == "diff" else None, timeline=1,
            start_lsn=first * SEG + (0 if kind == "log" else 0x28), end_lsn=(seg + 1) * SEG,
            start_wal=segment_name(1, first), end_wal=segment_name(1, seg), started_at=start,
            finished_at=t if status != "running" else None, start_time=start, end_time=t if done else None,
            raw_bytes=size * 2, stored_bytes=size, sha256="ab" * 32, format="t", key_id="k",
            error="boom" if status == "failed" else None, verified_at=None, meta={"segment_size": SEG})
        if kind == "full":
            last_full = b.id
        out.append((b, tiers if done or status == "corrupt" else frozenset(), copy_status))
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "catalog.db"
    Catalog.open(f"sqlite:///{path}").close()
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worlds")


def policy(tmp: Path) -> dict[str, Any]:
    return {
        "catalog": f"sqlite:///{tmp / 'catalog.db'}",
        "tiers": {"local": {"store": "filesystem", "path": str(tmp / "local")},
                  "offsite": {"store": "filesystem", "path": str(tmp / "offsite")}},
        "databases": {db: {"engine": "postgres", "dsn": f"host=127.0.0.1 port=1 user=x dbname={db}",
                           "data_dir": str(tmp / db)} for db in ("app", "web")},
    }


def build(tmp: Path, template: Path, world: tuple[Any, ...]) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shutil.copy(template, tmp / "catalog.db")
    histories, audits = world
    cat = Catalog(f"sqlite:///{tmp / 'catalog.db'}")
    try:
        done: set[str] = set()
        for db, events in histories:
            if db in done:
                continue
            done.add(db)
            for b, tiers, copy_status in history(db, events):
                cat.import_backup(b, [(tier, f"{tier}/{b.id}", b.stored_bytes, "ab" * 32) for tier in sorted(tiers)])
                if copy_status != "complete":
                    for tier in sorted(tiers)[:1]:  # one tier's copy is damaged, gone or not yet written
                        cat.set_copy_status(b.id, tier, copy_status)
        for db, action, flag, rate in audits:
            detail: dict[str, Any]
            if action == "backup.verify":
                detail = {"passed": flag, "stored_throughput_mib_s": rate}
            elif action == "catalog.check":
                detail = {"remaining": 2 if flag else 0}
            else:
                detail = {"met": flag, "rto_seconds": rate, "rpo_seconds": 60}
            cat.audit(actor="test", action=action, database=None if action == "catalog.check" else db,
                      detail=detail)
    finally:
        cat.close()


def families(rt: Runtime, *, reference: bool) -> list[tuple[Any, ...]]:
    collector = DrkitCollector(rt, now=lambda: NOW)
    return [(m.name, m.documentation, [(s.name, s.labels, s.value) for s in m.samples])
            for m in collector.catalog_families(NOW, reference=reference)]


def check(tmp: Path, template: Path, world: tuple[Any, ...]) -> dict[str, int]:
    """Asserts the fast metrics and status equal the reference ones; how many backups each database's plan read."""
    build(tmp, template, world)
    fast_reader = Runtime(parse_policy(policy(tmp), base_dir=tmp))
    repository = Runtime(parse_policy(policy(tmp), base_dir=tmp))
    repository.__dict__["catalog"] = Catalog(f"sqlite:///{tmp / 'catalog.db'}")
    read: dict[str, int] = {}
    try:
        assert isinstance(fast_reader.catalog, ReadFirstCatalog)
        reference = families(fast_reader, reference=True)
        assert families(fast_reader, reference=False) == reference
        assert families(repository, reference=False) == reference
        for rt in (fast_reader, repository):
            for db in rt.policy.databases:
                chain = chain_for(rt, db)
                plain = database_status(db, rt.catalog.list_backups(db), rt.catalog.all_copies(db), now=NOW,
                                        tier_order=rt.tier_order, chain=chain)
                fast, latest = catalog_status(rt.catalog, db, now=NOW, tier_order=rt.tier_order, chain=chain)
                assert fast == plain
                read[db] = len(latest.backups)
    finally:
        fast_reader.close()
        repository.close()
    return read


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(worlds)
def test_fast_metrics_and_status_equal_the_reference(template: Path, workdir: Path, world: tuple[Any, ...]) -> None:
    histories: dict[str, list[Any]] = {}
    for db, events in world[0]:
        histories.setdefault(db, events)
    read = check(workdir / "w", template, world)
    for db, n in read.items():
        if len(histories[db]) > 5:
            event(f"chain planned from {'every record' if n == len(histories[db]) else 'the newest chain only'}")


# -- the edge cases by name ------------------------------------------------------------------------------------

DAY = 24 * 60
FULL, LOG = ("full", "completed", DAY, 1, frozenset({"local", "offsite"}), "complete", 100), \
    ("log", "completed", 15, 1, frozenset({"local", "offsite"}), "complete", 10)


def day(*extra: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """A day: a full, then four logs (and ``extra`` after them)."""
    return [FULL, LOG, LOG, LOG, LOG, *extra]


def test_a_long_history_plans_from_its_newest_chain_only(tmp_path: Path, template: Path) -> None:
    read = check(tmp_path / "w", template, ([("app", day() * 6)], []))
    assert read["app"] == 5 + 1  # the last day's full and logs, and the log of the day before (one-day margin)


def test_a_corrupt_newest_full_falls_back_to_the_one_before(tmp_path: Path, template: Path) -> None:
    corrupt = ("full", "corrupt", DAY, 1, frozenset({"local"}), "complete", 100)
    check(tmp_path / "w", template, ([("app", [*day() * 3, corrupt, LOG, LOG])], []))


def test_a_newest_full_without_a_complete_copy_is_skipped(tmp_path: Path, template: Path) -> None:
    gone = ("full", "completed", DAY, 1, frozenset({"local"}), "deleted", 100)
    check(tmp_path / "w", template, ([("app", [*day() * 3, gone, LOG, LOG])], []))


def test_logs_past_a_wal_gap_plan_from_every_record(tmp_path: Path, template: Path) -> None:
    lost = ("log", "failed", 15, 1, frozenset[str](), "complete", 10)
    read = check(tmp_path / "w", template, ([("app", [*day() * 3, lost, LOG, LOG])], []))
    assert read["app"] == 3 * 5 + 3  # the newest log does not join: its end is not reached, so every record


def test_a_database_with_only_failures(tmp_path: Path, template: Path) -> None:
    failed = ("full", "failed", 60, 1, frozenset[str](), "complete", 0)
    check(tmp_path / "w", template, ([("app", [failed, failed]), ("web", [])], [("app", "backup.verify", False, None)]))
