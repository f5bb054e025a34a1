"""`drkit failover` / `drkit failback` of an `engine: sqlserver` database, through the same approval pauses.

The database is in a simulated availability group (tests/support/fake_ag.py) that drkit loads as its
``pyodbc`` module: SQL1 in the primary region, SQL2 the DR replica. The runbooks are the real flows on a
real Prefect API; what they send to each server is recorded (the exact T-SQL of each step is pinned by the
golden tests in tests/unit/test_sqlserver_golden.py).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect import get_client
from prefect.input.actions import read_flow_run_input
from prefect.input.run_input import keyset_from_paused_state
from typer.testing import CliRunner

from cli import app
from drkit.catalog import Catalog
from flows.approvals import paused_runs
from flows.dr import dr_failback, dr_failover, replica_lag_check
from tests.support.approvers import answer
from tests.support.fake_ag import FakeAvailabilityGroup

pytestmark = [pytest.mark.slow, pytest.mark.integration]
APPROVER = "alice@example.com"


@dataclass
class World:
    group: FakeAvailabilityGroup
    config: str
    catalog_url: str

    def changes(self, replica: str) -> list[str]:
        """What the runbooks changed on ``replica`` (everything else they send only reads)."""
        return [sql for sql in self.group.sent(replica) if sql.startswith("ALTER")]

    def endpoint(self) -> str | None:
        catalog = Catalog.open(self.catalog_url)
        try:
            record = catalog.get_endpoint("orders")
        finally:
            catalog.close()
        return None if record is None else record.dsn_hint


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    group = FakeAvailabilityGroup()
    monkeypatch.setitem(sys.modules, "pyodbc", group)  # drkit loads its ODBC driver by importing pyodbc
    monkeypatch.setenv("ORDERS_DSN", group.dsn("SQL1"))
    monkeypatch.setenv("ORDERS_DR_DSN", group.dsn("SQL2"))
    catalog_url = f"sqlite:///{tmp_path}/catalog.db"
    config = tmp_path / "drkit.yaml"
    config.write_text(yaml.safe_dump({
        "catalog": catalog_url,
        "tiers": {"local": {"path": str(tmp_path / "local")}},
        "databases": {"orders": {
            "engine": "sqlserver", "dsn_env": "ORDERS_DSN",
            "sqlserver": {"database": "Orders", "disk_path": "/var/opt/mssql/backup", "availability_group": "ag1"},
            "replica": {"dsn_env": "ORDERS_DR_DSN", "max_lag_seconds": 5},
            "health": {"interval": "0s", "retries": 1, "timeout": "2s"},
        }},
        "approvals": {"approvers": [APPROVER], "failover_timeout": "5m"},
    }))
    yield World(group, str(config), catalog_url)


def _wait_paused(name: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in paused_runs() if r["name"] == name]
        if runs:
            return str(runs[0]["id"])
        time.sleep(0.2)
    raise AssertionError(f"{name} never paused for approval")


def _pause_form(run_id: str) -> str:
    """The text the Prefect UI shows above the Resume form."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
    assert run.state is not None
    return str(read_flow_run_input(keyset_from_paused_state(run.state)["description"], flow_run_id=run.id))


def _answered(call: Callable[[], Any], name: str, *, approve: bool) -> tuple[Any, str]:
    """Run ``call`` (a runbook) in a thread, answer its pause, return (its result, the pause form)."""
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(result=call()))
    t.start()
    run_id = _wait_paused(name)
    form = _pause_form(run_id)
    answer(run_id, approve=approve, approver=APPROVER, reason="INC-7: region down")
    t.join(120)
    assert not t.is_alive()
    return out["result"], form


