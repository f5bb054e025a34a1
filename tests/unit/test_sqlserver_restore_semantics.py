"""SQL Server restore and verification semantics, by contract (issue 13): FILE = backupset.position, devices
checked before a restore, DBCC CHECKDB's consistency errors apart from operational failures, STOPAT on every
log with the offset at the target instant, the database's state after, MOVE for files added after the full,
BULK_LOGGED logs, last_valid_restore_time, and verification restores on another instance.

Everything runs against tests/support/fake_odbc.py; error numbers and messages are SQL Server's documented ones.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drkit.catalog.records import BackupRecord
from drkit.engines.sqlserver import msdb
from drkit.engines.sqlserver.backup import take_backup
from drkit.engines.sqlserver.history import import_history
from drkit.engines.sqlserver.restore import restore_to_point
from drkit.engines.sqlserver.verify import verify_backup_mssql
from drkit.errors import ConfigError, RestoreError, RestorePlanError
from tests.support.fake_odbc import DSN, World, make_world, odbc_error

NOW = datetime(2026, 5, 18, 12, 0, tzinfo=UTC)
MEDIA = "D:\\Backup\\Orders.bak"


def restores(w: World, start: int = 0) -> list[Any]:
    return [e for e in w.driver.executed[start:] if "\nRESTORE DATABASE" in e.sql or "\nRESTORE LOG" in e.sql]


def param(e: Any, name: str) -> Any:
    """The value bound to ``@name`` in a recorded batch (parameters follow their DECLARE order)."""
    names = [line.split()[0].lstrip("@") for line in e.sql.split(";\n", 1)[0].removeprefix("DECLARE ").split(",\n")]
    return e.params[names.index(name)] if name in names else None


def imported(w: World) -> dict[str, BackupRecord]:
    import_history(w.rt, "orders", engine=w.engine)
    return {str(b.meta["backup_set_id"]): b for b in w.rt.catalog.list_backups("orders")}


# -- 3. FILE = backupset.position ----------------------------------------------------------------------------


def appended_fulls(w: World) -> dict[str, BackupRecord]:
    """Three full backups appended (NOINIT) to one file, as an Agent job writing to a fixed file does."""
    w.server.foreign_backup("D", MEDIA)
    for _ in range(2):
        w.server.append_next = True
        w.server.foreign_backup("D", MEDIA)
    return imported(w)


def test_an_appended_backup_set_is_verified_from_its_own_position(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    recs = appended_fulls(w)
    assert [recs[k].meta["position"] for k in sorted(recs)] == [1, 2, 3]
    second = recs[sorted(recs)[1]]
    start = len(w.driver.executed)
    report = verify_backup_mssql(w.rt, "orders", second.id, engine=w.engine, now=NOW)
    assert report.passed, report.error
    sent = w.driver.executed[start:]
    reads = [e for e in sent if "RESTORE VERIFYONLY" in e.sql or "RESTORE FILELISTONLY" in e.sql] + restores(w, start)
    assert len(reads) == 3 and all(param(e, "file") == 2 for e in reads)
    assert w.rt.catalog.get(second.id).status == "verified"
    assert {w.rt.catalog.get(recs[k].id).status for k in sorted(recs) if recs[k].id != second.id} == {"completed"}


def test_a_set_no_longer_on_its_media_is_never_marked_verified(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    recs = appended_fulls(w)
    first = recs[sorted(recs)[0]]
    w.server.foreign_backup("D", MEDIA)  # WITH INIT/FORMAT: the file now holds another backup alone
    start = len(w.driver.executed)
    report = verify_backup_mssql(w.rt, "orders", first.id, engine=w.engine, now=NOW)
    assert not report.passed and report.corrupt_pieces == []
    assert "no longer holds backup set" in (report.error or "") and MEDIA in (report.error or "")
    assert w.rt.catalog.get(first.id).status == "completed"
    assert restores(w, start) == [] and not any("VERIFYONLY" in e.sql for e in w.driver.executed[start:])


def test_a_url_backup_is_read_without_file(tmp_path: Path) -> None:
    w = make_world(tmp_path, target="url")
    take_backup(w.rt, "orders", "full", engine=w.engine)
    start = len(w.driver.executed)
    restore_to_point(w.rt, "orders", into="Orders_url", engine=w.engine, now=NOW)
    assert all("FILE =" not in e.sql for e in w.driver.executed[start:])


# -- 10. every device checked before a restore starts ----------------------------------------------------------


def foreign_chain(tmp_path: Path) -> tuple[World, BackupRecord]:
    """Full, log, differential, log, each in its own file on the server's disk, imported; and the last log."""
    w = make_world(tmp_path)
    for kind, device in (("D", "full.bak"), ("L", "log1.trn"), ("I", "diff.bak"), ("L", "log2.trn")):
        w.server.foreign_backup(kind, "D:\\Backup\\" + device)
    recs = imported(w)
    return w, max((b for b in recs.values() if b.kind == "log"), key=lambda b: b.end_time or NOW)


