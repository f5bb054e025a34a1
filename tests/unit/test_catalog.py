"""Behaviour of the catalog (drkit.catalog), on SQLite.

Every test that takes the ``catalog`` or ``catalog_url`` fixture (and is not named ``test_sqlite_*``) is
backend-independent: ``tests/integration/test_catalog_postgres.py`` re-runs it unchanged against a real
PostgreSQL by overriding ``catalog_url``. Keep such tests free of SQLite assumptions.
"""

from __future__ import annotations

import functools
import itertools
import pickle
import threading
from collections.abc import Callable, Iterator
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, inspect, text
from sqlalchemy import exc as sa_exc

from drkit.catalog import BackupRecord, Catalog, CopyRecord
from drkit.catalog.models import VERSION_TABLE, Base
from drkit.catalog.repository import MIGRATIONS_DIR
from drkit.errors import BackupNotFoundError, CatalogError

T0 = datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
LOCATION = {
    "timeline": 1,
    "start_lsn": 0x1_6000_0028,
    "end_lsn": 0x1_6000_0138,
    "start_wal": "000000010000000100000060",
    "end_wal": "000000010000000100000060",
}


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    # A not-yet-existing directory: the catalog must create it.
    return f"sqlite:///{tmp_path / 'state' / 'catalog.db'}"


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    cat = Catalog.open(catalog_url)
    yield cat
    cat.close()


