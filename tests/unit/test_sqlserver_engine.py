"""SQL Server engine by contract: quoting, settings, error translation, secrets, import, verification outcomes.

Everything runs against tests/support/fake_odbc.py (a recording pyodbc stand-in and a simulated server), so the
whole module takes about a second.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drkit.engines import open_engine
from drkit.engines.sqlserver import errors, msdb, settings, tsql
from drkit.engines.sqlserver.backup import take_backup
from drkit.engines.sqlserver.database import SqlServerDatabase
from drkit.engines.sqlserver.engine import SqlServerEngine
from drkit.engines.sqlserver.history import import_history
from drkit.engines.sqlserver.restore import restore_to_point
from drkit.engines.sqlserver.verify import verify_backup_mssql
from drkit.errors import BackupSkipped, ConfigError, DatabaseUnreachableError, PrerequisiteError, RestorePlanError
from tests.support.fake_odbc import (
    DSN,
    DSN_PASSWORD,
    SAS_TOKEN,
    FakeDriver,
    FakeOdbcError,
    SimulatedServer,
    World,
    make_world,
    odbc_error,
)

NOW = datetime(2026, 5, 18, 12, 0, tzinfo=UTC)
LSN_4305 = ("The log in this backup set begins at LSN 34000000125600001, which is too recent to apply to the "
            "database. An earlier log backup that includes LSN 34000000120800001 can be restored.")


def everything_recorded(w: World) -> str:
    """Every catalog field, audit event and copy, as text: where no secret may ever appear."""
    cat = w.rt.catalog
    parts = [repr(b) + repr(dict(b.meta)) for b in cat.list_backups()]
    parts += [repr(e) + repr(dict(e.detail)) for e in cat.audit_events()]
    parts += [repr(c) for c in cat.all_copies()]
    return "\n".join(parts)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SAS_TOKEN not in text and DSN_PASSWORD not in text
        assert "Zm9vYmFyU2VjcmV0U2lnbmF0dXJl" not in text  # the signature alone


# -- names and values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "quoted"), [
    ("Orders", "[Orders]"), ("Or]ders", "[Or]]ders]"), ("a]]b", "[a]]]]b]"), ("it's", "[it's]"),
    ("x;--", "[x;--]"), ("[x]", "[[x]]]"), ("Ünïcødé 数据", "[Ünïcødé 数据]"), ("n" * 128, "[" + "n" * 128 + "]"),
])
def test_quote_name_is_quotename(name: str, quoted: str) -> None:
    assert tsql.quote_name(name) == quoted


@pytest.mark.parametrize("bad", ["", "n" * 129, "a\x00b", "line\nbreak", "tab\t", " lead", "trail ", "why?", None, 5])
def test_bad_names_are_refused(bad: object) -> None:
    with pytest.raises(tsql.NameRefusedError):
        tsql.quote_name(bad, "database name")


def test_a_bad_name_is_refused_before_any_sql_is_sent(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    take_backup(w.rt, "orders", "full", engine=w.engine)
    sent = len(w.driver.executed)
    for bad in ("x\x00y", "n" * 200, "new\nline", "q?"):
        with pytest.raises(tsql.NameRefusedError):
            restore_to_point(w.rt, "orders", into=bad, engine=w.engine, now=NOW)
    assert len(w.driver.executed) == sent
    with pytest.raises(ConfigError, match="sqlserver"):
        settings.SqlServerSettings.from_mapping("orders", {"database": "bad\x01name", "disk_path": "/b"})
    with pytest.raises(tsql.NameRefusedError):
        tsql.backup("ok", "full", device_type="URL", devices=["https://a/" + "x" * 300], name="n", description="d")


def test_settings_validation_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"databases\.orders\.sqlserver\.colour: unknown key"):
        settings.SqlServerSettings.from_mapping("orders", {"colour": "blue", "disk_path": "/b"})
    with pytest.raises(ConfigError, match=r"sqlserver\.url: the URL must not hold a SAS token"):
        settings.SqlServerSettings.from_mapping("orders", {"target": "url", "url": "https://a.blob.core.windows.net/c?sv=1&sig=abc"})
    with pytest.raises(ConfigError, match="https"):
        settings.SqlServerSettings.from_mapping("orders", {"target": "url", "url": "http://127.0.0.1:10000/c"})
    with pytest.raises(ConfigError, match="disk_path"):
        settings.SqlServerSettings.from_mapping("orders", {})
    with pytest.raises(ConfigError, match="max_stripe_gib"):
        settings.SqlServerSettings.from_mapping("orders", {"disk_path": "/b", "max_stripe_gib": 500})
    s = settings.SqlServerSettings.from_mapping("orders", {"disk_path": "D:\\Backup"})
    assert s.database == "orders" and settings.join_server_path("D:\\Backup\\", "x.bak") == "D:\\Backup\\x.bak"


def test_stripes_keep_each_blob_under_the_limit() -> None:
    gib = 2**30
    assert settings.stripe_count(0, 100 * gib) == 1
    assert settings.stripe_count(100 * gib, 100 * gib) == 1
    assert settings.stripe_count(100 * gib + 1, 100 * gib) == 2
    assert settings.stripe_count(6400 * gib, 100 * gib) == 64
    assert settings.stripe_count(9000 * gib, 100 * gib) == 64  # 140 GiB each: still under the blob limit
    with pytest.raises(PrerequisiteError, match="target: disk"):
        settings.stripe_count(64 * 200 * gib, 100 * gib)


def test_dsn_hint_and_scrub_never_show_the_password() -> None:
    assert settings.dsn_hint(DSN) == "tcp:sql1.example.internal,1433/master"
    text = errors.scrub(f"login failed; {DSN}; url?sv=1&sig=abcDEF%2B; SECRET = N'tok'", [SAS_TOKEN])
    assert DSN_PASSWORD not in text and "abcDEF" not in text and "'tok'" not in text


def test_driver_error_parsing() -> None:
    exc = odbc_error(3201, "Cannot open backup device 'x'. Operating system error 5(Access is denied.).",
                     more=[(3013, "BACKUP DATABASE is terminating abnormally.")])
    sqlstate, numbers, text = errors.parse_driver_error(exc)
    assert (sqlstate, numbers) == ("42000", (3201, 3013))
    assert text.startswith("Cannot open backup device 'x'.") and "[Microsoft]" not in text
    assert "terminating abnormally" in text


# -- errors surface as domain errors -------------------------------------------------------------------


def test_backup_device_error_after_progress_messages_fails_the_backup(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    w.driver.on(r"\nBACKUP DATABASE", messages=["10 percent processed.", "20 percent processed."], first=True,
                error=odbc_error(3201, "Cannot open backup device '/var/opt/mssql/backup/drkit/x.bak'. Operating "
                                       "system error 5(Access is denied.).", function="SQLMoreResults"),
                error_at=2)
    with pytest.raises(errors.BackupDeviceError) as err:
        take_backup(w.rt, "orders", "full", engine=w.engine)
    msg = str(err.value)
    assert "3201" in msg and "Access is denied" in msg and "service account" in msg
    rec = w.rt.catalog.list_backups("orders")[0]
    assert rec.status == "failed" and "3201" in (rec.error or "")
    assert not w.driver.violations and not list(w.stage.iterdir())
    assert_no_secret(msg, everything_recorded(w))


def test_failed_url_backup_reports_its_leased_blobs_and_cleanup_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    w = make_world(tmp_path, target="url", data_bytes=250 * 2**30)
    w.driver.on(r"\nBACKUP DATABASE", first=True, error_at=1, messages=["10 percent processed."],
                error=odbc_error(3013, "BACKUP DATABASE is terminating abnormally."))
    with pytest.raises(errors.SqlServerError) as err:
        take_backup(w.rt, "orders", "full", engine=w.engine)
    msg = str(err.value)
    assert "3 blob(s) with active leases" in msg and "lease break" in msg and "_03of03.bak" in msg
    assert "3013" in (w.rt.catalog.list_backups("orders")[0].error or "")
    removed: list[str] = []
    w.driver.on(r"\nBACKUP DATABASE", first=True, times=1, error=odbc_error(3013, "BACKUP DATABASE is terminating "
                                                                               "abnormally."))
    with pytest.raises(errors.SqlServerError, match="were removed"):
        take_backup(w.rt, "orders", "full", engine=w.engine, cleanup=removed.extend)
    assert len(removed) == 3
    assert_no_secret(msg, everything_recorded(w), caplog.text)


def test_log_too_recent_4305_is_a_log_chain_error_with_what_to_do(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    for kind in ("full", "log", "log"):
        take_backup(w.rt, "orders", kind, engine=w.engine)
    w.driver.on(r"RESTORE LOG", first=True, error=odbc_error(4305, LSN_4305, "42000",
                                                             more=[(3013, "RESTORE LOG is terminating abnormally.")]))
    sent = len(w.driver.executed)
    with pytest.raises(errors.LogChainError) as err:
        restore_to_point(w.rt, "orders", into="Orders_copy", engine=w.engine, now=NOW)
    msg = str(err.value)
    assert "4305" in msg and "too recent" in msg and "import-history" in msg and "new full backup" in msg
    assert "partial restore is left as database 'Orders_copy'" in msg
    assert not any("DROP DATABASE" in e.sql for e in w.driver.executed[sent:])  # left for inspection
    assert not list(w.stage.iterdir())


@pytest.mark.parametrize(("error", "kind"), [
    (odbc_error(4208, "The statement BACKUP LOG is not allowed while the recovery model is SIMPLE."),
     errors.LogBackupNotPossibleError),
    (odbc_error(4214, "BACKUP LOG cannot be performed because there is no current database backup."),
     errors.LogBackupNotPossibleError),
    (odbc_error(3013, "BACKUP LOG is terminating abnormally."), errors.SqlServerError),
    (ms_timeout := odbc_error(0, "Query timeout expired", "HYT00"), errors.QueryTimeoutError),
])
def test_log_backup_errors(tmp_path: Path, error: Exception, kind: type[Exception]) -> None:
    w = make_world(tmp_path)
    take_backup(w.rt, "orders", "full", engine=w.engine)
    w.driver.on(r"\nBACKUP LOG", first=True, error=error)  # type: ignore[arg-type]
    with pytest.raises(kind) as err:
        take_backup(w.rt, "orders", "log", engine=w.engine)
    if kind is errors.LogBackupNotPossibleError:
        assert isinstance(err.value, PrerequisiteError) and "full" in str(err.value).lower()
    if kind is errors.QueryTimeoutError:
        assert "long_timeout_s" in str(err.value)
    assert ms_timeout is not None


def test_unreachable_server_never_shows_the_password(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    w.driver.connect_error = odbc_error(18456, f"Login failed for user 'drkit'. PWD={DSN_PASSWORD}", "28000")
    with pytest.raises(DatabaseUnreachableError) as err:
        w.engine.check()
    assert "18456" in str(err.value) and "sql1.example.internal" in str(err.value)
    assert_no_secret(str(err.value), repr(w.engine))


def test_every_batch_runs_in_autocommit_with_a_timeout(tmp_path: Path) -> None:
    w = make_world(tmp_path, settings={"query_timeout_s": 30, "long_timeout_s": 7200})
    for kind in ("full", "diff", "log"):
        take_backup(w.rt, "orders", kind, engine=w.engine)
    assert all(e.autocommit for e in w.driver.executed)
    for e in w.driver.executed:
        assert e.timeout == (7200 if e.sql.split(";\n")[-1].lstrip().startswith(("BACKUP", "RESTORE", "DBCC"))
                             or "\nBACKUP " in e.sql else 30)
    assert all(c.closed for c in w.driver.connections)


def test_check_lists_what_is_missing_and_how_to_fix_it(tmp_path: Path) -> None:
    w = make_world(tmp_path, target="url", settings={"certificate": "BackupCert"})
    w.driver.on(r"AS can_backup_database", first=True, rows=[{
        "edition": "Express Edition", "engine_edition": 4, "state": "ONLINE", "recovery_model": "SIMPLE",
        "page_verify": "TORN_PAGE",
        "is_sysadmin": 0, "can_backup_database": 1, "can_backup_log": 0, "can_create_database": 0,
        "can_read_history": 1, "can_alter_credential": 0, "credential_exists": 0, "certificate_usable": 0}])
    items = {i.name: i for i in w.engine.check()}
    bad = {n for n, i in items.items() if not i.ok}
    assert bad == {"recovery model", "page verify", "BACKUP LOG permission", "CREATE ANY DATABASE (restores)",
                   "backup compression", "backup encryption", "SAS credential", "encryption certificate"}
    assert "SET RECOVERY FULL" in items["recovery model"].fix and "dbcreator" in items[
        "CREATE ANY DATABASE (restores)"].fix
    with pytest.raises(PrerequisiteError, match="drkit check orders"):
        take_backup(w.rt, "orders", "full", engine=w.engine)


# -- secrets, end to end -----------------------------------------------------------------------------


def test_no_secret_reaches_catalog_logs_or_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    w = make_world(tmp_path, target="url", settings={"url_tier": "blob"},
                   tiers={"blob": {"store": "azure", "container": "sqlbackups", "connection_string_env": "AZURE_CONN"}})
    for kind in ("full", "diff", "log", "log"):
        take_backup(w.rt, "orders", kind, engine=w.engine)
    assert verify_backup_mssql(w.rt, "orders", engine=w.engine, now=NOW).passed
    restore_to_point(w.rt, "orders", into="Orders_copy", engine=w.engine, now=NOW)
    w.driver.on(r"N' CREDENTIAL", first=True, error=odbc_error(
        15151, f"Cannot alter the credential, because SECRET = N'{SAS_TOKEN}' is invalid."))
    with pytest.raises(errors.SqlServerError) as err:
        take_backup(w.rt, "orders", "full", engine=w.engine)
    sent = [e for e in w.driver.executed if SAS_TOKEN in e.params]
    assert sent and all(SAS_TOKEN not in e.sql for e in w.driver.executed)  # sent only as a parameter
    assert_no_secret(str(err.value), everything_recorded(w), caplog.text, repr(w.engine))


# -- history import and chain checks -------------------------------------------------------------------


def test_import_history_adopts_a_running_server_and_is_idempotent(tmp_path: Path) -> None:
    w = make_world(tmp_path, first_vlf=12_000_000)  # a busy server: LSNs past 2**64
    sim = w.server
    sim.foreign_backup("D", "D:\\Backup\\Orders_full.bak")
    sim.foreign_backup("L", "https://other.blob.core.windows.net/c/Orders_1.trn")
    sim.foreign_backup("I", "D:\\Backup\\Orders_diff.bak")
    sim.foreign_backup("L", "D:\\Backup\\Orders_2.trn")
    sim.foreign_backup("D", "{5A3C-VDI}", copy_only=True)
    sim.backups[-1].devices = [("{5A3C-VDI}", 7)]
    result = import_history(w.rt, "orders", engine=w.engine)
    assert len(result.imported) == 5 and result.already_known == 0 and len(result.unrestorable) == 1
    again = import_history(w.rt, "orders", engine=w.engine)
    assert again.imported == [] and again.already_known == 5
    recs = {b.kind + str(i): b for i, b in enumerate(sorted(w.rt.catalog.list_backups("orders"),
                                                            key=lambda b: b.started_at))}
    full, diff = recs["full0"], recs["diff2"]
    assert diff.base_id == full.id and full.format == msdb.FORMAT_DISK and recs["log1"].format == msdb.FORMAT_URL
    assert full.meta["imported"] and int(full.meta["first_lsn"]) > 2**64  # LSNs beyond BIGINT, kept as text
    assert full.start_lsn == int(full.meta["first_lsn"]) and full.end_lsn == int(full.meta["last_lsn"])
    assert full.lineage == full.meta["last_recovery_fork_guid"]  # the log chain link both engines fill
    plan = open_engine(w.rt, "orders").plan_restore(None, now=NOW)
    assert [p.backup.id for p in plan.pieces] == [full.id, diff.id, recs["log3"].id]
    assert plan.pieces[0].tier == "sqlserver" and plan.pieces[0].store_key == "D:\\Backup\\Orders_full.bak"
    assert w.rt.catalog.audit_events(action="history.import")


def test_a_log_backup_taken_outside_drkit_is_reported_then_healed_by_import(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    take_backup(w.rt, "orders", "full", engine=w.engine)
    first = take_backup(w.rt, "orders", "log", engine=w.engine)
    w.server.foreign_backup("L", "D:\\Backup\\agent_job.trn")
    with pytest.raises(errors.LogChainError, match="outside drkit") as err:
        take_backup(w.rt, "orders", "log", engine=w.engine)
    assert "import-history" in str(err.value)
    logs = w.rt.catalog.list_backups("orders", kinds=["log"])
    assert len(logs) == 2 and all(b.status == "completed" for b in logs)  # the new log is kept: it is real
    newest = max(logs, key=lambda b: b.started_at)
    assert first.end_time is not None and newest.end_time is not None
    with pytest.raises(RestorePlanError, match="gap"):
        open_engine(w.rt, "orders").plan_restore(newest.end_time, now=NOW)
    assert import_history(w.rt, "orders", engine=w.engine).imported
    plan = open_engine(w.rt, "orders").plan_restore(newest.end_time, now=NOW)
    assert len(plan.logs) == 3


def test_a_differential_on_a_full_drkit_does_not_know_is_refused(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    take_backup(w.rt, "orders", "full", engine=w.engine)
    w.server.foreign_backup("D", "D:\\Backup\\nightly.bak")  # not copy-only: it moves the differential base
    sent = len(w.driver.executed)
    with pytest.raises(errors.LogChainError, match="does not know"):
        take_backup(w.rt, "orders", "diff", engine=w.engine)
    assert not any("\nBACKUP DATABASE" in e.sql for e in w.driver.executed[sent:])
    import_history(w.rt, "orders", engine=w.engine)
    diff = take_backup(w.rt, "orders", "diff", engine=w.engine)
    assert diff.base_id is not None and w.rt.catalog.get(diff.base_id).meta["imported"]


# -- verification outcomes -----------------------------------------------------------------------------


def test_checkdb_errors_mark_the_backup_corrupt_and_the_scratch_is_dropped(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    rec = take_backup(w.rt, "orders", "full", engine=w.engine)
    w.driver.on(r"DBCC CHECKDB", first=True, error=odbc_error(
        8928, "Object ID 581577110, index ID 1, partition ID 72057594041401344: Page (1:312) could not be "
              "processed.  See other errors for details.", "42000"))
    report = verify_backup_mssql(w.rt, "orders", engine=w.engine, now=NOW)
    assert not report.passed and "8928" in (report.error or "")
    assert w.rt.catalog.get(rec.id).status == "corrupt"
    assert "DROP DATABASE" in w.driver.executed[-1].sql


def test_verifyonly_rejecting_the_media_marks_it_corrupt(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    rec = take_backup(w.rt, "orders", "full", engine=w.engine)
    w.driver.on(r"RESTORE VERIFYONLY", first=True, error=odbc_error(
        3241, "The media family on device '/x.bak' is incorrectly formed. SQL Server cannot process this media "
              "family."))
    report = verify_backup_mssql(w.rt, "orders", engine=w.engine, now=NOW)
    assert not report.passed and rec.id in report.corrupt_pieces
    assert w.rt.catalog.get(rec.id).status == "corrupt"
    assert not any("RESTORE DATABASE" in e.sql for e in w.driver.executed)
    assert "DROP DATABASE" in w.driver.executed[-1].sql


def test_an_access_error_during_verification_proves_nothing_either_way(tmp_path: Path) -> None:
    w = make_world(tmp_path, target="url")
    rec = take_backup(w.rt, "orders", "full", engine=w.engine)
    w.driver.on(r"RESTORE VERIFYONLY", first=True, error=odbc_error(
        3201, "Cannot open backup device 'https://drkitbackups.blob.core.windows.net/x'. Operating system error "
              "86(The specified network password is not correct.)."))
    report = verify_backup_mssql(w.rt, "orders", engine=w.engine, now=NOW)
    assert not report.passed and report.corrupt_pieces == []
    assert w.rt.catalog.get(rec.id).status == "completed"
    assert "SAS token" in (report.error or "")
    assert "DROP DATABASE" in w.driver.executed[-1].sql


def test_a_corrupt_stored_copy_is_recorded_and_the_next_tiers_copy_is_verified(tmp_path: Path) -> None:
    w = make_world(tmp_path, tiers={"far": {"path": str(tmp_path / "far")}})
    rec = take_backup(w.rt, "orders", "full", engine=w.engine)
    [near] = w.rt.catalog.copies(rec.id)
    with w.rt.store("local").reader(near.store_key) as fh:
        data = fh.read()
    with w.rt.store("far").writer(near.store_key) as out:
        out.write(data)
    w.rt.catalog.add_copy(rec.id, "far", near.store_key, status="complete", stored_bytes=len(data),
                          sha256=near.sha256)
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF  # same size: only the SHA-256 can tell
    with w.rt.store("local").writer(near.store_key) as out:
        out.write(bytes(flipped))
    report = verify_backup_mssql(w.rt, "orders", engine=w.engine, now=NOW)
    assert report.passed, report.error
    assert report.corrupt_pieces == [] and any("local" in line for line in report.warnings)
    assert {c.tier: c.status for c in w.rt.catalog.copies(rec.id)} == {"local": "corrupt", "far": "complete"}
    assert w.rt.catalog.get(rec.id).status == "verified"
    sha = next(c for c in report.checks if c.name == f"sha256 {rec.id}")
    assert "in tier far" in sha.detail


def test_a_backup_whose_every_stored_copy_is_corrupt_is_marked_corrupt_before_any_restore(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    rec = take_backup(w.rt, "orders", "full", engine=w.engine)
    [copy] = w.rt.catalog.copies(rec.id)
    with w.rt.store("local").reader(copy.store_key) as fh:
        data = bytearray(fh.read())
    data[-1] ^= 0xFF
    with w.rt.store("local").writer(copy.store_key) as out:
        out.write(bytes(data))
    sent = len(w.driver.executed)
    report = verify_backup_mssql(w.rt, "orders", engine=w.engine, now=NOW)
    assert not report.passed and report.corrupt_pieces == [rec.id]
    assert "do not match their SHA-256" in (report.error or "")
    assert w.rt.catalog.get(rec.id).status == "corrupt"
    assert not any("RESTORE" in e.sql for e in w.driver.executed[sent:])


def test_restore_never_overwrites_an_existing_database(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    take_backup(w.rt, "orders", "full", engine=w.engine)
    w.server.existing_databases["Orders"] = "ONLINE"
    sent = len(w.driver.executed)
    with pytest.raises(errors.RestoreTargetError, match="nothing was changed"):
        restore_to_point(w.rt, "orders", into="Orders", engine=w.engine, now=NOW)
    assert not any("RESTORE" in e.sql for e in w.driver.executed[sent:])


def test_msdb_rows_convert_to_utc_with_the_recorded_offset() -> None:
    local = datetime(2026, 3, 29, 3, 30)
    assert msdb.to_utc(local, 8, 0) == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # UTC+2 in 15-minute units
    assert msdb.to_utc(local, 127, -300) == datetime(2026, 3, 29, 8, 30, tzinfo=UTC)  # unknown: server offset


def test_fake_driver_enforces_parameter_counts_and_drain() -> None:
    d = FakeDriver()
    conn = d.connect("x", autocommit=True)
    cur = conn.cursor()
    with pytest.raises(FakeDriver.Error):
        cur.execute("SELECT ?")
    d.on("SELECT 1", messages=["a", "b"])
    cur.execute("SELECT 1")
    cur.close()
    assert d.violations


# -- editions: compression and encryption (SERVERPROPERTY('EngineEdition') and ('Edition')) ------------------


@pytest.mark.parametrize(("engine_edition", "edition", "capable"), [
    (3, "Enterprise Edition: Core-based Licensing (64-bit)", True),
    (3, "Developer Edition (64-bit)", True),
    (2, "Standard Edition (64-bit)", True),
    (2, "Web Edition (64-bit)", False),  # Web reports the Standard engine: only its name tells it apart
    (4, "Express Edition with Advanced Services (64-bit)", False),
    (5, "SQL Azure", False),  # any edition but those three is refused too
])
def test_compression_and_encryption_need_enterprise_standard_or_developer(
        tmp_path: Path, engine_edition: int, edition: str, capable: bool) -> None:
    w = make_world(tmp_path, settings={"certificate": "BackupCert"})
    w.server.facts.update(engine_edition=engine_edition, edition=edition)
    items = {i.name: i for i in w.engine.check()}
    for name, fix in (("backup compression", "set sqlserver.compression: false"),
                      ("backup encryption", "remove sqlserver.certificate")):
        assert items[name].ok is capable, items[name]
        assert fix in items[name].fix and "Enterprise, Standard or Developer" in items[name].fix
    if capable:
        assert take_backup(w.rt, "orders", "full", engine=w.engine) is not None
        return
    with pytest.raises(PrerequisiteError, match="cannot compress backups") as err:
        take_backup(w.rt, "orders", "full", engine=w.engine)
    assert "cannot encrypt backups" in str(err.value)
    assert not any("\nBACKUP " in e.sql for e in w.driver.executed)


def test_express_backs_up_without_compression_or_a_certificate(tmp_path: Path) -> None:
    w = make_world(tmp_path, settings={"compression": False})
    w.server.facts.update(engine_edition=4, edition="Express Edition (64-bit)")
    assert all(i.ok for i in w.engine.check())
    take_backup(w.rt, "orders", "full", engine=w.engine)
    (backup,) = [e.sql for e in w.driver.executed if "\nBACKUP DATABASE" in e.sql]
    assert "COMPRESSION" not in backup and "ENCRYPTION" not in backup


# -- page verify: backed up with a warning, not skipped --------------------------------------------------


def test_a_database_without_page_verify_checksum_is_backed_up_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    w = make_world(tmp_path)
    w.server.facts.update(page_verify="TORN_PAGE_DETECTION")
    check = {i.name: i for i in w.engine.check()}["page verify"]
    assert not check.ok and "backups still run, with a warning" in check.fix  # `drkit check` still shows it
    rec = take_backup(w.rt, "orders", "full", engine=w.engine)
    assert rec.status == "completed"
    (warning,) = rec.meta["warnings"]
    assert "PAGE_VERIFY TORN_PAGE_DETECTION, not CHECKSUM" in warning and "SET PAGE_VERIFY CHECKSUM" in warning
    assert "PAGE_VERIFY TORN_PAGE_DETECTION" in caplog.text
    w.server.facts.update(page_verify="CHECKSUM")
    assert "warnings" not in take_backup(w.rt, "orders", "log", engine=w.engine).meta


# -- availability groups: what a secondary takes, and the preferred backup replica -----------------------


def _on_secondary(tmp_path: Path, **settings: object) -> World:
    w = make_world(tmp_path, settings={"availability_group": "ag1", **settings})
    w.server.facts.update(ag_role="SECONDARY")
    return w


def test_a_secondary_takes_copy_only_fulls_and_regular_logs(tmp_path: Path) -> None:
    w = _on_secondary(tmp_path, copy_only=True)
    full = take_backup(w.rt, "orders", "full", engine=w.engine)
    log = take_backup(w.rt, "orders", "log", engine=w.engine)
    sent = [e.sql for e in w.driver.executed if "\nBACKUP " in e.sql]
    assert "WITH COPY_ONLY," in sent[0] and "BACKUP LOG" in sent[1] and "COPY_ONLY" not in sent[1]
    assert full.meta["is_copy_only"] and not log.meta["is_copy_only"]


def test_a_secondary_refuses_a_differential_and_a_full_that_is_not_copy_only(tmp_path: Path) -> None:
    w = _on_secondary(tmp_path)
    assert not {i.name: i for i in w.engine.check()}["full backups on a secondary"].ok
    with pytest.raises(PrerequisiteError, match=r"full backups on a secondary .*copy_only: true"):
        take_backup(w.rt, "orders", "full", engine=w.engine)
    with pytest.raises(PrerequisiteError, match=r"no differential backup on a secondary.*schedules\.diff: null"):
        take_backup(w.rt, "orders", "diff", engine=w.engine)
    assert not any("\nBACKUP " in e.sql for e in w.driver.executed)
    w.engine.require_ready()  # the flow's prerequisite step, for any kind, lets the log backup run
    assert take_backup(w.rt, "orders", "log", engine=w.engine).status == "completed"
    assert w.rt.catalog.list_backups("orders", kinds=["full", "diff"]) == []


def test_a_replica_that_is_not_the_preferred_backup_replica_skips_and_records_why(tmp_path: Path) -> None:
    w = _on_secondary(tmp_path, copy_only=True)  # and a policy with schedules.diff: null (see the settings tests)
    w.engine.settings = w.engine.settings.model_copy(update={"backup_replica": "preferred"})
    w.server.facts.update(is_preferred_backup_replica=0)
    for kind in ("full", "log"):
        with pytest.raises(BackupSkipped, match="not the preferred backup replica of availability group 'ag1'"):
            take_backup(w.rt, "orders", kind, engine=w.engine)
    assert not any("\nBACKUP " in e.sql for e in w.driver.executed)
    assert w.rt.catalog.list_backups("orders") == []  # no failed backup either
    events = w.rt.catalog.audit_events(database="orders", action="backup.skipped")
    assert [e.subject for e in events] == ["full", "log"]
    assert "sys.fn_hadr_backup_is_preferred_replica is 0" in events[0].detail["reason"]
    w.server.facts.update(is_preferred_backup_replica=1)
    assert take_backup(w.rt, "orders", "full", engine=w.engine).meta["is_copy_only"]


def test_connected_ignores_the_backup_preference(tmp_path: Path) -> None:
    w = make_world(tmp_path, settings={"availability_group": "ag1"})
    w.server.facts.update(ag_role="PRIMARY", is_preferred_backup_replica=0)
    assert take_backup(w.rt, "orders", "full", engine=w.engine).status == "completed"


# -- history from every replica of the group (msdb is per server; the log chain runs through all) -------------


class _Replicas:
    """pyodbc's shape, routing each connection to the fake server its DSN names (``Server=tcp:NAME,1433``)."""

    Error = FakeOdbcError

    def __init__(self, **drivers: FakeDriver) -> None:
        self.drivers = drivers

    def connect(self, connstring: str, /, *, autocommit: bool = False, timeout: int = 0) -> object:
        name = next((n for n in self.drivers if f"Server=tcp:{n}," in connstring), "SQL1")
        return self.drivers[name].connect(connstring, autocommit=autocommit, timeout=timeout)