def test_a_missing_full_with_no_other_chain_is_refused_naming_the_file(tmp_path: Path) -> None:
    w, log2 = foreign_chain(tmp_path)
    w.server.media.pop("D:\\Backup\\full.bak")  # cleaned up: the diff's full is gone, so is any chain
    start = len(w.driver.executed)
    with pytest.raises(RestoreError, match=re.escape("D:\\Backup\\full.bak")) as caught:
        restore_to_point(w.rt, "orders", into="Orders_r", target=log2.end_time, engine=w.engine, now=NOW)
    assert "Nothing was restored" in str(caught.value)
    assert restores(w, start) == []
    assert w.server.existing_databases == {}


def test_a_missing_differential_is_planned_around_through_the_logs(tmp_path: Path) -> None:
    w, log2 = foreign_chain(tmp_path)
    w.server.media.pop("D:\\Backup\\diff.bak")  # the planner's first choice is full + diff + log2
    result = restore_to_point(w.rt, "orders", into="Orders_r", target=log2.end_time, engine=w.engine, now=NOW)
    assert [p.backup.kind for p in result.plan.pieces] == ["full", "log", "log"]
    assert any("planned around missing device(s)" in r and "diff.bak" in r for r in result.plan.reasons)
    assert w.server.existing_databases["Orders_r"] == "ONLINE"


# -- 4. only a consistency error makes a backup corrupt ----------------------------------------------------------


@pytest.mark.parametrize(("number", "text"), [
    (8928, "Object ID 581577110, index ID 1, partition ID 72057594041401344, alloc unit ID 72057594046513152 "
           "(type In-row data): Page (1:312) could not be processed.  See other errors for details."),
    (2570, "Page (1:1232), slot 0 in object ID 1977058079, index ID 1, partition ID 72057594039435264, alloc unit "
           "ID 72057594043629568 (type \"In-row data\"). Column \"c1\" value is out of range for data type "
           "\"datetime\".  Update column to a legal value."),
])
def test_a_reported_consistency_error_marks_the_backup_corrupt(tmp_path: Path, number: int, text: str) -> None:
    w = make_world(tmp_path)
    rec = take_backup(w.rt, "orders", "full", engine=w.engine)
    w.driver.on(r"DBCC CHECKDB", first=True, error=odbc_error(number, text, "42000"))
    report = verify_backup_mssql(w.rt, "orders", engine=w.engine, now=NOW)
    assert not report.passed and report.corrupt_pieces == [rec.id]
    assert w.rt.catalog.get(rec.id).status == "corrupt"


