"""Read-only `drkit` commands start fast because they import only what they use: no Prefect, no Alembic or
SQLAlchemy (the catalog is read with sqlite3 when it is at the newest schema), no Azure SDK, no httpx.

The import graph is asserted, not timings (bench/cli.py measures those): each command runs in a fresh
interpreter, as `drkit` does, and reports which heavy packages ended up in sys.modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drkit.catalog import Catalog

HEAVY = ("prefect", "alembic", "sqlalchemy", "azure", "httpx")
RUN = """
import json, os, sys
from cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
watched = os.environ["WATCHED"].split(",")
print(json.dumps({"code": code, "loaded": sorted(m for m in watched if m in sys.modules)}), file=sys.stderr)
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    Catalog.open(catalog).close()  # at the newest schema, as after any earlier command
    path = tmp_path / "drkit.yaml"
    path.write_text(yaml.safe_dump({
        "catalog": catalog,
        "tiers": {"local": {"store": "filesystem", "path": str(tmp_path / "local")}},
        "databases": {"app": {"engine": "postgres", "dsn": "postgresql://127.0.0.1:1/app",
                              "data_dir": str(tmp_path / "pg")}},
        "approvals": {"approvers": ["alice"]},
    }))
    return path


def loaded_by(policy: Path, *args: str, watched: tuple[str, ...] = HEAVY) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(policy.parent / "prefect-home")  # no profile with an API URL
    env["WATCHED"] = ",".join(watched)
    proc = subprocess.run([sys.executable, "-c", RUN, "--config", str(policy), *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return report["code"], report["loaded"]


@pytest.mark.parametrize("args", [
    ["--help"],
    ["status"],
    ["status", "--json"],
    ["backups", "app"],
    ["backups", "app", "--json"],
    ["restore-plan", "app"],  # exit 1: nothing to restore from yet; still nothing heavy imported
    ["approvals"],  # no server configured or running: no run can be waiting
    ["server", "status"],
])
def test_read_only_commands_import_nothing_heavy(policy: Path, args: list[str]) -> None:
    code, loaded = loaded_by(policy, *args)
    assert code in (0, 1, None)
    assert loaded == []
    assert not (policy.parent / "var" / "prefect-local" / "server.pid").exists()  # and started no server


def test_help_imports_no_rich_no_pydantic_no_policy(policy: Path) -> None:
    """`drkit --help` is click's plain help: no rich rendering, no argument conversion, no policy models."""
    code, loaded = loaded_by(policy, "--help", watched=("rich", "pydantic", "yaml", "drkit.config"))
    assert code in (0, None)
    assert loaded == []


@pytest.mark.parametrize("args", [["status"], ["backups", "app"], ["restore-plan", "app"]])
def test_catalog_readers_import_no_database_driver(policy: Path, args: list[str]) -> None:
    """What a read-only command does not run (a backup, a restore, a verification) is not imported either:
    the PostgreSQL engine's backup/restore/verify modules and their psycopg."""
    code, loaded = loaded_by(policy, *args, watched=("psycopg", "drkit.engines.postgres.restore",
                                                      "drkit.engines.postgres.verify"))
    assert code in (0, 1, None)
    assert loaded == []


def test_policy_without_sqlserver_imports_no_sqlserver_settings(policy: Path) -> None:
    """The SQL Server settings model (and its T-SQL builders) is loaded only by a policy with a sqlserver block."""
    code, loaded = loaded_by(policy, "status", watched=("drkit.engines.sqlserver.settings", "drkit.config"))
    assert code in (0, 1, None)
    assert loaded == ["drkit.config"]


DELEGATE = """
import json, os, sys
from cli.warm import delegate
status = delegate(sys.argv[1:])
watched = os.environ["WATCHED"].split(",")
print(json.dumps({"status": status, "loaded": sorted(m for m in watched if m in sys.modules)}), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["backup", "full", "app"], ["status"], ["backups", "app"]])
def test_the_drkit_process_tries_the_warm_process_before_importing_anything(policy: Path, args: list[str]) -> None:
    """`drkit` (cli.entry) asks the warm process first: with none running the command runs in its own process,
    and until then nothing but the standard library was imported (no typer, rich, pydantic, policy, Prefect)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DRKIT_"))}
    env["WATCHED"] = "typer,click,rich,pydantic,yaml,drkit.config,prefect,typing"
    proc = subprocess.run([sys.executable, "-c", DELEGATE, "--config", str(policy), *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report == {"status": None, "loaded": []}


def test_the_warm_process_finds_the_local_server_directory() -> None:
    from cli.prefect_server import LOCAL_DIR
    from cli.warm import LOCAL_DIR as WARM_LOCAL_DIR
    assert WARM_LOCAL_DIR == LOCAL_DIR


@pytest.mark.parametrize(("args", "expected"), [
    (["backup", "full", "app"], ("backup", None)),
    (["--config", "/p/d.yaml", "-v", "status"], ("status", "/p/d.yaml")),
    (["--config=/p/d.yaml", "backups", "app"], ("backups", "/p/d.yaml")),
    (["--help"], (None, None)),
    (["-v", "--help", "status"], (None, None)),
    ([], (None, None)),
])
def test_the_client_reads_the_command_and_policy_from_argv(args: list[str], expected: tuple[str | None, str | None]
                                                            ) -> None:
    from cli.warm import _command_and_config
    assert _command_and_config(args) == expected
