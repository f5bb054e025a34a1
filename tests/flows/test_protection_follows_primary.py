"""Backups follow the primary: after a failover drkit backs up DR, after the failback the primary again.

A real primary and streaming replica behind HAProxy (the failover test's world). The failover runbook takes
a full backup of DR at once, so the chain restarts on DR's timeline; the backup flows (what `drkit backup
log` / `full` and the schedules run, given only the database's name) then back up DR, and a
point-in-time restore to a moment after the failover holds the rows written on DR. The failback runbook
does the same for the primary.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from drkit.config import load_policy
from drkit.engines.postgres.pgctl import LocalCluster
from drkit.runtime import Runtime
from flows.backup import BACKUP_FLOWS
from flows.dr import dr_failback, dr_failover
from flows.restore import restore_point_in_time
from tests.flows.test_dr_failback import _run
from tests.flows.test_dr_failover import World, _in_recovery, world  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def drkit(w: World, *args: str) -> str:
    result = CliRunner().invoke(app, ["--config", w.config, *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _completed(flow_fn: Any, name: str, **kwargs: Any) -> dict[str, Any]:
    """Run a runbook, approve it (as alice, with her code), and return what it completed with."""
    state = _run(flow_fn, name, True, **kwargs)["state"]
    assert state.is_completed(), state.message
    result: dict[str, Any] = state.result()
    return result


def _write(dsn: str, *ids: int) -> datetime:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS marker(id int PRIMARY KEY)")
        for i in ids:
            conn.execute("INSERT INTO marker VALUES (%s)", [i])
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _backups(w: World) -> list[dict[str, Any]]:
    return json.loads(drkit(w, "backups", "app", "--json"))  # type: ignore[no-any-return]


def backup(w: World, kind: str) -> str:
    """A backup flow run as the schedule (or `drkit backup KIND app`) runs it: the database's name only."""
    backup_id = BACKUP_FLOWS[kind](db="app", config=w.config)
    assert backup_id is not None
    return str(backup_id)


def _restored_markers(w: World, into: Path, to: datetime) -> list[int]:
    out = restore_point_in_time(db="app", into=str(into), target=to, keep_running=True, config=w.config)
    rt = Runtime(load_policy(w.config))
    try:
        cluster = LocalCluster(into, int(str(out["port"])), rt.bin_dir("app"), rt.os_user("app"), socket_dir=into)
    finally:
        rt.close()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            return [r[0] for r in conn.execute("SELECT id FROM marker ORDER BY id").fetchall()]
    finally:
        cluster.stop("immediate")


def _backed_up_timeline(w: World, backup_id: str) -> int:
    (rec,) = [b for b in _backups(w) if b["id"] == backup_id]
    return int(rec["timeline"])


def test_backups_follow_the_primary_through_failover_and_failback(world: World) -> None:  # noqa: F811
    policy = yaml.safe_load(Path(world.config).read_text())
    policy["databases"]["app"]["failback"] = {"hold": "1s", "probe_interval": "0.2s"}  # traffic steps: quick
    Path(world.config).write_text(yaml.safe_dump(policy, sort_keys=False))
    backup(world, "full")
    _write(world.sb.dsn, 1, 2)
    backup(world, "log")
    world.sb.primary.stop("immediate")

    failover = _completed(dr_failover, "failover-app", db="app", config=world.config, probe_interval_seconds=0.2)
    # The runbook took a full backup of DR at once: the chain starts cleanly on DR's timeline.
    protected = failover["protection"]
    assert protected["full"] and _backed_up_timeline(world, protected["full"]) == 2
    assert protected["archiving"]["ok"], protected
    with psycopg.connect(world.standby.dsn(), autocommit=True) as conn:
        assert conn.execute("SHOW archive_mode").fetchone() == ("on",)  # inherited from its base backup

    # Writes on DR, then the scheduled commands back up DR (the policy still names the old primary).
    _write(world.standby.dsn(), 3, 4)
    time.sleep(0.2)
    after_failover = _write(world.standby.dsn(), 5)
    time.sleep(0.2)
    _write(world.standby.dsn(), 6)
    log_id = backup(world, "log")
    assert _backed_up_timeline(world, log_id) == 2
    full_id = backup(world, "full")
    assert _backed_up_timeline(world, full_id) == 2
    _write(world.standby.dsn(), 7)
    backup(world, "log")
    status = json.loads(drkit(world, "status", "--json"))[0]
    assert status["endpoint"]["side"] == "dr"
    assert status["rpo_seconds"] is not None and datetime.fromisoformat(status["restorable_until"]) > after_failover
    # A point-in-time restore to a moment after the failover holds what was written on DR until then.
    scratch = Path(world.config).parent
    assert _restored_markers(world, scratch / "pitr-dr", after_failover) == [1, 2, 3, 4, 5]

    failback = _completed(dr_failback, "failback-app", db="app", config=world.config)
    assert failback["failed_back"] and failback["protection"]["full"]
    assert _backed_up_timeline(world, failback["protection"]["full"]) == 3
    assert not _in_recovery(world.sb.primary) and _in_recovery(world.standby)
    back = _write(world.sb.dsn, 8)
    log_id = backup(world, "log")
    assert _backed_up_timeline(world, log_id) == 3
    assert json.loads(drkit(world, "status", "--json"))[0]["endpoint"]["side"] == "primary"
    assert back < datetime.now(UTC)
