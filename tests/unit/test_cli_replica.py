"""`drkit replica create` refusals that need no database server: one line on stderr, exit 2, nothing sent.

Building a replica on real PostgreSQL is tests/integration/test_replica_create.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


@pytest.fixture
def policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ORDERS_DSN", "Driver={ODBC Driver 18 for SQL Server};Server=tcp:sql1,1433;Database=Orders")
    monkeypatch.setenv("ORDERS_DR_DSN", "Driver={ODBC Driver 18 for SQL Server};Server=tcp:sql2,1433;Database=Orders")
    path = tmp_path / "drkit.yaml"
    path.write_text(yaml.safe_dump({
        "catalog": f"sqlite:///{tmp_path / 'catalog.db'}",
        "databases": {
            "orders": {"engine": "sqlserver", "dsn_env": "ORDERS_DSN", "replica": {"dsn_env": "ORDERS_DR_DSN"},
                       "sqlserver": {"database": "Orders", "disk_path": "/var/opt/mssql/backup",
                                     "availability_group": "ag1"}},
            # nothing listens on port 1: a command that tried to connect would fail with exit 1
            "app": {"engine": "postgres", "dsn": "host=127.0.0.1 port=1 user=postgres", "data_dir": str(tmp_path)},
        }}))
    return path


def _run(policy: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--config", str(policy), *args])
    return result.exit_code, result.stdout, result.stderr


def test_sql_server_replica_is_built_with_the_availability_group_tools(policy: Path) -> None:
    code, out, err = _run(policy, "replica", "create", "orders")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: 'orders' is a SQL Server database: its DR replica is a secondary of "
                          "availability group 'ag1'")
    assert "ALTER AVAILABILITY GROUP ag1 ADD REPLICA" in err and "Add-DbaAgReplica" in err


@pytest.mark.parametrize(("db", "expected"), [
    ("nope", "nope"),
    ("app", "databases.app.replica: not configured"),
])
def test_bad_input_is_refused_before_any_server_is_reached(policy: Path, db: str, expected: str) -> None:
    code, out, err = _run(policy, "replica", "create", db)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