@pytest.mark.parametrize("error", [
    odbc_error(1105, "Could not allocate space for object 'dbo.SORT temporary run storage:  140737488355328' in "
                     "database 'tempdb' because the 'PRIMARY' filegroup is full. Create disk space by deleting "
                     "unneeded files, dropping objects in the filegroup, adding additional files to the filegroup, "
                     "or setting autogrowth on for existing files in the filegroup."),
    odbc_error(9002, "The transaction log for database 'tempdb' is full due to 'ACTIVE_TRANSACTION'."),
    odbc_error(0, "Query timeout expired", "HYT00"),
    odbc_error(8921, "Check terminated. A failure was detected while collecting facts. Possibly tempdb out of "
                     "space or a system table is inconsistent. Check previous errors.", more=[(1105, "Could not "
                     "allocate space for object in database 'tempdb'.")]),
], ids=["tempdb-full-1105", "log-full-9002", "timeout", "8921-collecting-facts"])
def test_an_operational_checkdb_failure_fails_the_run_and_leaves_the_status(tmp_path: Path, error: Any) -> None:
    w = make_world(tmp_path)
    rec = take_backup(w.rt, "orders", "full", engine=w.engine)
    w.driver.on(r"DBCC CHECKDB", first=True, error=error)
    report = verify_backup_mssql(w.rt, "orders", engine=w.engine, now=NOW)
    assert not report.passed and report.corrupt_pieces == []
    check = next(c for c in report.checks if c.name == "DBCC CHECKDB")
    assert not check.ok and "says nothing about the backup" in check.detail
    assert w.rt.catalog.get(rec.id).status == "completed"
    assert "DROP DATABASE" in w.driver.executed[-1].sql


# -- 6. STOPAT on every log, the state after, the offset at the target ------------------------------------------


def chain(w: World) -> tuple[BackupRecord, BackupRecord]:
    for kind in ("full", "log", "log", "log"):
        take_backup(w.rt, "orders", kind, engine=w.engine)  # type: ignore[arg-type]
    logs = sorted(w.rt.catalog.list_backups("orders", kinds=["log"]), key=lambda b: b.end_time or NOW)
    return logs[0], logs[-1]


