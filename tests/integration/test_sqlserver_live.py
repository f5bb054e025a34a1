"""The whole SQL Server cycle against a real server: runs only where DRKIT_TEST_MSSQL_DSN names one.

No SQL Server can run on drkit's development machines, so this test has never run there; everywhere else it
reports itself skipped, saying why. To run it, point it at a disposable server (it creates and drops its own
databases):

    DRKIT_TEST_MSSQL_DSN='Driver={ODBC Driver 18 for SQL Server};Server=tcp:host,1433;UID=sa;PWD=…;
        TrustServerCertificate=yes'
    DRKIT_TEST_MSSQL_BACKUP_DIR=/var/opt/mssql/backup/drkit-it   # as the server sees it (it must exist)
    DRKIT_TEST_MSSQL_LOCAL_DIR=/mnt/mssql-backup/drkit-it        # the same directory as this machine sees it
                                                                 # (default: the same path: same host)

Cycle: a new database with a table, full → rows → diff → rows → log → rows → log; verification restore of
the full (VERIFYONLY, WITH MOVE, CHECKDB, DROP); point-in-time restore between the two logs checked against the
rows; msdb history import is idempotent; everything dropped at the end.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from drkit.config import parse_policy
from drkit.engines.sqlserver import tsql
from drkit.engines.sqlserver.backup import take_backup
from drkit.engines.sqlserver.engine import SqlServerEngine
from drkit.engines.sqlserver.history import import_history
from drkit.engines.sqlserver.odbc import pyodbc_driver
from drkit.engines.sqlserver.restore import restore_to_point
from drkit.engines.sqlserver.settings import SqlServerSettings
from drkit.engines.sqlserver.verify import verify_backup_mssql
from drkit.runtime import Runtime

DSN = os.environ.get("DRKIT_TEST_MSSQL_DSN", "")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not DSN, reason="DRKIT_TEST_MSSQL_DSN is not set: no SQL Server to test against, so the "
                                       "live SQL Server cycle was not run"),
]


def _exec(engine: SqlServerEngine, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with engine.session() as session:
        result = session.run(tsql.Batch("integration test", sql, params))
    return [tuple(r) for rs in result.result_sets for r in rs.rows]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Runtime, SqlServerEngine, str]]:
    server_dir = os.environ.get("DRKIT_TEST_MSSQL_BACKUP_DIR")
    if not server_dir:
        pytest.skip("DRKIT_TEST_MSSQL_BACKUP_DIR is not set: a backup directory shared by the server and this "
                    "machine is needed")
    local_dir = os.environ.get("DRKIT_TEST_MSSQL_LOCAL_DIR", server_dir)
    name = f"drkit_it_{uuid.uuid4().hex[:8]}"
    policy = parse_policy({"catalog": f"sqlite:///{tmp_path}/catalog.db",
                           "tiers": {"local": {"path": str(tmp_path / "local")}},
                           "databases": {"orders": {"engine": "sqlserver", "dsn_env": "IT_DSN",
                                                    "verify": {"checks": ["SELECT COUNT(*) FROM dbo.t"]}}}},
                          base_dir=tmp_path)
    rt = Runtime(policy, environ={"IT_DSN": DSN, "DRKIT_BACKUP_KEY": base64.b64encode(os.urandom(32)).decode()})
    settings = SqlServerSettings.from_mapping("orders", {"database": name, "disk_path": server_dir,
                                                         "local_path": local_dir, "compression": False})
    engine = SqlServerEngine("orders", dsn=DSN, settings=settings, driver=pyodbc_driver())
    _exec(engine, f"CREATE DATABASE {tsql.quote_name(name)}; ALTER DATABASE {tsql.quote_name(name)} SET RECOVERY "
                  "FULL;")
    _exec(engine, f"CREATE TABLE {tsql.quote_name(name)}.dbo.t (id int IDENTITY PRIMARY KEY, at datetime2 "
                  "DEFAULT SYSUTCDATETIME());")
    created = [name]
    try:
        yield rt, engine, name
    finally:
        with engine.session() as session:
            for db in (*created, f"{name}_pitr"):
                engine.drop_database(session, db)
        rt.close()


def _rows(engine: SqlServerEngine, db: str, n: int) -> None:
    _exec(engine, f"INSERT INTO {tsql.quote_name(db)}.dbo.t DEFAULT VALUES;" * n)


def _count(engine: SqlServerEngine, db: str) -> int:
    return int(_exec(engine, f"SELECT COUNT(*) FROM {tsql.quote_name(db)}.dbo.t;")[0][0])


def test_full_cycle(live: tuple[Runtime, SqlServerEngine, str]) -> None:
    rt, engine, name = live
    assert all(i.ok for i in engine.check() if i.name in ("database", "recovery model")), engine.check()
    full = take_backup(rt, "orders", "full", engine=engine)
    _rows(engine, name, 10)
    diff = take_backup(rt, "orders", "diff", engine=engine)
    assert diff.base_id == full.id
    _rows(engine, name, 10)
    first_log = take_backup(rt, "orders", "log", engine=engine)
    time.sleep(2)
    marker = datetime.now(UTC)
    time.sleep(2)
    _rows(engine, name, 10)
    second_log = take_backup(rt, "orders", "log", engine=engine)
    assert second_log.meta["first_lsn"] == first_log.meta["last_lsn"]

    report = verify_backup_mssql(rt, "orders", engine=engine)
    assert report.passed, report.error
    assert rt.catalog.get(full.id).status == "verified"

    result = restore_to_point(rt, "orders", into=f"{name}_pitr", target=marker, engine=engine)
    assert [p.backup.id for p in result.plan.pieces][:2] == [full.id, diff.id]
    assert _count(engine, f"{name}_pitr") == 20

    imported = import_history(rt, "orders", engine=engine)
    assert imported.imported == [] and imported.already_known >= 4
