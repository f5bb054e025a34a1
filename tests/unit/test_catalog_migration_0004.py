"""Migration 0004: a catalog made at revision 0003 upgrades to engine-neutral records, on SQLite.

Rows are written as drkit wrote them before 0004: PostgreSQL backups with BIGINT LSNs and a timeline,
SQL Server backups with no positions and their LSNs (beyond 64 bits) and recovery fork in ``meta``.
After the upgrade they read back through the catalog with positions as ints, ``lineage`` filled, and
positions that sort numerically in SQL.

Like ``tests/unit/test_catalog.py``: every test taking ``catalog_url`` is backend-independent, and
``tests/integration/test_catalog_migration_0004_postgres.py`` re-runs it on a real PostgreSQL 15.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from drkit.catalog import Catalog
from drkit.catalog.models import Backup
from drkit.errors import CatalogError

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
MIB16 = 16 * 1024 * 1024
FORK = "6F1C4A2E-0B7D-4E55-9A51-3C2D7E8F9A10"
"""A recovery fork GUID as msdb may spell it (upper case); the catalog keeps it lower case."""
BEYOND_64_BITS = 40_000_000_000_000_000_000_123
"""A SQL Server LSN above 2**64, as ``numeric(25,0)`` allows."""

# The backups table as revision 0003 has it (only the columns these tests fill).
OLD_BACKUPS = sa.table(
    "backups",
    sa.column("id", sa.String(80)),
    sa.column("database", sa.String(128)),
    sa.column("kind", sa.String(8)),
    sa.column("status", sa.String(16)),
    sa.column("base_id", sa.String(80)),
    sa.column("timeline", sa.Integer()),
    sa.column("start_lsn", sa.BigInteger()),
    sa.column("end_lsn", sa.BigInteger()),
    sa.column("start_wal", sa.String(24)),
    sa.column("end_wal", sa.String(24)),
    sa.column("started_at", sa.DateTime(timezone=True)),
    sa.column("end_time", sa.DateTime(timezone=True)),
    sa.column("meta", sa.JSON()),
)
OLD_COPIES = sa.table(
    "copies",
    sa.column("backup_id", sa.String(80)),
    sa.column("tier", sa.String(32)),
    sa.column("store_key", sa.String(512)),
    sa.column("status", sa.String(16)),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'catalog.db'}"


@pytest.fixture
def engine(catalog_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(catalog_url)
    yield eng
    eng.dispose()


def _at_revision(catalog_url: str, revision: str) -> None:
    cat = Catalog(catalog_url)
    try:
        cat.migrate(revision)
    finally:
        cat.close()


def _row(backup_id: str, kind: str, *, minutes: int, meta: Mapping[str, Any], base_id: str | None = None,
         timeline: int | None = None, start_lsn: int | None = None, end_lsn: int | None = None,
         wal: str | None = None) -> dict[str, Any]:
    return {"id": backup_id, "database": backup_id.split("-")[0], "kind": kind, "status": "completed",
            "base_id": base_id, "timeline": timeline, "start_lsn": start_lsn, "end_lsn": end_lsn,
            "start_wal": wal, "end_wal": wal, "started_at": T0 + timedelta(minutes=minutes),
            "end_time": T0 + timedelta(minutes=minutes + 1), "meta": dict(meta)}


def _mssql_meta(first: int, last: int, *, fork: str | None = FORK, engine: bool = True, **more: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"first_lsn": str(first), "last_lsn": str(last), "last_recovery_fork_guid": fork,
                            "first_recovery_fork_guid": fork, **more}
    if engine:
        meta["engine"] = "sqlserver"
    return meta


PG_FULL = _row("orders-full-1", "full", minutes=0, timeline=1, start_lsn=0x1_6000_0028, end_lsn=0x1_6000_0138,
               wal="000000010000000100000016", meta={"segment_size": MIB16, "system_identifier": "7301"})
PG_LOG = _row("orders-log-2", "log", minutes=5, timeline=2, start_lsn=2**62 + 5, end_lsn=2**63 - 1,
              wal="000000020000000100000017", meta={"segment_size": MIB16, "segments": 1})
MS_FULL = _row("sales-full-1", "full", minutes=0,
               meta=_mssql_meta(34_000_000_012_300_001, 34_000_000_015_600_001, checkpoint_lsn="34000000012300001",
                                backup_set_uuid="A1B2C3D4-0000-0000-0000-000000000001"))
MS_DIFF = _row("sales-diff-2", "diff", minutes=10, base_id="sales-full-1",
               meta=_mssql_meta(35_000_000_000_100_001, 35_000_000_000_900_001,
                                differential_base_lsn="34000000012300001"))
MS_LOG = _row("sales-log-3", "log", minutes=20, meta=_mssql_meta(BEYOND_64_BITS, BEYOND_64_BITS + 10**6))
IMPORTED = _row("legacy-log-1", "log", minutes=30, meta=_mssql_meta(9_000_000, 9_500_000, fork=None, engine=False))
"""An msdb row recorded without ``engine`` in meta: recognised by its ``first_lsn``."""
OLD_ROWS = (PG_FULL, PG_LOG, MS_FULL, MS_DIFF, MS_LOG, IMPORTED)


def _fill_at_0003(engine: sa.Engine, rows: tuple[dict[str, Any], ...] = OLD_ROWS) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(OLD_BACKUPS), list(rows))
        conn.execute(sa.insert(OLD_COPIES), [
            {"backup_id": r["id"], "tier": "local", "store_key": f"{r['database']}/{r['id']}/data.drk",
             "status": "complete", "created_at": T0, "updated_at": T0} for r in rows])


def _ids_by_position(engine: sa.Engine, where: Any = None) -> list[str]:
    """Backup ids ordered by ``start_lsn`` in SQL (through the model's Position type)."""
    query = sa.select(Backup.id).where(Backup.start_lsn.is_not(None)).order_by(Backup.start_lsn, Backup.id)
    if where is not None:
        query = query.where(where)
    with Session(engine) as session:
        return list(session.scalars(query))


def _raw_positions(engine: sa.Engine) -> dict[str, tuple[Any, Any]]:
    with engine.connect() as conn:
        return {str(i): (s, e) for i, s, e in conn.execute(sa.text("SELECT id, start_lsn, end_lsn FROM backups"))}


def test_upgrade_from_0003_moves_positions_and_fills_lineage(catalog_url: str, engine: sa.Engine) -> None:
    _at_revision(catalog_url, "0003")
    _fill_at_0003(engine)
    with Catalog.open(catalog_url) as cat:
        got = {r["id"]: cat.get(r["id"]) for r in OLD_ROWS}
        copies = {r["id"]: [c.tier for c in cat.copies(r["id"])] for r in OLD_ROWS}
    for row in (PG_FULL, PG_LOG):
        rec = got[row["id"]]
        assert (rec.start_lsn, rec.end_lsn) == (row["start_lsn"], row["end_lsn"])
        assert (rec.timeline, rec.lineage) == (row["timeline"], str(row["timeline"]))
        assert (rec.start_wal, rec.end_wal) == (row["start_wal"], row["end_wal"])
    for row in (MS_FULL, MS_DIFF, MS_LOG):
        rec = got[row["id"]]
        assert (rec.start_lsn, rec.end_lsn) == (int(row["meta"]["first_lsn"]), int(row["meta"]["last_lsn"]))
        assert rec.lineage == FORK.lower()
        assert rec.timeline is None
        assert rec.meta == row["meta"]  # meta stays the storage of everything else
    assert got[MS_LOG["id"]].start_lsn == BEYOND_64_BITS
    assert got[MS_DIFF["id"]].base_id == MS_FULL["id"]
    imported = got[IMPORTED["id"]]
    assert (imported.start_lsn, imported.end_lsn, imported.lineage) == (9_000_000, 9_500_000, None)
    assert all(tiers == ["local"] for tiers in copies.values())  # rebuilding backups orphaned no copy


def test_positions_sort_and_compare_numerically_in_sql_after_the_upgrade(catalog_url: str, engine: sa.Engine) -> None:
    _at_revision(catalog_url, "0003")
    _fill_at_0003(engine)
    _at_revision(catalog_url, "head")
    by_number = sorted(OLD_ROWS, key=lambda r: int(r["start_lsn"] if r["start_lsn"] is not None
                                                   else r["meta"]["first_lsn"]))
    assert _ids_by_position(engine) == [r["id"] for r in by_number]
    assert _ids_by_position(engine, Backup.end_lsn > 2**64) == [MS_LOG["id"]]
    assert _ids_by_position(engine, Backup.start_lsn < 10**8) == [IMPORTED["id"]]
    raw = _raw_positions(engine)
    assert raw[PG_FULL["id"]][0] == str(PG_FULL["start_lsn"]).zfill(30)  # fixed-width text, as designed


def test_upgrade_fills_every_row_of_a_catalog_larger_than_one_batch(catalog_url: str, engine: sa.Engine) -> None:
    _at_revision(catalog_url, "0003")
    logs = tuple(_row(f"big-log-{n:05d}", "log", minutes=n, meta=_mssql_meta(10**20 + n * 100, 10**20 + n * 100 + 100))
                 for n in range(2500))
    pg = tuple(_row(f"pg-log-{n:05d}", "log", minutes=n, timeline=3, start_lsn=n * MIB16, end_lsn=(n + 1) * MIB16,
                    meta={}) for n in range(1200))
    _fill_at_0003(engine, logs + pg)
    with Catalog.open(catalog_url) as cat:
        big = cat.list_backups("big")
        small = cat.list_backups("pg")
    assert len(big) == 2500 and len(small) == 1200
    assert all(b.start_lsn == int(b.meta["first_lsn"]) and b.lineage == FORK.lower() for b in big)
    assert all(b.lineage == "3" and b.start_lsn is not None and b.start_lsn % MIB16 == 0 for b in small)


def test_a_negative_lsn_stops_the_upgrade_and_changes_nothing(catalog_url: str, engine: sa.Engine) -> None:
    _at_revision(catalog_url, "0003")
    bad = _row("odd-full-1", "full", minutes=0, timeline=1, start_lsn=-5, end_lsn=10, meta={})
    _fill_at_0003(engine, (PG_FULL, bad))
    with pytest.raises(CatalogError, match="odd-full-1 has a negative LSN"):
        _at_revision(catalog_url, "head")
    assert _raw_positions(engine)[bad["id"]] == (-5, 10)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM drkit_catalog_version")).scalar_one() == "0003"


def test_downgrade_to_0003_and_back_keeps_what_the_old_schema_holds(catalog_url: str, engine: sa.Engine) -> None:
    _at_revision(catalog_url, "0003")
    _fill_at_0003(engine)
    with Catalog.open(catalog_url) as cat:
        full = cat.begin_backup("fresh", "full", started_at=T0, meta=_mssql_meta(10**23, 10**23 + 1))
        cat.complete_backup(full.id, timeline=None, start_lsn=10**23, end_lsn=10**23 + 1, start_wal=None,
                            end_wal=None, start_time=T0, end_time=T0, raw_bytes=1, stored_bytes=1, sha256=None,
                            format="mssql-native-url", key_id=None, lineage=FORK.lower())
        before = {r.id: r for r in cat.list_backups()}
        cat.downgrade("0003")
    raw = _raw_positions(engine)
    assert raw[PG_FULL["id"]] == (PG_FULL["start_lsn"], PG_FULL["end_lsn"])  # BIGINT again, as integers
    assert raw[PG_LOG["id"]] == (PG_LOG["start_lsn"], PG_LOG["end_lsn"])
    assert all(raw[i] == (None, None) for i in (MS_FULL["id"], MS_LOG["id"], IMPORTED["id"], full.id))
    assert "lineage" not in {c["name"] for c in sa.inspect(engine).get_columns("backups")}
    with Catalog.open(catalog_url) as cat:
        after = {r.id: r for r in cat.list_backups()}
        assert [c.tier for c in cat.copies(PG_FULL["id"])] == ["local"]
    assert after == before
