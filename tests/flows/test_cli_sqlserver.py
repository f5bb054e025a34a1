"""Every `drkit` command that takes a database, for a SQL Server database, through the recording fake driver.

SQL Server cannot run here, so the server is the recording fake ODBC driver with a simulated msdb
(tests/support/fake_odbc.py); everything else is real: the policy file, the CLI, the Prefect flows (test
harness), the SQLite catalog and the filesystem tier. Each command must answer for SQL Server exactly
what it answers for PostgreSQL: backups listed, a restorable point and an RPO, a restore plan that joins
by LSN, retention that keeps what a restore needs, a verification restore, a restore into a new
database; and refuse, in one line and with exit 2, what the engine cannot do.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.artifacts import Artifact
from typer.testing import CliRunner

from cli import app
from cli.common import console as cli_console
from drkit.engines.sqlserver import engine as engine_module
from tests.support.fake_odbc import DSN, FakeDriver, SimulatedServer

pytestmark = [pytest.mark.slow, pytest.mark.integration]
runner = CliRunner()


class Sql:
    """A policy file naming one SQL Server database, and the fake server behind its DSN."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.stage = tmp / "stage"
        self.stage.mkdir()
        self.policy = tmp / "drkit.yaml"
        self.policy.write_text(yaml.safe_dump({
            "catalog": f"sqlite:///{tmp}/catalog.db",
            "tiers": {"local": {"path": str(tmp / "local"), "keep_days": 7}},
            "databases": {"orders": {
                "engine": "sqlserver", "dsn_env": "ORDERS_DSN",
                "sqlserver": {"database": "Orders", "disk_path": "/var/opt/mssql/backup/drkit",
                              "local_path": str(self.stage)},
                "verify": {"after": []}}},
        }))
        monkeypatch.setenv("DRKIT_BACKUP_KEY", base64.b64encode(bytes(range(32))).decode())
        monkeypatch.setenv("ORDERS_DSN", DSN)
        self.driver = FakeDriver()
        # msdb keeps server-local times: this server runs at UTC+1 and its clock starts an hour ago
        start = (datetime.now(UTC) + timedelta(minutes=60) - timedelta(hours=1)).replace(tzinfo=None)
        self.server = SimulatedServer(self.driver, database="Orders", server_dir="/var/opt/mssql/backup/drkit",
                                      local_dir=self.stage, start=start, clock_step=timedelta(minutes=5))
        monkeypatch.setattr(engine_module, "pyodbc_driver", lambda: self.driver)

    def run(self, *args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, ["--config", str(self.policy), *args])
        return result.exit_code, result.stdout, result.stderr

    def json(self, *args: str) -> Any:
        code, out, err = self.run(*args, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def sql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sql:
    return Sql(tmp_path, monkeypatch)


def test_backups_status_plan_retention_verify_and_restore_of_a_sqlserver_database(sql: Sql) -> None:
    code, out, err = sql.run("check", "orders")
    assert code == 0, err
    ids = {}
    for kind in ("full", "log", "diff", "log"):
        sql.server.tick()
        code, out, err = sql.run("backup", kind, "orders")
        assert code == 0, err
        ids.setdefault(kind, []).append(out.strip().splitlines()[-1])
    full, diff, last_log = ids["full"][0], ids["diff"][0], ids["log"][-1]

    listed = sql.json("backups", "orders")
    assert {b["id"] for b in listed} == {full, diff, *ids["log"]}
    by_id = {b["id"]: b for b in listed}
    assert by_id[diff]["base"] == full
    # positions are the LSNs msdb reported, beyond 64 bits, and every log joins the one before
    assert all(b["start_position"] is not None and b["end_position"] > b["start_position"] for b in listed)
    assert by_id[ids["log"][1]]["start_position"] == by_id[ids["log"][0]]["end_position"]

    (status,) = sql.json("status")
    assert status["database"] == "orders" and status["newest"]["full"]["id"] == full
    newest_end = max(datetime.fromisoformat(b["end_time"]) for b in listed)
    assert datetime.fromisoformat(status["restorable_until"]) == newest_end and status["rpo_seconds"] > 0

    plan = sql.json("restore-plan", "orders")
    assert [p["backup"] for p in plan["pieces"]] == [full, diff, last_log]
    assert datetime.fromisoformat(plan["reaches"]) == newest_end
    assert [p["positions"] for p in plan["pieces"]] == [
        [by_id[i]["start_position"], by_id[i]["end_position"]] for i in (full, diff, last_log)]

    actions = sql.json("retention", "plan")
    deleted = {a["backup"] for a in actions if a["action"] == "delete"}
    assert not deleted & {full, diff, last_log}, actions

    code, out, err = sql.run("verify", "orders", "--backup", full)
    assert code == 0, err
    assert "PASS" in out
    assert any("DBCC CHECKDB" in s for s in sql.driver.sql())
    assert sql.json("backups", "orders")[-1]["status"] == "verified"

    before = len(sql.driver.executed)
    code, out, err = sql.run("restore", "orders", "--into", "Orders_copy", "--latest")
    assert code == 0, err
    assert "Orders_copy" in out
    sent = [e.sql for e in sql.driver.executed[before:]]
    restores = [s for s in sent if "RESTORE DATABASE" in s or "RESTORE LOG" in s]
    assert restores and all("[Orders_copy]" in s for s in restores)
    assert any("DBCC CHECKDB" in s and "Orders_copy" in s for s in sent)  # validated after the restore


def test_what_sqlserver_cannot_do_is_refused_in_one_line_before_anything_runs(sql: Sql) -> None:
    code, out, err = sql.run("backup", "full", "orders")
    assert code == 0, err
    before = len(sql.driver.executed)
    code, _, err = sql.run("restore-plan", "orders", "--lsn", "0/3000028")
    assert code == 2 and "stops at a time" in err and len(err.strip().splitlines()) == 1
    code, _, err = sql.run("recover", "orders", "--before", datetime.now(UTC).isoformat())
    assert code == 2 and "drkit restore orders --into NAME" in err and len(err.strip().splitlines()) == 1
    assert not any("RESTORE" in e.sql for e in sql.driver.executed[before:])


def _policy_block(sql: Sql, **changes: Any) -> None:
    policy = yaml.safe_load(sql.policy.read_text())
    orders = policy["databases"]["orders"]
    orders["sqlserver"].update(changes.pop("sqlserver", {}))
    orders.update(changes)
    sql.policy.write_text(yaml.safe_dump(policy))


def test_a_replica_that_is_not_the_preferred_one_skips_its_backups_and_says_why(sql: Sql) -> None:
    _policy_block(sql, sqlserver={"availability_group": "ag1", "backup_replica": "preferred", "copy_only": True},
                  schedules={"diff": None})
    sql.server.facts.update(ag_role="SECONDARY", is_preferred_backup_replica=0)
    for kind in ("full", "log"):
        code, out, err = sql.run("backup", kind, "orders")
        assert code == 0, err  # skipped is not failed
        assert f"{kind} backup of orders skipped: " in err and "not the preferred backup replica" in err, err
        assert len(err.strip().splitlines()) == 1
    assert sql.json("backups", "orders") == []
    assert not any("\nBACKUP " in e.sql for e in sql.driver.executed)

    sql.server.facts.update(is_preferred_backup_replica=1)  # the group's preference moved to this replica
    code, out, err = sql.run("backup", "full", "orders")
    assert code == 0, err
    (full,) = sql.json("backups", "orders")
    assert full["status"] == "completed" and full["id"] == out.strip().splitlines()[-1]
    assert [e.sql for e in sql.driver.executed if "\nBACKUP DATABASE" in e.sql][-1].count("COPY_ONLY") == 1
    code, _, err = sql.run("backup", "diff", "orders")  # a secondary takes no differential
    assert code == 1 and "no differential backup on a secondary" in err and len(err.strip().splitlines()) == 1


def test_an_edition_without_backup_compression_is_refused_by_check_with_the_fix(
        sql: Sql, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_console, "width", 400)  # one line per row of the check table
    sql.server.facts.update(engine_edition=4, edition="Express Edition (64-bit)")
    code, out, err = sql.run("check", "orders")
    assert code == 1
    (row,) = [line for line in out.splitlines() if "backup compression" in line]
    assert "✘" in row and "Express Edition" in row and "set sqlserver.compression: false in the policy" in row
    _policy_block(sql, sqlserver={"compression": False})
    code, out, err = sql.run("check", "orders")
    assert code == 0, out + err


def test_a_database_without_page_verify_checksum_is_backed_up_and_its_report_says_so(sql: Sql) -> None:
    sql.server.facts.update(page_verify="NONE")
    code, out, err = sql.run("backup", "full", "orders")
    assert code == 0, err
    (full,) = sql.json("backups", "orders")
    assert full["status"] == "completed"
    report = Artifact.get("orders-full-backup")
    assert report is not None
    (row,) = json.loads(str(report.data))
    assert row["backup"] == full["id"]
    (warning,) = row["warnings"]
    assert "PAGE_VERIFY NONE, not CHECKSUM" in warning and "SET PAGE_VERIFY CHECKSUM" in warning
