"""The catalog's fast read path (drkit.catalog.reader): the same answers as the SQLAlchemy repository, on a
SQLite file at the newest schema, without importing SQLAlchemy or Alembic; anything else still migrates."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from drkit.catalog import Catalog
from drkit.catalog.reader import HEAD_REVISION, ReadFirstCatalog, open_catalog, stored_revision
from drkit.catalog.repository import MIGRATIONS_DIR
from drkit.errors import BackupNotFoundError

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_head_revision_is_alembics_head() -> None:
    """A new migration must update HEAD_REVISION (else every command would migrate, i.e. import Alembic)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD_REVISION]


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """A catalog with two databases' backups, copies, holds, audit events and an endpoint."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with Catalog.open(url) as cat:
        for db in ("app", "shop"):
            full = cat.begin_backup(db, "full", started_at=T0, meta={"label": f"{db} ✓"})
            cat.complete_backup(full.id, timeline=1, start_lsn=0x1_6000_0028, end_lsn=10**24, start_wal="0" * 24,
                                end_wal="1" * 24, start_time=T0, end_time=T0 + timedelta(seconds=5),
                                raw_bytes=10, stored_bytes=7, sha256="ab" * 32, format="tar", key_id="k1",
                                copies=[("local", f"{db}/{full.id}", 7, "cd" * 32)], lineage="1")
            diff = cat.begin_backup(db, "diff", base_id=full.id, started_at=T0 + timedelta(hours=1))
            cat.fail_backup(diff.id, "disk full")
            log = cat.begin_backup(db, "log", started_at=T0 + timedelta(hours=2))
            cat.complete_backup(log.id, timeline=1, start_lsn=1, end_lsn=2, start_wal=None, end_wal=None,
                                start_time=None, end_time=None, raw_bytes=0, stored_bytes=0, sha256=None,
                                format=None, key_id=None)
            cat.add_copy(log.id, "blob", f"{db}/{log.id}", status="pending")
            cat.set_status(full.id, "verified", actor="verifier", reason="restore passed")
            cat.add_hold(full.id, reason="case 7", actor="legal")
        cat.add_hold(cat.latest("app", "log").id, reason="case 8", actor="legal")  # type: ignore[union-attr]
        cat.remove_hold(cat.latest("app", "log").id, actor="legal", reason="closed")  # type: ignore[union-attr]
        cat.set_endpoint("app", dsn_hint="10.0.0.2:5432", role="dr", actor="failover", side="dr",
                         data_dir="/srv/dr")
    yield url


def test_open_catalog_reads_a_current_file_without_sqlalchemy(url: str) -> None:
    cat = open_catalog(url)
    try:
        assert isinstance(cat, ReadFirstCatalog)
    finally:
        cat.close()


def test_every_read_answers_as_the_repository(url: str) -> None:
    slow = Catalog(url)
    fast = open_catalog(url)
    try:
        backups = slow.list_backups()
        some = backups[0].id
        held = slow.active_holds()[0].backup_id
        calls: list[tuple[str, tuple[object, ...], dict[str, object]]] = [
            ("list_backups", (), {}), ("list_backups", ("app",), {}),
            ("list_backups", ("shop",), {"kinds": ["full", "log"], "statuses": ["verified"]}),
            ("list_backups", (), {"kinds": []}),
            ("latest", ("app", "full"), {}), ("latest", ("app", "diff"), {"statuses": ["failed"]}),
            ("latest", ("nope", "full"), {}),
            ("get", (some,), {}), ("copies", (some,), {}), ("all_copies", (), {}), ("all_copies", ("shop",), {}),
            ("latest_audit", ("hold.add",), {}), ("latest_audit", ("nothing",), {}),
            ("audit_events", (), {}), ("audit_events", (), {"database": "app", "action": "hold.remove"}),
            ("get_endpoint", ("app",), {}), ("get_endpoint", ("shop",), {}),
            ("active_holds", (), {}), ("active_holds", ("shop",), {}), ("hold_history", (held,), {}),
        ]
        for name, args, kwargs in calls:
            assert getattr(fast, name)(*args, **kwargs) == getattr(slow, name)(*args, **kwargs), name
        assert [b.id for b in fast.list_backups()] == [b.id for b in backups]
        for name in ("get", "copies", "hold_history"):
            with pytest.raises(BackupNotFoundError, match="no backup nope"):
                getattr(fast, name)("nope")
    finally:
        fast.close()
        slow.close()


def test_writes_go_through_the_repository(url: str) -> None:
    cat = open_catalog(url)
    try:
        b = cat.begin_backup("app", "full", started_at=T0 + timedelta(days=1))
        assert cat.get(b.id).status == "running"  # read back at once, through the fast path
        cat.fail_backup(b.id, "stopped")
        assert cat.latest("app", "full", statuses=["failed"]) == cat.get(b.id)
    finally:
        cat.close()


def test_an_older_schema_is_migrated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with Catalog.open(url) as cat:
        cat.downgrade("0004")
    assert stored_revision(tmp_path / "catalog.db") == "0004"
    cat = open_catalog(url)
    try:
        assert not isinstance(cat, ReadFirstCatalog)
        assert stored_revision(tmp_path / "catalog.db") == HEAD_REVISION
    finally:
        cat.close()


@pytest.mark.parametrize("name", ["missing.db", "empty.db"])
def test_a_new_catalog_is_created(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name == "empty.db":
        sqlite3.connect(path).close()
    cat = open_catalog(f"sqlite:///{path}")
    try:
        assert cat.list_backups() == []
        assert stored_revision(path) == HEAD_REVISION
    finally:
        cat.close()


def test_reading_imports_neither_sqlalchemy_nor_alembic(url: str) -> None:
    code = ("import sys; from drkit.catalog.reader import open_catalog; c = open_catalog(sys.argv[1]); "
            "c.list_backups('app'); c.all_copies(); c.latest_audit('x'); c.get_endpoint('app'); "
            "print(sorted(m for m in ('sqlalchemy', 'alembic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
