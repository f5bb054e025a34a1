"""The DR drill through the Prefect API: the newest chain restored into scratch holds the data, RTO/RPO are
measured and recorded, the scratch copy is gone afterwards, and a missed target reaches the notification."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from prefect.artifacts import Artifact
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from typer.testing import CliRunner

from cli import app
from drkit.config import load_policy
from drkit.runtime import Runtime
from drkit.sandbox import Sandbox
from flows.backup import full_backup, log_backup_flow
from flows.drill import dr_drill
from tests.support.pgdata import connect
from tests.support.policies import policy_variant
from tests.support.receiver import http_receiver

pytestmark = [pytest.mark.slow, pytest.mark.integration]

COUNT = "SELECT count(*) FROM drill_rows"


def _running_with(location: str) -> list[str]:
    """Processes whose command line names ``location`` (a postmaster started on the scratch copy)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if location in text:
            found.append(text)
    return found


def test_a_drill_restores_the_newest_chain_measures_it_and_a_miss_notifies(
    sandbox: Sandbox, rt: Runtime, scratch: Path
) -> None:
    checks = {"verify": {"after": [], "checks": ["amcheck", COUNT]}}
    cfg = str(policy_variant(sandbox, scratch, checks))
    with connect(sandbox.dsn) as conn:
        conn.execute("CREATE TABLE drill_rows(id int PRIMARY KEY)")
        conn.execute("INSERT INTO drill_rows SELECT generate_series(1, 1000)")
    full_id = full_backup(db="app", config=cfg)
    with connect(sandbox.dsn) as conn:  # only in the log backup: the drill must replay it
        conn.execute("INSERT INTO drill_rows SELECT generate_series(1001, 1234)")
    log_id = log_backup_flow(db="app", config=cfg)
    assert log_id is not None

    summary = dr_drill(db="app", config=cfg)

    # the restored copy held every row written, the ones only the log backup carries included
    count = next(c for c in summary["checks"] if COUNT in c["name"])
    assert count["ok"] and count["detail"].endswith("→ 1234"), count
    assert summary["backup_id"] == full_id and summary["pieces"][0] == full_id and log_id in summary["pieces"]
    assert summary["met"] and summary["reasons"] == []
    assert 0 < summary["writable_seconds"] <= summary["rto_seconds"]
    assert datetime.fromisoformat(summary["reached"]) >= rt.catalog.get(full_id).end_time  # type: ignore[operator]

    audit = rt.catalog.audit_events(database="app", action="drill.completed")[-1]
    assert audit.detail == {"rto_seconds": summary["rto_seconds"], "rpo_seconds": summary["rpo_seconds"],
                            "rto_target_seconds": 3600.0, "rpo_target_seconds": 1800.0, "met": True,
                            "backup_id": full_id, "reached": summary["reached"]}
    report = Artifact.get("app-dr-drill")
    assert report is not None and "targets **MET**" in str(report.data) and "→ 1234" in str(report.data)

    # the scratch copy is stopped and gone
    location = summary["location"]
    assert location.startswith(str(sandbox.root / "scratch"))
    assert not Path(location).exists() and _running_with(location) == []
    assert list(Path(location).parent.iterdir()) == []

    # an impossible RTO target: `drkit drill` says MISSED, exits 1, the audit says met=false, the hook hears it
    with http_receiver() as receiver:
        CustomWebhookNotificationBlock(name="drill-hook", url=receiver.url,
                                       json_data={"title": "{{subject}}", "text": "{{body}}"}).save(
            "drill-hook", overwrite=True)
        strict = policy_variant(sandbox, scratch, {**checks, "rto_target": "1ms"},
                                notifications={"drill_missed": ["drill-hook"]})
        out = CliRunner().invoke(app, ["--config", str(strict), "drill", "app"])
        assert out.exit_code == 1, out.output
        assert "MISSED" in out.stdout and "missed: RTO" in out.stderr and "rto_target" in out.stderr
        message = receiver.wait_for(lambda m: "missed" in m.get("title", ""))
        assert "app" in message["title"] and "rto_target" in message["text"]
    missed = rt.catalog.audit_events(database="app", action="drill.completed")[-1]
    assert missed.detail["met"] is False and missed.detail["rto_target_seconds"] == 0.001
    assert missed.detail["rto_seconds"] > 0.001
    assert list(Path(location).parent.iterdir()) == []

    # a restored copy that fails validation fails the drill, and is still stopped and removed
    wrong = policy_variant(sandbox, scratch, {"verify": {"after": [],
                                                         "checks": ["SELECT count(*) = 7 FROM drill_rows"]}})
    state = dr_drill(db="app", config=str(wrong), return_state=True)
    assert state.is_failed() and "failed validation" in (state.message or "")
    failed = rt.catalog.audit_events(database="app", action="drill.failed")[-1]
    assert "failed validation" in failed.detail["error"] and "returned false" in failed.detail["error"]
    assert list(Path(location).parent.iterdir()) == [] and _running_with(str(Path(location).parent)) == []


def test_a_drill_with_nothing_to_restore_fails_records_why_and_notifies(sandbox: Sandbox, scratch: Path) -> None:
    with http_receiver() as receiver:
        CustomWebhookNotificationBlock(name="drill-failed-hook", url=receiver.url,
                                       json_data={"title": "{{subject}}", "text": "{{body}}"}).save(
            "drill-failed-hook", overwrite=True)
        cfg = policy_variant(sandbox, scratch, catalog=f"sqlite:///{scratch}/empty-catalog.db",
                             notifications={"drill_failed": ["drill-failed-hook"]})
        state = dr_drill(db="app", config=str(cfg), return_state=True)
        assert state.is_failed() and "full backup" in (state.message or "")
        message = receiver.wait_for(lambda m: "failed" in m.get("title", ""))
        assert "app" in message["title"] and "full backup" in message["text"]
    rt = Runtime(load_policy(cfg))
    try:
        failed = rt.catalog.audit_events(database="app", action="drill.failed")
        assert len(failed) == 1 and "full backup" in failed[0].detail["error"]
        assert rt.catalog.audit_events(database="app", action="drill.completed") == []
    finally:
        rt.close()
    report = Artifact.get("app-dr-drill")
    assert report is not None and "**FAILED**" in str(report.data)
    assert not any(p.name.startswith("drill-") for p in (sandbox.root / "scratch" / "app").iterdir())
