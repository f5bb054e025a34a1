"""Legal holds in the catalog (``Catalog.add_hold`` / ``remove_hold`` / ``active_holds``), on SQLite.

Like ``tests/unit/test_catalog.py``: every test that takes the ``catalog`` or ``catalog_url`` fixture (and is
not named ``test_sqlite_*``) is backend-independent, so a PostgreSQL module can re-run it unchanged by
overriding ``catalog_url`` (as ``tests/integration/test_catalog_postgres.py`` does for test_catalog.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect

from drkit.catalog import Catalog
from drkit.catalog.records import HoldRecord
from drkit.catalog.repository import MIGRATIONS_DIR
from drkit.errors import BackupNotFoundError, CatalogError

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'catalog.db'}"


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    cat = Catalog.open(catalog_url)
    yield cat
    cat.close()


def _backup(catalog: Catalog, database: str = "orders", minutes: int = 0) -> str:
    rec = catalog.begin_backup(database, "full", started_at=T0 + timedelta(minutes=minutes))
    catalog.complete_backup(
        rec.id, timeline=1, start_lsn=0x1000028, end_lsn=0x1000138, start_wal="000000010000000000000001",
        end_wal="000000010000000000000001", start_time=T0, end_time=T0 + timedelta(minutes=minutes + 5),
        raw_bytes=10, stored_bytes=5, sha256="a" * 64, format="t", key_id="k",
        copies=[("local", f"local/{rec.id}", 5, "a" * 64)])
    return rec.id


def _alembic(connection: Any) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


# -- schema ------------------------------------------------------------------------------------------


def test_migration_0002_creates_holds_and_downgrades_cleanly(catalog: Catalog, catalog_url: str) -> None:
    engine = create_engine(catalog_url)
    try:
        columns = {c["name"]: c for c in inspect(engine).get_columns("holds")}
        assert set(columns) == {"id", "backup_id", "reason", "created_at", "created_by", "removed_at",
                                "removed_by", "removed_reason"}
        assert columns["removed_at"]["nullable"] is True
        assert columns["created_at"]["nullable"] is False
        fks = inspect(engine).get_foreign_keys("holds")
        assert [(fk["referred_table"], fk["constrained_columns"]) for fk in fks] == [("backups", ["backup_id"])]
        with engine.begin() as conn:
            command.downgrade(_alembic(conn), "0001")
        assert "holds" not in inspect(engine).get_table_names()
        with engine.begin() as conn:
            command.upgrade(_alembic(conn), "head")
        assert "holds" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_hold_record_is_frozen_and_hashable(catalog: Catalog) -> None:
    hold = catalog.add_hold(_backup(catalog), reason="INC-42", actor="alice")
    with pytest.raises(FrozenInstanceError):
        hold.reason = "nothing"  # type: ignore[misc]
    assert {hold: 1}[hold] == 1
    assert isinstance(hold, HoldRecord)


# -- add ---------------------------------------------------------------------------------------------


def test_add_hold_records_the_hold_and_audits_it(catalog: Catalog) -> None:
    backup_id = _backup(catalog)
    hold = catalog.add_hold(backup_id, reason="  INC-42: litigation  ", actor="alice")
    assert (hold.backup_id, hold.database, hold.reason, hold.created_by) == (
        backup_id, "orders", "INC-42: litigation", "alice")
    assert hold.active and hold.removed_at is None and hold.removed_by is None and hold.removed_reason is None
    assert hold.created_at.tzinfo is not None
    assert catalog.active_holds() == [hold]
    [event] = catalog.audit_events(action="hold.add")
    assert (event.actor, event.database, event.subject) == ("alice", "orders", backup_id)
    assert event.detail == {"hold_id": hold.id, "reason": "INC-42: litigation"}
    assert event.at == hold.created_at


def test_add_hold_on_an_unknown_backup_writes_nothing(catalog: Catalog) -> None:
    with pytest.raises(BackupNotFoundError, match="orders-full-nope"):
        catalog.add_hold("orders-full-nope", reason="INC-1", actor="alice")
    assert catalog.active_holds() == []
    assert catalog.audit_events() == []


@pytest.mark.parametrize(("reason", "actor", "match"), [("", "alice", "reason"), ("  ", "alice", "reason"),
                                                        ("INC-1", "", "who"), ("INC-1", " ", "who")])
def test_add_hold_needs_a_reason_and_an_actor(catalog: Catalog, reason: str, actor: str, match: str) -> None:
    backup_id = _backup(catalog)
    with pytest.raises(CatalogError, match=match):
        catalog.add_hold(backup_id, reason=reason, actor=actor)
    assert catalog.active_holds() == []


def test_a_second_active_hold_is_refused_and_names_the_first(catalog: Catalog) -> None:
    backup_id = _backup(catalog)
    first = catalog.add_hold(backup_id, reason="INC-42", actor="alice")
    with pytest.raises(CatalogError, match="already under legal hold by alice.*INC-42"):
        catalog.add_hold(backup_id, reason="INC-77", actor="bob")
    assert catalog.active_holds() == [first]
    assert len(catalog.audit_events(action="hold.add")) == 1


def test_hold_and_its_audit_event_commit_together(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    backup_id = _backup(catalog)
    calls = {"n": 0}
    original = Catalog._flush

    def failing_second_flush(self: Catalog, session: Any, what: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the hold row is flushed, then the audit event fails
            raise CatalogError(f"{what}: simulated failure")
        original(self, session, what)

    monkeypatch.setattr(Catalog, "_flush", failing_second_flush)
    with pytest.raises(CatalogError, match="simulated"):
        catalog.add_hold(backup_id, reason="INC-42", actor="alice")
    monkeypatch.setattr(Catalog, "_flush", original)
    assert catalog.active_holds() == []
    assert catalog.hold_history(backup_id) == []
    assert catalog.audit_events(action="hold.add") == []


def test_concurrent_holds_on_one_backup_exactly_one_wins(catalog: Catalog) -> None:
    backup_id = _backup(catalog)
    barrier = threading.Barrier(4)
    won: list[HoldRecord] = []
    refused: list[BaseException] = []

    def add(n: int) -> None:
        barrier.wait()
        try:
            won.append(catalog.add_hold(backup_id, reason=f"case {n}", actor=f"user{n}"))
        except CatalogError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=add, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(refused) == 3
    assert all("already under legal hold" in str(exc) for exc in refused)
    assert catalog.active_holds() == won


# -- remove ------------------------------------------------------------------------------------------


def test_remove_hold_keeps_the_row_as_history_and_audits_it(catalog: Catalog) -> None:
    backup_id = _backup(catalog)
    hold = catalog.add_hold(backup_id, reason="INC-42", actor="alice")
    removed = catalog.remove_hold(backup_id, actor="bob", reason="case closed")
    assert removed.id == hold.id and not removed.active
    assert (removed.removed_by, removed.removed_reason) == ("bob", "case closed")
    assert removed.removed_at is not None and removed.removed_at >= hold.created_at
    assert (removed.reason, removed.created_by, removed.created_at) == (hold.reason, hold.created_by, hold.created_at)
    assert catalog.active_holds() == []
    assert catalog.hold_history(backup_id) == [removed]
    [event] = catalog.audit_events(action="hold.remove")
    assert (event.actor, event.database, event.subject) == ("bob", "orders", backup_id)
    assert event.detail == {"hold_id": hold.id, "reason": "case closed", "held_by": "alice", "hold_reason": "INC-42"}


def test_remove_without_an_active_hold_is_an_error(catalog: Catalog) -> None:
    backup_id = _backup(catalog)
    with pytest.raises(CatalogError, match=f"{backup_id} has no active legal hold"):
        catalog.remove_hold(backup_id, actor="bob", reason="oops")
    catalog.add_hold(backup_id, reason="INC-42", actor="alice")
    catalog.remove_hold(backup_id, actor="bob", reason="closed")
    with pytest.raises(CatalogError, match="no active legal hold"):
        catalog.remove_hold(backup_id, actor="bob", reason="again")
    with pytest.raises(BackupNotFoundError):
        catalog.remove_hold("orders-full-nope", actor="bob", reason="x")
    with pytest.raises(CatalogError, match="reason"):
        catalog.remove_hold(backup_id, actor="bob", reason=" ")
    assert len(catalog.audit_events(action="hold.remove")) == 1


def test_a_backup_can_be_held_again_after_removal(catalog: Catalog) -> None:
    backup_id = _backup(catalog)
    first = catalog.add_hold(backup_id, reason="INC-42", actor="alice")
    catalog.remove_hold(backup_id, actor="bob", reason="closed")
    second = catalog.add_hold(backup_id, reason="INC-77", actor="carol")
    assert catalog.active_holds() == [second]
    history = catalog.hold_history(backup_id)
    assert [h.id for h in history] == [first.id, second.id]
    assert [h.active for h in history] == [False, True]
    removed = catalog.remove_hold(backup_id, actor="dave", reason="closed too")
    assert removed.id == second.id and removed.reason == "INC-77"


# -- listing -----------------------------------------------------------------------------------------


def test_active_holds_filter_by_database_oldest_first(catalog: Catalog) -> None:
    o1, o2 = _backup(catalog, "orders", 0), _backup(catalog, "orders", 10)
    c1 = _backup(catalog, "crm", 20)
    h_o2 = catalog.add_hold(o2, reason="A", actor="alice")
    h_c1 = catalog.add_hold(c1, reason="B", actor="alice")
    h_o1 = catalog.add_hold(o1, reason="C", actor="alice")
    assert catalog.active_holds() == [h_o2, h_c1, h_o1]
    assert catalog.active_holds("orders") == [h_o2, h_o1]
    assert catalog.active_holds("crm") == [h_c1]
    assert catalog.active_holds("nope") == []
    catalog.remove_hold(o2, actor="bob", reason="closed")
    assert catalog.active_holds("orders") == [h_o1]
    with pytest.raises(BackupNotFoundError):
        catalog.hold_history("orders-full-nope")