def test_sqlserver_failover_and_failback_through_the_approval_pauses(world: World) -> None:
    lag = replica_lag_check(db="orders", config=world.config)
    assert (lag["state"], lag["too_far"]) == ("SYNCHRONIZED", False)

    world.group.kill("SQL1", unsent_lsn=300000)  # the primary region dies with log SQL2 never received
    rejected, form = _answered(lambda: dr_failover(db="orders", config=world.config, probe_interval_seconds=0),
                               "failover-orders", approve=False)
    assert rejected == {"failed_over": False, "why": "rejected", "by": APPROVER}
    assert "FORCE_FAILOVER_ALLOW_DATA_LOSS" in form  # what approving may do, and what it may lose:
    assert "Orders on SQL2: NOT SYNCHRONIZING" in form and "12 KB not redone" in form
    assert "newest applied commit" in form and "Login timeout expired" in form
    assert world.changes("SQL2") == [] and world.group.primary() is None

    result = CliRunner().invoke  # `drkit failover orders`, approved in the UI's form
    cli, _ = _answered(lambda: result(app, ["--config", world.config, "failover", "orders"]), "failover-orders",
                       approve=True)
    assert cli.exit_code == 0, cli.output
    said = " ".join(cli.output.split())
    assert "orders failed over to sql2.example.internal:1433 (approved by alice@example.com); data-loss window" in said
    assert world.changes("SQL2") == ["ALTER AVAILABILITY GROUP [ag1] FORCE_FAILOVER_ALLOW_DATA_LOSS;"]
    assert world.group.primary() == "SQL2" and world.endpoint() == "sql2.example.internal:1433"

    assert world.changes("SQL1") == []  # down: nothing waits for approval yet

    world.group.revive("SQL1")  # the primary region is back; SQL1 rejoins as a suspended secondary
    # a re-run promotes nothing again, and asks, in a pause of its own, to resume SQL1: that rolls back the log
    # SQL2 never received, which a database snapshot keeps
    again, form = _answered(lambda: dr_failover(db="orders", config=world.config, probe_interval_seconds=0),
                            "failover-orders", approve=True)
    assert again["failed_over"] and again["resumed"] and again["promotion"] == {"already_primary": True}
    assert len(world.changes("SQL2")) == 1
    assert "resume data movement on SQL1" in form
    assert ("Orders on SQL1: resuming rolls back its log past LSN 41000000056700001 up to LSN 41000000057000001"
            in form) and "snapshot [Orders_before_resume_41000000057000001] is taken there first" in form
    assert [step["done"].startswith("SQL1: Orders on SQL1: resuming rolls back") for step in again["after_failover"]
            ] == [True]
    assert world.group.replica("SQL1").snapshots == ["Orders_before_resume_41000000057000001"]
    assert world.changes("SQL1") == ["ALTER DATABASE [Orders] SET HADR RESUME;"]

    back, form = _answered(lambda: dr_failback(db="orders", config=world.config), "failback-orders", approve=True)
    assert "SET HADR RESUME" in form and "SYNCHRONIZED" in form
    assert back["failed_back"] and back["by"] == APPROVER
    assert back["switch"]["promotion"]["forced"] is False and back["steps"] == []  # endpoint router: no app weights
    assert world.changes("SQL1") == ["ALTER DATABASE [Orders] SET HADR RESUME;",
                                     "ALTER AVAILABILITY GROUP [ag1] FAILOVER;"]
    assert len(world.changes("SQL2")) == 1  # nothing more was changed on DR: it became a replica by the failover
    assert world.group.primary() == "SQL1" and world.endpoint() == "sql1.example.internal:1433"
    assert replica_lag_check(db="orders", config=world.config)["state"] == "SYNCHRONIZED"


def test_sqlserver_rejected_resume_leaves_the_failover_done_and_asks_again(world: World) -> None:
    """Rejecting the pause that would resume the old primary's replica: the failover stays done, nothing is
    resumed (no snapshot, no RESUME), the refusal is audited, `drkit failover` says the step still waits, and a
    re-run asks again (approved then, it runs and `drkit failover` says what it did)."""
    invoke = CliRunner().invoke
    world.group.kill("SQL1", unsent_lsn=300000)
    cli, _ = _answered(lambda: invoke(app, ["--config", world.config, "failover", "orders"]), "failover-orders",
                       approve=True)
    assert cli.exit_code == 0, cli.output
    assert "still waiting" not in cli.output  # SQL1 is down: nothing to resume yet, nothing said about it

    world.group.revive("SQL1")
    cli, form = _answered(lambda: invoke(app, ["--config", world.config, "failover", "orders"]), "failover-orders",
                          approve=False)
    assert cli.exit_code == 0, cli.output
    assert "resume data movement on SQL1" in form
    said = " ".join(cli.output.split())
    assert "orders failed over to sql2.example.internal:1433" in said
    assert "still waiting for approval: resume data movement on SQL1" in said
    assert "(resume:SQL1); run `drkit failover orders` again to be asked again" in said
    assert world.group.primary() == "SQL2" and world.endpoint() == "sql2.example.internal:1433"
    assert world.changes("SQL1") == [] and world.group.replica("SQL1").snapshots == []
    assert len(world.changes("SQL2")) == 1  # the one forced failover, not repeated
    catalog = Catalog.open(world.catalog_url)
    try:
        rejected = catalog.audit_events(database="orders", action="failover.pending.rejected")
    finally:
        catalog.close()
    assert [(e.actor, e.detail["reason"]) for e in rejected] == [(APPROVER, "INC-7: region down")]
    assert [s["key"] for s in rejected[0].detail["steps"]] == ["resume:SQL1"]

    cli, form = _answered(lambda: invoke(app, ["--config", world.config, "failover", "orders"]), "failover-orders",
                          approve=True)
    assert cli.exit_code == 0, cli.output
    assert "resume data movement on SQL1" in form
    said = " ".join(cli.output.split())
    assert f"pending step resume:SQL1 approved by {APPROVER}: SQL1: Orders on SQL1: resuming rolls back" in said
    assert world.changes("SQL1") == ["ALTER DATABASE [Orders] SET HADR RESUME;"]
    assert world.group.replica("SQL1").snapshots == ["Orders_before_resume_41000000057000001"]