def test_the_same_stopat_goes_on_every_restore_log(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    first, last = chain(w)
    assert first.end_time and last.end_time
    target = last.end_time - timedelta(minutes=5)
    start = len(w.driver.executed)
    restore_to_point(w.rt, "orders", into="Orders_pitr", target=target, engine=w.engine, now=NOW)
    logs = [e for e in restores(w, start) if "RESTORE LOG" in e.sql]
    local = (target + timedelta(minutes=60)).replace(tzinfo=None).isoformat(timespec="milliseconds")
    assert len(logs) == 3 and [param(e, "stopat") for e in logs] == [local] * 3


def test_a_stopat_that_leaves_the_database_restoring_fails_clearly(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    first, _ = chain(w)
    assert first.end_time
    w.server.stopat_outside = True
    with pytest.raises(RestoreError, match=r"'Orders_pitr' is RESTORING, not ONLINE.*STOPAT .* is outside the logs"
                                           r".*logged before the designated point in time"):
        restore_to_point(w.rt, "orders", into="Orders_pitr", target=first.end_time - timedelta(minutes=1),
                         engine=w.engine, now=NOW)


def test_the_target_is_converted_with_the_offset_at_that_instant(tmp_path: Path) -> None:
    w = make_world(tmp_path)  # the backups recorded UTC+60 (time_zone 4)
    _, last = chain(w)
    assert last.end_time
    target = last.end_time - timedelta(minutes=5)
    w.server.offset_at = lambda utc: 120 if utc >= target.replace(tzinfo=None) - timedelta(minutes=1) else 60
    start = len(w.driver.executed)
    restore_to_point(w.rt, "orders", into="Orders_pitr", target=target, engine=w.engine, now=NOW)
    stopat = param(restores(w, start)[-1], "stopat")
    assert stopat == (target + timedelta(minutes=120)).replace(tzinfo=None).isoformat(timespec="milliseconds")


def test_a_local_time_the_clocks_show_twice_is_refused(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    _, last = chain(w)
    assert last.end_time
    back = (last.end_time - timedelta(minutes=40)).replace(tzinfo=None)  # the clocks go back from +120 to +60
    w.server.offset_at = lambda utc: 120 if utc < back else 60
    with pytest.raises(RestorePlanError, match=r"a local time that happens twice .* \+120 to \+60 minutes"):
        restore_to_point(w.rt, "orders", into="Orders_pitr", target=last.end_time - timedelta(minutes=10),
                         engine=w.engine, now=NOW)
    assert "Orders_pitr" not in w.server.existing_databases


def test_before_2022_a_target_where_the_recorded_offsets_differ_is_refused(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    w.server.product_version = "15.0.4375.4"
    take_backup(w.rt, "orders", "full", engine=w.engine)
    take_backup(w.rt, "orders", "log", engine=w.engine)
    w.server.utc_offset_minutes = 120  # the clocks went forward an hour between the two logs
    w.server.tick(timedelta(minutes=60))
    take_backup(w.rt, "orders", "log", engine=w.engine)
    logs = sorted(w.rt.catalog.list_backups("orders", kinds=["log"]), key=lambda b: b.end_time or NOW)
    assert logs[0].end_time and logs[1].end_time
    inside = logs[0].end_time + (logs[1].end_time - logs[0].end_time) / 2
    with pytest.raises(RestorePlanError, match=r"offset changed from \+60 to \+120 minutes"):
        restore_to_point(w.rt, "orders", into="Orders_pitr", target=inside, engine=w.engine, now=NOW)
    start = len(w.driver.executed)
    before = logs[0].end_time - timedelta(minutes=1)  # both sides recorded +60: that is the offset then
    restore_to_point(w.rt, "orders", into="Orders_early", target=before, engine=w.engine, now=NOW)
    assert param(restores(w, start)[-1], "stopat") == (before + timedelta(minutes=60)).replace(
        tzinfo=None).isoformat(timespec="milliseconds")
    assert not any("CURRENT_TIMEZONE_ID" in e.sql for e in w.driver.executed)


def test_last_valid_restore_time_lets_a_target_inside_the_last_log_through(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    w.server.foreign_backup("D", "D:\\Backup\\full.bak")
    w.server.foreign_backup("L", "D:\\Backup\\log1.trn")
    row = w.server.backups[-1].row
    row["last_valid_restore_time"] = row["backup_start_date"] + timedelta(seconds=90)
    recs = imported(w)
    log = next(b for b in recs.values() if b.kind == "log")
    start_utc = datetime.fromisoformat(log.meta["backup_start"])
    assert log.end_time == start_utc + timedelta(seconds=90)
    assert log.meta["last_valid_restore_time"] == (start_utc + timedelta(seconds=90)).isoformat()
    result = restore_to_point(w.rt, "orders", into="Orders_r", target=start_utc + timedelta(seconds=60),
                              engine=w.engine, now=NOW)
    assert result.plan.pieces[-1].backup.id == log.id


def test_before_2022_history_does_not_ask_for_last_valid_restore_time(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    w.server.product_version = "15.0.4375.4"
    take_backup(w.rt, "orders", "full", engine=w.engine)
    import_history(w.rt, "orders", engine=w.engine)
    assert not any("last_valid_restore_time" in e.sql for e in w.driver.executed)


def test_msdb_rows_keep_position_bulk_logged_and_last_valid_restore_time() -> None:
    base = {"backup_set_id": 9, "backup_set_uuid": "{AB}", "name": None, "type": "L", "database_name": "Orders",
            "first_lsn": 1, "last_lsn": 2, "checkpoint_lsn": None, "database_backup_lsn": None,
            "differential_base_lsn": None, "differential_base_guid": None, "is_copy_only": 0,
            "has_backup_checksums": 1, "is_damaged": 0, "first_recovery_fork_guid": None,
            "last_recovery_fork_guid": None, "fork_point_lsn": None, "database_guid": None, "family_guid": None,
            "backup_start_date": datetime(2026, 3, 29, 3, 0), "backup_finish_date": datetime(2026, 3, 29, 3, 1),
            "time_zone": 8, "backup_size": 1, "compressed_backup_size": 1, "physical_device_name": MEDIA,
            "device_type": 2, "position": 3, "has_bulk_logged_data": 1,
            "last_valid_restore_time": datetime(2026, 3, 29, 3, 0, 40)}
    info = msdb.BackupSet.from_rows([base], 0)
    assert (info.position, info.has_bulk_logged_data) == (3, True)
    assert info.end_time == datetime(2026, 3, 29, 1, 0, 40, tzinfo=UTC)
    assert info.meta()["position"] == 3 and info.meta()["has_bulk_logged_data"] is True


# -- 9. MOVE on the step that brings a file added after the full --------------------------------------------------


def test_a_file_added_after_the_full_is_moved_on_the_log_that_creates_it(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    take_backup(w.rt, "orders", "full", engine=w.engine)
    take_backup(w.rt, "orders", "log", engine=w.engine)
    w.server.file_list.append({"LogicalName": "Orders_data2", "PhysicalName": "/var/opt/mssql/data/Orders2.ndf",
                               "Type": "D", "FileGroupName": "PRIMARY", "Size": 2**30, "FileId": 3})
    take_backup(w.rt, "orders", "log", engine=w.engine)
    take_backup(w.rt, "orders", "log", engine=w.engine)
    start = len(w.driver.executed)
    restore_to_point(w.rt, "orders", into="Orders_r", engine=w.engine, now=NOW)
    steps = restores(w, start)
    moved = [[p for p in e.params if isinstance(p, str) and p.startswith("Orders_")] for e in steps]
    assert moved == [["Orders_data", "Orders_log"], [], ["Orders_data2"], []]
    assert param(steps[2], "to1").startswith("/var/opt/mssql/data/Orders_r_") and param(steps[2], "to1").endswith(
        "_3.ndf")


# -- verification on another instance (dbatools' Test-DbaLastBackup -Destination) --------------------------------


def test_verification_restores_on_the_instance_verify_names(tmp_path: Path) -> None:
    other = DSN.replace("sql1.example.internal", "sqlverify.example.internal")
    w = make_world(tmp_path, settings={"verify": {"instance_dsn_env": "VERIFY_DSN"}})
    rec = take_backup(w.rt, "orders", "full", engine=w.engine)
    with pytest.raises(ConfigError, match=r"sqlserver\.verify\.instance_dsn_env: environment variable VERIFY_DSN"):
        verify_backup_mssql(w.rt, "orders", engine=w.engine, now=NOW)
    w.rt.environ["VERIFY_DSN"] = other
    start = len(w.driver.executed)
    report = verify_backup_mssql(w.rt, "orders", engine=w.engine, now=NOW)
    assert report.passed, report.error
    used = {w.driver.connections[e.connection].connstring for e in w.driver.executed[start:]}
    assert used == {other}
    assert w.rt.catalog.get(rec.id).status == "verified"


# -- 11. BULK_LOGGED ------------------------------------------------------------------------------------------


def test_a_bulk_logged_log_is_recorded_and_applied_whole_before_the_target(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    w.server.foreign_backup("D", "D:\\Backup\\full.bak")
    w.server.foreign_backup("L", "D:\\Backup\\log1.trn")
    w.server.backups[-1].row["has_bulk_logged_data"] = True
    w.server.foreign_backup("L", "D:\\Backup\\log2.trn")
    recs = imported(w)
    log1, log2 = sorted((b for b in recs.values() if b.kind == "log"), key=lambda b: b.end_time or NOW)
    assert (log1.meta["has_bulk_logged_data"], log2.meta["has_bulk_logged_data"]) == (True, False)
    assert log1.end_time and log2.end_time
    with pytest.raises(RestorePlanError, match="bulk-logged changes"):
        restore_to_point(w.rt, "orders", into="Orders_r", target=log1.end_time - timedelta(minutes=1),
                         engine=w.engine, now=NOW)
    start = len(w.driver.executed)
    restore_to_point(w.rt, "orders", into="Orders_r", target=log2.end_time - timedelta(minutes=1),
                     engine=w.engine, now=NOW)
    logs = [e for e in restores(w, start) if "RESTORE LOG" in e.sql]
    assert [param(e, "stopat") is not None for e in logs] == [False, True]  # no STOPAT inside the bulk log


def test_a_damaged_file_on_the_servers_disk_is_still_proven_corrupt_by_verifyonly(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    w.server.foreign_backup("D", MEDIA)
    [rec] = imported(w).values()
    damaged = odbc_error(3241, f"The media family on device '{MEDIA}' is incorrectly formed. SQL Server cannot "
                               "process this media family.")
    w.driver.on(r"RESTORE (HEADERONLY|VERIFYONLY)", first=True, error=damaged)
    report = verify_backup_mssql(w.rt, "orders", rec.id, engine=w.engine, now=NOW)
    assert not report.passed and report.corrupt_pieces == [rec.id]
    assert w.rt.catalog.get(rec.id).status == "corrupt"
