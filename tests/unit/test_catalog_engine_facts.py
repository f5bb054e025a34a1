"""Engine extras, typed: SqlServerFacts and PostgresFacts read what each engine keeps in a record's meta."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from drkit.catalog import BackupRecord
from drkit.engines.postgres.records import PostgresFacts
from drkit.engines.sqlserver.msdb import BackupSet, Device
from drkit.engines.sqlserver.records import SqlServerFacts

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
FIRST = 40_000_000_000_000_000_000_123  # beyond 64 bits, as numeric(25,0) allows


def _record(meta: dict[str, Any], **fields: Any) -> BackupRecord:
    values: dict[str, Any] = {
        "id": "sales-log-1", "database": "sales", "kind": "log", "status": "completed", "base_id": None,
        "timeline": None, "start_lsn": None, "end_lsn": None, "start_wal": None, "end_wal": None,
        "started_at": T0, "finished_at": T0, "start_time": T0, "end_time": T0, "raw_bytes": 1, "stored_bytes": 1,
        "sha256": None, "format": None, "key_id": None, "error": None, "verified_at": None, "meta": meta,
    }
    values.update(fields)
    return BackupRecord(**values)


def _backup_set() -> BackupSet:
    return BackupSet(
        kind="log", backup_set_id=7, backup_set_uuid="a1b2c3d4-0000-0000-0000-000000000007", name="sales-log-1",
        database_name="Sales", first_lsn=str(FIRST), last_lsn=str(FIRST + 500), checkpoint_lsn=str(FIRST - 9),
        database_backup_lsn=str(FIRST - 100), differential_base_lsn=None, differential_base_guid=None,
        is_copy_only=False, has_backup_checksums=True, is_damaged=False,
        first_recovery_fork_guid="6f1c4a2e-0b7d-4e55-9a51-3c2d7e8f9a10",
        last_recovery_fork_guid="6f1c4a2e-0b7d-4e55-9a51-3c2d7e8f9a10", fork_point_lsn=None,
        database_guid="d0000000-0000-0000-0000-000000000001", family_guid="f0000000-0000-0000-0000-000000000001",
        start_time=T0, finish_time=T0, time_zone_minutes=0, backup_size=10, compressed_backup_size=5,
        recovery_model="FULL", server_name="sql1", encrypted=False,
        devices=(Device("https://acct.blob.core.windows.net/c/sales-log-1_1.bak", "URL"),
                 Device("https://acct.blob.core.windows.net/c/sales-log-1_2.bak", "URL")))


def test_sqlserver_facts_read_what_the_writer_records() -> None:
    info = _backup_set()
    facts = SqlServerFacts.of(_record(info.meta()))
    assert facts is not None
    assert (facts.first_lsn, facts.last_lsn, facts.checkpoint_lsn) == (FIRST, FIRST + 500, FIRST - 9)
    assert facts.database_backup_lsn == FIRST - 100
    assert (facts.differential_base_lsn, facts.differential_base_guid, facts.fork_point_lsn) == (None, None, None)
    assert facts.backup_set_uuid == info.backup_set_uuid and facts.is_copy_only is False
    assert facts.first_recovery_fork_guid == facts.last_recovery_fork_guid == info.last_recovery_fork_guid
    assert (facts.database_guid, facts.family_guid) == (info.database_guid, info.family_guid)
    assert facts.devices == info.devices
    assert facts.position == 1  # backupset.position: the set's place in its media (RESTORE … WITH FILE)


def test_sqlserver_facts_normalise_guids_and_fall_back_to_the_record() -> None:
    meta = {"engine": "sqlserver", "differential_base_guid": "{A1B2C3D4-0000-0000-0000-000000000001}",
            "differential_base_lsn": "12", "is_copy_only": True, "position": 2, "checkpoint_lsn": "not a number"}
    rec = _record(meta, start_lsn=FIRST, end_lsn=FIRST + 1, lineage="6f1c4a2e-0b7d-4e55-9a51-3c2d7e8f9a10")
    facts = SqlServerFacts.of(rec)
    assert facts is not None
    assert (facts.first_lsn, facts.last_lsn) == (FIRST, FIRST + 1)  # the record's positions
    assert facts.differential_base_guid == "a1b2c3d4-0000-0000-0000-000000000001"
    assert (facts.differential_base_lsn, facts.is_copy_only, facts.position) == (12, True, 2)
    assert facts.checkpoint_lsn is None
    assert facts.last_recovery_fork_guid == rec.lineage
    assert facts.devices == ()


def test_sqlserver_facts_of_other_records_is_none() -> None:
    assert SqlServerFacts.of(_record({"segment_size": 16 << 20}, timeline=1, start_lsn=1, end_lsn=2)) is None
    assert SqlServerFacts.of(_record({"engine": "sqlserver"})) is None  # no LSN range anywhere


def test_postgres_facts_read_columns_and_meta() -> None:
    rec = _record({"segment_size": 64 << 20, "segments": 3, "system_identifier": 7301, "server_version_num": 150004},
                  timeline=2, start_lsn=0x1_6000_0028, end_lsn=0x1_6000_0138, start_wal="000000020000000100000001",
                  end_wal="000000020000000100000003", lineage="2")
    facts = PostgresFacts.of(rec)
    assert facts == PostgresFacts(timeline=2, start_lsn=0x1_6000_0028, end_lsn=0x1_6000_0138,
                                  start_wal="000000020000000100000001", end_wal="000000020000000100000003",
                                  segment_size=64 << 20, system_identifier="7301", server_version_num=150004,
                                  segments=3)
    assert PostgresFacts.of(replace(rec, meta={})) == replace(facts, segment_size=16 << 20, system_identifier=None,
                                                              server_version_num=None, segments=None)


def test_postgres_facts_of_a_sqlserver_record_is_none() -> None:
    assert PostgresFacts.of(_record(_backup_set().meta(), start_lsn=FIRST, end_lsn=FIRST + 500)) is None
