"""The `drkit` command as an operator uses it: flows run through the Prefect API, errors are one clear line."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from drkit.engines import open_engine
from drkit.runtime import Runtime
from drkit.sandbox import Sandbox
from tests.support.pgdata import connect

pytestmark = [pytest.mark.slow, pytest.mark.integration]
runner = CliRunner()


def drkit(sandbox: Sandbox, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--config", str(sandbox.policy_path), *args])
    return result.exit_code, result.stdout, result.stderr


def test_backup_list_status_plan_and_restore_to_a_time(sandbox: Sandbox, rt: Runtime, scratch: Path) -> None:
    with connect(sandbox.dsn) as conn:
        conn.execute("CREATE TABLE cli_marker(id int PRIMARY KEY)")
    code, out, err = drkit(sandbox, "backup", "full", "app")
    assert code == 0, err
    full_id = out.strip().splitlines()[-1]
    assert full_id.startswith("app-full-")
    with connect(sandbox.dsn) as conn:
        conn.execute("INSERT INTO cli_marker VALUES (1)")
        time.sleep(0.2)
        mid = datetime.now(UTC)
        time.sleep(0.2)
        conn.execute("INSERT INTO cli_marker VALUES (2)")
    code, out, err = drkit(sandbox, "backup", "log", "app")
    assert code == 0, err

    code, out, err = drkit(sandbox, "verify", "app", "--backup", full_id)
    assert code == 0 and "PASS" in out and "amcheck" in out, err
    code, out, _ = drkit(sandbox, "approvals", "--json")
    assert code == 0 and json.loads(out) == []
    code, _, err = drkit(sandbox, "approve", "00000000-0000-0000-0000-000000000000", "--as", "eve", "--reason", "x")
    assert code == 2 and "no flow run" in err  # the run judges who may answer (tests/flows/test_approvals.py)

    code, out, _ = drkit(sandbox, "backups", "app", "--json")
    listed = json.loads(out)
    assert listed[0]["kind"] == "log" and any(b["id"] == full_id for b in listed)

    code, out, _ = drkit(sandbox, "status", "--json")
    status = json.loads(out)[0]
    assert status["database"] == "app" and status["newest"]["full"]["id"] == full_id
    assert status["rpo_seconds"] is not None and status["rpo_seconds"] < 600

    code, out, _ = drkit(sandbox, "restore-plan", "app", "--to", mid.isoformat(), "--json")
    plan = json.loads(out)
    assert code == 0 and plan["pieces"][0]["backup"] == full_id and plan["recovery"] == "time"
    assert plan["estimated_seconds"] >= 0 and "measured by the last verification" in plan["estimate_basis"]

    into = scratch / "cli-restore"
    code, out, err = drkit(sandbox, "restore", "app", "--into", str(into), "--to", mid.isoformat(),
                           "--keep-running")
    assert code == 0, err
    hint = re.search(r"psql\s+-h\s+(\S+)\s+-p\s+(\d+)\s+-U\s+postgres", out)  # no TCP: the socket only
    assert hint is not None, out
    port = int(hint.group(2))
    from drkit.engines.postgres.pgctl import LocalCluster
    cluster = LocalCluster(into, port, rt.bin_dir("app"), rt.os_user("app"), socket_dir=Path(hint.group(1)))
    try:
        with connect(cluster.dsn()) as conn:
            assert conn.execute("SELECT array_agg(id) FROM cli_marker").fetchone() == ([1],)
    finally:
        cluster.stop()


def test_operator_mistakes_get_one_clear_line(sandbox: Sandbox, rt: Runtime, scratch: Path) -> None:
    open_engine(rt, "app").take_backup("full")
    code, _, err = drkit(sandbox, "backup", "full", "nosuch")
    assert code == 2 and "unknown database 'nosuch'" in err and "app" in err
    code, _, err = drkit(sandbox, "restore-plan", "app", "--to", "yesterday")
    assert code == 2 and "ISO 8601" in err
    code, _, err = drkit(sandbox, "restore-plan", "app", "--to", "2000-01-01T00:00:00Z")
    assert code == 1 and "before the earliest restorable point" in err
    code, _, err = drkit(sandbox, "restore", "app", "--into", str(scratch / "x"))
    assert code == 2 and "--to TIME, --lsn LSN or --latest" in err
    result = runner.invoke(app, ["--config", str(scratch / "missing.yaml"), "status"])
    assert result.exit_code == 2 and "not found" in result.stderr