def test_import_history_reads_every_replica_of_the_group(tmp_path: Path) -> None:
    w = make_world(tmp_path, settings={"availability_group": "ag1"})
    w.server.facts.update(ag_role="PRIMARY")
    take_backup(w.rt, "orders", "full", engine=w.engine)
    w.driver.on(r"JOIN sys\.availability_replicas", rows=[
        {"replica_server_name": "SQL1", "is_local": 1}, {"replica_server_name": "SQL2", "is_local": 0},
        {"replica_server_name": "SQL3", "is_local": 0}])
    sql2 = FakeDriver()
    sim2 = SimulatedServer(sql2, database="Orders")
    sim2.next_id = 5001  # its own msdb: other backup_set ids
    sim2.foreign_backup("L", "D:\\Backup\\Orders_log_0100.trn")  # Ola's log backups on the secondary
    sim2.foreign_backup("L", "D:\\Backup\\Orders_log_0115.trn")
    sql3 = FakeDriver()
    sql3.connect_error = odbc_error(53, "Named Pipes Provider: Could not open a connection to SQL Server",
                                    "08001")
    router = _Replicas(SQL1=w.driver, SQL2=sql2, SQL3=sql3)
    engine = SqlServerEngine("orders", dsn=DSN, settings=w.engine.settings, driver=router)  # type: ignore[arg-type]
    line = SqlServerDatabase(w.rt, "orders", server=engine).import_history()
    assert "imported 2 backup(s) of orders from 2 replicas" in line and "tcp:SQL2,1433/master: 2" in line
    assert "replica tcp:SQL3,1433/master not read: cannot connect" in line and DSN_PASSWORD not in line
    logs = w.rt.catalog.list_backups("orders", kinds=["log"])
    assert sorted(b.meta["imported_from"] for b in logs) == ["tcp:SQL2,1433/master"] * 2
    assert [d.connstring for d in sql2.connections][0].startswith("Driver={ODBC Driver 18 for SQL Server};"
                                                                    "Server=tcp:SQL2,1433;Database=master;UID=drkit")
    again = SqlServerDatabase(w.rt, "orders", server=engine).import_history()
    assert "imported 0 backup(s) of orders from 2 replicas" in again  # each backup set once, wherever it is


def test_copy_only_on_a_primary_takes_copy_only_fulls_and_the_group_role_must_be_readable(tmp_path: Path) -> None:
    w = make_world(tmp_path, settings={"copy_only": True})
    assert take_backup(w.rt, "orders", "full", engine=w.engine).meta["is_copy_only"]
    take_backup(w.rt, "orders", "log", engine=w.engine)
    (log,) = [e.sql for e in w.driver.executed if "\nBACKUP LOG" in e.sql]
    assert "COPY_ONLY" not in log
    grouped = make_world(tmp_path / "ag", settings={"availability_group": "ag1"})  # no role: no VIEW SERVER STATE
    role = {i.name: i for i in grouped.engine.check()}["availability-group role"]
    assert not role.ok and "VIEW SERVER STATE" in role.fix
    with pytest.raises(PrerequisiteError, match="availability-group role is 'unknown'"):
        take_backup(grouped.rt, "orders", "log", engine=grouped.engine)