def completion(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for complete_backup with plausible values."""
    values: dict[str, Any] = {
        **LOCATION,
        "start_time": T0,
        "end_time": T0 + timedelta(minutes=5),
        "raw_bytes": 1000,
        "stored_bytes": 400,
        "sha256": "a" * 64,
        "format": "tar+zstd+aes",
        "key_id": "k1",
    }
    values.update(overrides)
    return values


# -- schema ------------------------------------------------------------------------------------------


def test_migrate_from_empty_database_creates_schema_at_head(catalog_url: str) -> None:
    cat = Catalog(catalog_url)
    try:
        cat.migrate()
    finally:
        cat.close()
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    engine = create_engine(catalog_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"backups", "copies", "audit_events", "endpoints", VERSION_TABLE} <= tables
        with engine.connect() as conn:
            assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one() == head
    finally:
        engine.dispose()


def test_open_twice_is_idempotent_and_keeps_data(catalog_url: str) -> None:
    with Catalog.open(catalog_url) as first:
        backup = first.begin_backup("orders", "full", started_at=T0)
    with Catalog.open(catalog_url) as second:
        second.migrate()
        assert second.get(backup.id) == backup


def test_models_match_the_migrations(catalog: Catalog, catalog_url: str) -> None:
    engine = create_engine(catalog_url)
    try:
        with engine.connect() as conn:
            opts = {"compare_type": True, "version_table": VERSION_TABLE}
            context = MigrationContext.configure(conn, opts=opts)
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_concurrent_open_of_a_fresh_catalog_both_succeed(catalog_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def open_it() -> None:
        barrier.wait()
        try:
            Catalog.open(catalog_url).close()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# -- backup lifecycle -------------------------------------------------------------------------------


def test_begin_backup_records_a_running_backup(catalog: Catalog) -> None:
    backup = catalog.begin_backup("orders", "full", started_at=T0, meta={"host": "db1"})
    assert backup.id == "orders-full-20240301T120000123456Z"
    assert backup.status == "running"
    assert backup.started_at == T0
    assert backup.finished_at is None
    assert backup.raw_bytes == 0 and backup.stored_bytes == 0
    assert backup.meta == {"host": "db1"}
    assert not backup.restorable
    assert catalog.get(backup.id) == backup


def test_begin_backup_validates_kind_base_and_started_at(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="unknown backup kind 'incremental'"):
        catalog.begin_backup("orders", "incremental")
    with pytest.raises(BackupNotFoundError, match="orders-full-nope"):
        catalog.begin_backup("orders", "diff", base_id="orders-full-nope")
    with pytest.raises(ValueError, match="timezone-aware"):
        catalog.begin_backup("orders", "full", started_at=datetime(2024, 1, 1))
    with pytest.raises(CatalogError, match="too long"):
        catalog.begin_backup("x" * 60, "full")
    full = catalog.begin_backup("orders", "full", started_at=T0)
    diff = catalog.begin_backup("orders", "diff", base_id=full.id, started_at=T0 + timedelta(hours=1))
    assert diff.base_id == full.id
    with pytest.raises(CatalogError, match="already exists"):
        catalog.begin_backup("orders", "full", started_at=T0)
    assert [b.id for b in catalog.list_backups("orders")] == [diff.id, full.id]


def test_complete_backup_records_backup_and_copies(catalog: Catalog) -> None:
    backup = catalog.begin_backup("orders", "full", started_at=T0, meta={"host": "db1"})
    done = catalog.complete_backup(
        backup.id,
        **completion(meta={"label": "nightly"}),
        copies=[("local", "orders/full/1.tar", 400, "b" * 64), ("offsite", "s3://x/1.tar", 400, "b" * 64)],
    )
    assert done.status == "completed"
    assert done.restorable
    assert done.finished_at is not None and done.finished_at >= T0
    assert (done.timeline, done.start_lsn, done.end_lsn) == (1, LOCATION["start_lsn"], LOCATION["end_lsn"])
    assert (done.start_wal, done.end_wal) == (LOCATION["start_wal"], LOCATION["end_wal"])
    assert (done.start_time, done.end_time) == (T0, T0 + timedelta(minutes=5))
    assert (done.raw_bytes, done.stored_bytes, done.sha256) == (1000, 400, "a" * 64)
    assert (done.format, done.key_id, done.error) == ("tar+zstd+aes", "k1", None)
    assert done.meta == {"host": "db1", "label": "nightly"}
    assert catalog.get(backup.id) == done
    copies = catalog.copies(backup.id)
    assert [(c.tier, c.store_key, c.status, c.stored_bytes, c.sha256) for c in copies] == [
        ("local", "orders/full/1.tar", "complete", 400, "b" * 64),
        ("offsite", "s3://x/1.tar", "complete", 400, "b" * 64),
    ]
    assert all(c.created_at == done.finished_at for c in copies)


def test_complete_backup_is_one_transaction(catalog: Catalog) -> None:
    backup = catalog.begin_backup("orders", "full", started_at=T0)
    duplicate_tier = [("local", "a", 1, "c" * 64), ("local", "b", 1, "c" * 64)]
    with pytest.raises(CatalogError, match=backup.id):
        catalog.complete_backup(backup.id, **completion(meta={"x": 1}), copies=duplicate_tier)
    after = catalog.get(backup.id)
    assert after == backup  # still running, nothing of the completion leaked
    assert after.status == "running" and after.finished_at is None and after.meta == {}
    assert catalog.copies(backup.id) == []
    # ... and it can still complete properly afterwards.
    done = catalog.complete_backup(backup.id, **completion(), copies=[("local", "a", 1, "c" * 64)])
    assert done.status == "completed"
    assert len(catalog.copies(backup.id)) == 1


def test_complete_backup_rolls_back_when_a_tier_already_has_a_copy(catalog: Catalog) -> None:
    backup = catalog.begin_backup("orders", "full", started_at=T0)
    pending = catalog.add_copy(backup.id, "offsite", "s3://x/1.tar")
    with pytest.raises(CatalogError):
        catalog.complete_backup(
            backup.id,
            **completion(),
            copies=[("local", "l/1.tar", 4, "d" * 64), ("offsite", "s3://x/1.tar", 4, "d" * 64)],
        )
    assert catalog.get(backup.id).status == "running"
    assert catalog.copies(backup.id) == [pending]


def test_only_a_running_backup_can_complete_or_fail(catalog: Catalog) -> None:
    backup = catalog.begin_backup("orders", "full", started_at=T0)
    catalog.complete_backup(backup.id, **completion())
    with pytest.raises(CatalogError, match="is completed"):
        catalog.complete_backup(backup.id, **completion())
    with pytest.raises(CatalogError, match="is completed"):
        catalog.fail_backup(backup.id, "late failure")
    assert catalog.get(backup.id).status == "completed"


def test_fail_backup(catalog: Catalog) -> None:
    backup = catalog.begin_backup("orders", "full", started_at=T0)
    failed = catalog.fail_backup(backup.id, "pg_basebackup exited 1: could not connect")
    assert failed.status == "failed"
    assert failed.error == "pg_basebackup exited 1: could not connect"
    assert failed.finished_at is not None
    assert not failed.restorable
    assert catalog.get(backup.id) == failed
    with pytest.raises(CatalogError, match="is failed"):
        catalog.complete_backup(backup.id, **completion())


def test_concurrent_completion_has_exactly_one_winner(catalog: Catalog, catalog_url: str) -> None:
    backup = catalog.begin_backup("orders", "full", started_at=T0)
    others = [Catalog(catalog_url) for _ in range(2)]
    barrier = threading.Barrier(len(others))
    outcomes: list[object] = []

    def complete(cat: Catalog, tier: str) -> None:
        barrier.wait()
        try:
            outcomes.append(cat.complete_backup(backup.id, **completion(), copies=[(tier, "k", 1, "e" * 64)]))
        except CatalogError as exc:
            outcomes.append(exc)

    threads = [
        threading.Thread(target=complete, args=(cat, tier))
        for cat, tier in zip(others, ("local", "offsite"), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for cat in others:
        cat.close()
    assert sorted(type(o).__name__ for o in outcomes) == ["BackupRecord", "CatalogError"]
    assert len(catalog.copies(backup.id)) == 1


def test_set_status_writes_an_audit_event_in_the_same_transaction(catalog: Catalog) -> None:
    backup = catalog.begin_backup("orders", "full", started_at=T0)
    catalog.complete_backup(backup.id, **completion())
    verified = catalog.set_status(backup.id, "verified", actor="verifier@host", reason="restore test passed")
    assert verified.status == "verified" and verified.restorable
    assert verified.verified_at is not None and verified.verified_at.tzinfo == UTC
    corrupt = catalog.set_status(backup.id, "corrupt", actor="alice", reason="checksum mismatch")
    assert corrupt.status == "corrupt" and not corrupt.restorable
    events = catalog.audit_events(database="orders")
    assert [(e.actor, e.action, e.subject, dict(e.detail)) for e in events] == [
        (
            "verifier@host",
            "backup.status",
            backup.id,
            {"from": "completed", "to": "verified", "reason": "restore test passed"},
        ),
        (
            "alice",
            "backup.status",
            backup.id,
            {"from": "verified", "to": "corrupt", "reason": "checksum mismatch"},
        ),
    ]
    assert events[0].at == verified.verified_at


def test_set_status_refuses_nonsense_without_writing_anything(catalog: Catalog) -> None:
    backup = catalog.begin_backup("orders", "full", started_at=T0)
    with pytest.raises(CatalogError, match="cannot be marked verified"):
        catalog.set_status(backup.id, "verified", actor="alice", reason="eager")
    with pytest.raises(CatalogError, match="unknown backup status 'great'"):
        catalog.set_status(backup.id, "great", actor="alice", reason="?")
    assert catalog.get(backup.id).status == "running"
    assert catalog.audit_events() == []
    stale = catalog.set_status(backup.id, "failed", actor="reaper", reason="worker died")
    assert (stale.status, stale.error) == ("failed", "worker died")
    assert stale.finished_at is not None


# -- queries ----------------------------------------------------------------------------------------


def _finished(catalog: Catalog, database: str, kind: str, at: datetime, **kwargs: Any) -> BackupRecord:
    backup = catalog.begin_backup(database, kind, started_at=at, **kwargs)
    return catalog.complete_backup(backup.id, **completion())


def test_list_backups_newest_first_with_filters(catalog: Catalog) -> None:
    full1 = _finished(catalog, "orders", "full", T0)
    diff1 = _finished(catalog, "orders", "diff", T0 + timedelta(hours=1), base_id=full1.id)
    log1 = _finished(catalog, "orders", "log", T0 + timedelta(hours=1))  # same instant as diff1
    failed = catalog.begin_backup("orders", "full", started_at=T0 + timedelta(hours=2))
    catalog.fail_backup(failed.id, "boom")
    running = catalog.begin_backup("orders", "full", started_at=T0 + timedelta(hours=3))
    other = _finished(catalog, "billing", "full", T0 + timedelta(hours=4))

    assert [b.id for b in catalog.list_backups()] == [
        other.id,
        running.id,
        failed.id,
        log1.id,  # ties on started_at are broken by id, descending ("orders-log-" > "orders-diff-")
        diff1.id,
        full1.id,
    ]
    assert [b.id for b in catalog.list_backups("orders", kinds=["full"])] == [running.id, failed.id, full1.id]
    assert [b.id for b in catalog.list_backups("orders", statuses=["failed", "running"])] == [
        running.id,
        failed.id,
    ]
    completed = catalog.list_backups("orders", kinds=("full", "diff"), statuses=("completed",))
    assert [b.id for b in completed] == [
        diff1.id,
        full1.id,
    ]
    assert catalog.list_backups("nothing") == []
    assert all(isinstance(b, BackupRecord) for b in catalog.list_backups())


def test_latest_picks_the_newest_restorable_backup(catalog: Catalog) -> None:
    assert catalog.latest("orders", "full") is None
    old = _finished(catalog, "orders", "full", T0)
    new = _finished(catalog, "orders", "full", T0 + timedelta(days=1))
    catalog.set_status(new.id, "corrupt", actor="verifier", reason="bad tag")
    catalog.begin_backup("orders", "full", started_at=T0 + timedelta(days=2))  # running
    _finished(catalog, "billing", "full", T0 + timedelta(days=3))
    latest = catalog.latest("orders", "full")
    assert latest is not None and latest.id == old.id
    catalog.set_status(old.id, "verified", actor="verifier", reason="ok")
    latest = catalog.latest("orders", "full")
    assert latest is not None and latest.status == "verified"
    anything = catalog.latest("orders", "full", statuses=("running", "completed", "corrupt"))
    assert anything is not None and anything.status == "running"
    assert catalog.latest("orders", "diff") is None


def test_missing_backup_errors_name_the_id(catalog: Catalog) -> None:
    missing = "orders-full-20990101T000000000000Z"
    calls: list[Callable[[], object]] = [
        lambda: catalog.get(missing),
        lambda: catalog.complete_backup(missing, **completion()),
        lambda: catalog.fail_backup(missing, "x"),
        lambda: catalog.set_status(missing, "verified", actor="a", reason="r"),
        lambda: catalog.add_copy(missing, "local", "k"),
        lambda: catalog.set_copy_status(missing, "local", "complete"),
        lambda: catalog.copies(missing),
    ]
    for call in calls:
        with pytest.raises(BackupNotFoundError) as info:
            call()
        assert str(info.value) == f"no backup {missing}; `drkit backups DB` lists them"
        assert isinstance(info.value, CatalogError)


# -- copies -----------------------------------------------------------------------------------------


def test_copies_lifecycle(catalog: Catalog) -> None:
    orders = _finished(catalog, "orders", "full", T0)
    billing = _finished(catalog, "billing", "full", T0)
    pending = catalog.add_copy(orders.id, "offsite", "s3://bucket/orders/1")
    assert isinstance(pending, CopyRecord)
    assert (pending.status, pending.stored_bytes, pending.sha256) == ("pending", 0, None)
    assert pending.created_at == pending.updated_at
    with pytest.raises(CatalogError, match="offsite copy"):
        catalog.add_copy(orders.id, "offsite", "s3://bucket/orders/again")
    with pytest.raises(CatalogError, match="unknown copy status"):
        catalog.add_copy(orders.id, "tape", "t1", status="lost")

    done = catalog.set_copy_status(orders.id, "offsite", "complete", stored_bytes=400, sha256="f" * 64)
    assert (done.id, done.status, done.stored_bytes, done.sha256) == (pending.id, "complete", 400, "f" * 64)
    assert done.updated_at >= pending.updated_at and done.created_at == pending.created_at
    deleted = catalog.set_copy_status(orders.id, "offsite", "deleted")
    assert (deleted.status, deleted.stored_bytes, deleted.sha256) == ("deleted", 400, "f" * 64)
    with pytest.raises(CatalogError, match="no copy in tier tape"):
        catalog.set_copy_status(orders.id, "tape", "complete")

    billing_copy = catalog.add_copy(billing.id, "local", "billing/1", status="complete", stored_bytes=9)
    assert catalog.copies(orders.id) == [deleted]
    assert catalog.all_copies("orders") == [deleted]
    assert catalog.all_copies("billing") == [billing_copy]
    assert {c.id for c in catalog.all_copies()} == {deleted.id, billing_copy.id}


# -- audit ------------------------------------------------------------------------------------------


def test_audit_events_oldest_first_with_filters(catalog: Catalog) -> None:
    first = catalog.audit(actor="alice", action="restore.start", database="orders", detail={"target": "x"})
    second = catalog.audit(actor="bob", action="policy.load")
    third = catalog.audit(actor="alice", action="restore.done", database="orders", subject="orders-full-1")
    assert first.id < second.id < third.id
    assert first.at.tzinfo == UTC and first.detail == {"target": "x"} and second.detail == {}
    assert catalog.audit_events() == [first, second, third]
    assert catalog.audit_events(database="orders") == [first, third]
    assert catalog.audit_events(action="policy.load") == [second]
    assert catalog.audit_events(database="orders", action="restore.done") == [third]


def test_audit_events_cannot_be_updated_or_deleted(catalog: Catalog, catalog_url: str) -> None:
    event = catalog.audit(actor="alice", action="restore.start", database="orders")
    engine = create_engine(catalog_url)
    try:
        for statement in ("UPDATE audit_events SET actor = 'mallory'", "DELETE FROM audit_events"):
            with pytest.raises(sa_exc.DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text(statement))
    finally:
        engine.dispose()
    assert catalog.audit_events() == [event]


# -- endpoints --------------------------------------------------------------------------------------


def test_endpoint_upsert_is_audited(catalog: Catalog) -> None:
    assert catalog.get_endpoint("orders") is None
    catalog.set_endpoint("orders", dsn_hint="db1.internal:5432", role="primary", actor="alice")
    first = catalog.get_endpoint("orders")
    assert first is not None
    assert (first.database, first.dsn_hint, first.role, first.updated_by) == (
        "orders",
        "db1.internal:5432",
        "primary",
        "alice",
    )
    assert first.updated_at.tzinfo == UTC
    assert catalog.set_endpoint("orders", dsn_hint="db2.internal:5432", role="dr", side="dr",
                                data_dir="/srv/pg/dr", actor="bob")
    second = catalog.get_endpoint("orders")
    assert second is not None and (second.dsn_hint, second.side, second.data_dir, second.updated_by) == (
        "db2.internal:5432", "dr", "/srv/pg/dr", "bob")
    # The same record again writes nothing and audits nothing: one endpoint.set per switch.
    assert not catalog.set_endpoint("orders", dsn_hint="db2.internal:5432", role="dr", side="dr",
                                    data_dir="/srv/pg/dr", actor="carol")
    events = catalog.audit_events(database="orders", action="endpoint.set")
    assert [e.actor for e in events] == ["alice", "bob"]
    assert events[1].detail["previous"] == {"dsn_hint": "db1.internal:5432", "role": "primary", "side": None,
                                            "data_dir": None}
    assert catalog.get_endpoint("orders") == second
    with pytest.raises(CatalogError, match="side must be one of primary, dr, recovered"):
        catalog.set_endpoint("orders", dsn_hint="db3:5432", role="x", side="elsewhere", actor="bob")


@pytest.mark.parametrize(
    "hint",
    ["postgresql://u:pw@db1:5432/orders", "host=db1 password=pw", "u:pw@db1:5432", ""],
)
def test_endpoint_refuses_credentials(catalog: Catalog, hint: str) -> None:
    with pytest.raises(CatalogError, match="host:port only") as info:
        catalog.set_endpoint("orders", dsn_hint=hint, role="primary", actor="alice")
    assert "pw" not in str(info.value)
    assert catalog.get_endpoint("orders") is None


# -- values -----------------------------------------------------------------------------------------


def test_datetimes_round_trip_as_aware_utc(catalog: Catalog) -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    started = datetime(2024, 6, 30, 23, 59, 59, 999999, tzinfo=ist)
    backup = catalog.begin_backup("orders", "full", started_at=started)
    assert backup.id == "orders-full-20240630T182959999999Z"  # named after the UTC instant
    done = catalog.complete_backup(
        backup.id,
        **completion(
            start_time=datetime(2024, 6, 30, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=-7))),
            end_time=datetime(2024, 6, 30, 8, 2, 4, tzinfo=UTC),
        ),
    )
    read = catalog.get(backup.id)
    for value in (read.started_at, read.finished_at, read.start_time, read.end_time):
        assert value is not None and value.tzinfo == UTC and value.utcoffset() == timedelta(0)
    assert read.started_at == started
    assert read.started_at == datetime(2024, 6, 30, 18, 29, 59, 999999, tzinfo=UTC)
    assert read.start_time == datetime(2024, 6, 30, 8, 2, 3, 4, tzinfo=UTC)
    assert read.end_time == datetime(2024, 6, 30, 8, 2, 4, tzinfo=UTC)
    assert read == done
    with pytest.raises(ValueError, match="timezone-aware"):
        catalog.complete_backup(backup.id, **completion(end_time=datetime(2024, 1, 1)))


def test_positions_beyond_bigint_and_lineage_round_trip(catalog: Catalog) -> None:
    # SQL Server LSNs are numeric(25,0): the catalog must hold them exactly, not only PostgreSQL's 64 bits.
    lsn = 98_765_432_109_876_543_210_001
    backup = catalog.begin_backup("sales", "log", started_at=T0, meta={"engine": "sqlserver"})
    done = catalog.complete_backup(backup.id, **completion(timeline=None, start_lsn=lsn, end_lsn=lsn + 7,
                                                           start_wal=None, end_wal=None),
                                   lineage="6f1c4a2e-0b7d-4e55-9a51-3c2d7e8f9a10")
    assert (done.start_lsn, done.end_lsn, done.lineage) == (lsn, lsn + 7, "6f1c4a2e-0b7d-4e55-9a51-3c2d7e8f9a10")
    assert catalog.get(backup.id) == done
    pg = _finished(catalog, "orders", "full", T0)
    assert (pg.start_lsn, pg.lineage) == (LOCATION["start_lsn"], None)  # lineage is optional


def test_positions_sort_numerically_in_sql(catalog: Catalog, catalog_url: str) -> None:
    values = [2**64 + 1, 9, 10**24, 0, 2**63 - 1, 10]
    ids = []
    for n, value in enumerate(values):
        backup = catalog.begin_backup("sales", "log", started_at=T0 + timedelta(minutes=n))
        catalog.complete_backup(backup.id, **completion(start_lsn=value, end_lsn=value))
        ids.append(backup.id)
    engine = create_engine(catalog_url)
    try:
        with engine.connect() as conn:
            ordered = list(conn.execute(text("SELECT id FROM backups ORDER BY start_lsn")).scalars())
            above = conn.execute(text("SELECT count(*) FROM backups WHERE end_lsn > (SELECT end_lsn FROM backups "
                                      "WHERE id = :id)"), {"id": ids[4]}).scalar_one()
    finally:
        engine.dispose()
    assert ordered == [ids[i] for i in sorted(range(len(values)), key=values.__getitem__)]
    assert above == 2


@pytest.mark.parametrize(("field", "value", "message"), [
    ("start_lsn", -1, "start_lsn must be a log position"),
    ("end_lsn", 10**30, "end_lsn must be a log position"),
    ("lineage", "x" * 65, "lineage must be 1 to 64 characters"),
    ("lineage", "", "lineage must be 1 to 64 characters"),
])
def test_complete_backup_refuses_positions_and_lineage_it_cannot_store(
    catalog: Catalog, field: str, value: Any, message: str
) -> None:
    backup = catalog.begin_backup("orders", "full", started_at=T0)
    with pytest.raises(CatalogError, match=message):
        catalog.complete_backup(backup.id, **completion(**{field: value}))
    assert catalog.get(backup.id) == backup


def test_records_are_immutable_plain_values(catalog: Catalog) -> None:
    backup = _finished(catalog, "orders", "full", T0)
    with pytest.raises(FrozenInstanceError):
        backup.status = "verified"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(backup)) == backup  # Prefect may persist task results
    assert hash(backup) == hash(catalog.get(backup.id))
    assert type(backup.meta) is dict
    event = catalog.audit(actor="a", action="x", detail={"n": 1})
    assert pickle.loads(pickle.dumps(event)) == event
    hash(event)


# -- SQLite- and URL-specific -----------------------------------------------------------------------


def test_sqlite_creates_parent_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "catalog.db"
    with Catalog.open(f"sqlite:///{path}") as cat:
        cat.begin_backup("orders", "full")
        engine = create_engine(f"sqlite:///{path}")
        try:
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        finally:
            engine.dispose()
    assert path.is_file()


def test_sqlite_enforces_foreign_keys(tmp_path: Path) -> None:
    with Catalog.open(f"sqlite:///{tmp_path / 'c.db'}") as cat:
        backup = cat.begin_backup("orders", "full")
        cat.add_copy(backup.id, "local", "k")
        engine = cat._engine
        with pytest.raises(sa_exc.IntegrityError), engine.begin() as conn:
            conn.execute(text("DELETE FROM backups"))


def test_sqlite_in_memory_catalog_works(tmp_path: Path) -> None:
    with Catalog.open("sqlite://") as cat:
        backup = cat.begin_backup("orders", "full", started_at=T0)
        assert cat.list_backups() == [backup]


@given(
    instant=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
    offset_minutes=st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
)
@settings(max_examples=60, deadline=None, database=None)
def test_sqlite_any_aware_datetime_round_trips(instant: datetime, offset_minutes: int) -> None:
    zone = timezone(timedelta(minutes=offset_minutes))
    started = instant.replace(tzinfo=UTC).astimezone(zone)
    cat = _memory_catalog()
    read = cat.get(cat.begin_backup(f"db{next(_COUNTER)}", "full", started_at=started).id)
    assert read.started_at == started and read.started_at.tzinfo == UTC


_COUNTER = itertools.count()


@functools.cache
def _memory_catalog() -> Catalog:
    return Catalog.open("sqlite://")


def test_catalog_errors_never_show_the_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://u:s3cret@127.0.0.1:1/x"
    cat = Catalog(url)
    assert "s3cret" not in repr(cat) and "s3cret" not in cat.url
    with pytest.raises(CatalogError) as info:
        cat.migrate()
    cat.close()
    assert "s3cret" not in str(info.value)
    assert "u:***@127.0.0.1:1/x" in str(info.value)
    with pytest.raises(CatalogError) as info:
        Catalog.open(url)
    assert "s3cret" not in str(info.value)
    for bad in ("postgresql+nosuchdriver://u:s3cret@h/x", "::u:s3cret@nonsense", "nosuchdb://u:s3cret@h/x"):
        with pytest.raises(CatalogError) as info:
            Catalog(bad)
        assert "s3cret" not in str(info.value)


def test_unreachable_catalog_operations_raise_catalog_error() -> None:
    cat = Catalog("postgresql+psycopg://u:s3cret@127.0.0.1:1/x")
    try:
        with pytest.raises(CatalogError) as info:
            cat.list_backups()
        assert "s3cret" not in str(info.value)
    finally:
        cat.close()


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


# -- the reads drkit metrics and drkit status ask (on PostgreSQL too: tests/integration/test_catalog_postgres.py) --


def test_metrics_reads_agree_with_every_record(catalog: Catalog) -> None:
    from drkit.catalog.records import RESTORABLE_STATUSES, BackupTally
    from drkit.engines.postgres.chain_model import POSTGRES_CHAIN
    from drkit.status import CHAIN_MARGIN, catalog_status, database_status
    from tests.unit.test_metrics_fast import NOW, history

    tiers = ("local", "offsite")
    day, log = 24 * 60, 15
    both = frozenset(tiers)
    steps: dict[str, list[tuple[Any, ...]]] = {
        "app": [("full", "completed", day, 1, both, "complete", 500), ("diff", "failed", 60, 1, both, "complete", 9),
                *[("log", "completed", log, 1, both, "complete", 10)] * 4,
                ("full", "completed", day, 1, frozenset({"local"}), "complete", 400),
                ("diff", "completed", 60, 1, both, "missing", 50),
                *[("log", "completed", log, 1, both, "complete", 10)] * 3,
                ("full", "corrupt", day, 1, both, "complete", 300), ("log", "verified", log, 1, both, "pending", 7)],
        "web": [("full", "failed", 60, 0, frozenset(), "complete", 0)],
    }
    for db, made in steps.items():
        for b, on, copy_status in history(db, made):
            catalog.import_backup(b, [(t, f"{t}/{b.id}", b.stored_bytes, "ab" * 32) for t in sorted(on)])
            if copy_status != "complete":
                catalog.set_copy_status(b.id, sorted(on)[0], copy_status)
    for detail in ({"stored_throughput_mib_s": 80.0}, {"stored_throughput_mib_s": 0}):
        catalog.audit(actor="t", action="backup.verify", database="app", detail=detail)
    catalog.audit(actor="t", action="drill.failed", database="app")

    for db in ("app", "web", "none"):
        every, copies = catalog.list_backups(db), catalog.all_copies(db)
        for kind in ("full", "diff", "log"):
            ok = [b for b in every if b.kind == kind and b.status in RESTORABLE_STATUSES]
            assert catalog.newest_backup(db, kind) == (max(ok, key=lambda b: b.end_time or b.started_at)
                                                        if ok else None)
        tallies = []
        for (kind, status), group in itertools.groupby(sorted(every, key=lambda b: (b.kind, b.status)),
                                                       key=lambda b: (b.kind, b.status)):
            rows = list(group)
            tallies.append(BackupTally(kind, status, len(rows), max(b.started_at for b in rows),
                                       max((b.end_time for b in rows if b.end_time), default=None)))
        assert catalog.backup_tallies(db) == tallies
        stored: dict[str, int] = {}
        for c in copies:
            if c.status == "complete":
                stored[c.tier] = stored.get(c.tier, 0) + c.stored_bytes
        assert catalog.stored_bytes_by_tier(db) == stored
        copied = {c.backup_id for c in copies if c.status == "complete" and c.tier in tiers}
        fulls = [b for b in every if b.kind == "full" and b.status in RESTORABLE_STATUSES and b.end_time
                 and b.id in copied]
        scope = catalog.chain_scope(db, tiers, CHAIN_MARGIN)
        if not fulls:
            assert scope is None
        else:
            since = max(fulls, key=lambda b: b.end_time or NOW).started_at - CHAIN_MARGIN
            mine = [b for b in every if b.started_at >= since or (b.end_time and b.end_time >= since)]
            assert scope == (mine, [c for c in copies if c.backup_id in {b.id for b in mine}])
            assert len(mine) < len(every)
        st, _ = catalog_status(catalog, db, now=NOW, tier_order=tiers, chain=POSTGRES_CHAIN)
        assert st == database_status(db, every, copies, now=NOW, tier_order=tiers, chain=POSTGRES_CHAIN)
    events = catalog.audit_events(database="app")
    assert catalog.newest_audit("app", ["backup.verify", "drill.failed"]) == max(events, key=lambda e: (e.at, e.id))
    assert catalog.newest_audit("app", ["drill.completed"]) is None
    verifies = [e for e in events if e.action == "backup.verify"][::-1]
    assert catalog.recent_audits("app", "backup.verify", None) == verifies
    assert catalog.recent_audits("app", "backup.verify", 1) == verifies[:1]
