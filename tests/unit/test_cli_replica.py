"""`drkit replica create` refusals that need no database server: one line on stderr, exit 2, nothing sent.

Building a replica on real PostgreSQL is tests/integration/test_replica_create.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from drkit.engines.postgres.provision import PrimaryFacts

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


def test_a_replica_on_another_host_is_built_there_not_here(policy: Path, tmp_path: Path) -> None:
    doc = yaml.safe_load(policy.read_text())
    doc["databases"]["app"]["replica"] = {"dsn": "host=192.0.2.1 port=5432 user=postgres",
                                          "data_dir": str(tmp_path / "dr")}
    policy.write_text(yaml.safe_dump(doc))
    code, out, err = _run(policy, "replica", "create", "app")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "databases.app.replica: its DSN names host 192.0.2.1, which is not this machine" in err
    assert not (tmp_path / "dr").exists()


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


READY = PrimaryFacts(
    target="db1:5432/postgres", in_recovery=False, system_identifier="1", role="postgres", can_replicate=True,
    settings={"wal_level": "replica", "max_wal_senders": "10", "max_replication_slots": "10", "wal_log_hints": "on",
              "data_checksums": "off", "full_page_writes": "on",
              "config_file": "/var/lib/postgresql/15/main/postgresql.conf",
              "data_directory": "/var/lib/postgresql/15/main"},
    senders_in_use=0, slots_in_use=0, slot_type=None, slot_active=False, replication_login=None)


def test_a_ready_primary_has_no_problem_and_no_warning() -> None:
    facts = READY
    assert facts.problems(senders_needed=2, slot="drkit_dr") == [] and facts.warnings() == []


def test_configuration_outside_the_data_directory_a_logical_slot_and_a_standby_are_named() -> None:
    facts = replace(READY, settings={**READY.settings, "config_file": "/etc/postgresql/15/main/postgresql.conf"},
                    slot_type="logical", in_recovery=True)
    problems = facts.problems(senders_needed=2, slot="drkit_dr")
    assert any("postgresql.conf (/etc/postgresql/15/main/postgresql.conf) is outside its data directory" in p
               for p in problems)
    assert any("slot 'drkit_dr' on db1:5432/postgres is a logical slot" in p for p in problems)
    assert any("is in recovery, a standby" in p for p in problems)


def test_no_rewind_support_is_a_warning_not_a_problem() -> None:
    facts = replace(READY, settings={**READY.settings, "wal_log_hints": "off", "data_checksums": "off"})
    assert facts.problems(senders_needed=2, slot="drkit_dr") == []
    assert "a failback will rebuild the old primary from a full base backup" in facts.warnings()[0]
