"""Verification restores through the Prefect API: healthy backups verify, a flipped byte is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.artifacts import Artifact
from prefect.blocks.notifications import CustomWebhookNotificationBlock

from drkit.config import load_policy
from drkit.engines import open_engine
from drkit.runtime import Runtime
from drkit.sandbox import Sandbox
from flows.backup import full_backup, log_backup_flow
from flows.verify import verify_backup_flow, verify_latest_chain
from tests.support.pgdata import connect
from tests.support.policies import policy_variant
from tests.support.receiver import http_receiver

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_full_is_verified_after_backup_and_the_chain_verifies(sandbox: Sandbox, rt: Runtime, scratch: Path) -> None:
    cfg = str(policy_variant(sandbox, scratch, {"verify": {
        "after": ["full"], "checks": ["amcheck", "visibility", "SELECT count(*) = 500 FROM ok_rows"]}}))
    with connect(sandbox.dsn) as conn:
        conn.execute("CREATE TABLE ok_rows(id int PRIMARY KEY)")
        conn.execute("INSERT INTO ok_rows SELECT generate_series(1, 500)")
    full_id = full_backup(db="app", config=cfg)
    assert rt.catalog.get(full_id).status == "verified"
    report = Artifact.get("app-verify-report")
    assert report is not None
    text = str(report.data)
    assert full_id in text and "PASS" in text
    for check in ("sha256", "restore", "amcheck", "visibility map", "sql: SELECT count(*) = 500 FROM ok_rows"):
        assert check in text, check

    with connect(sandbox.dsn) as conn:
        conn.execute("INSERT INTO ok_rows SELECT generate_series(501, 600)")
    log_id = log_backup_flow(db="app", config=cfg)
    # The chain check runs the same SQL check against the latest state: 600 rows, so it must fail...
    state = verify_latest_chain(db="app", config=cfg, return_state=True)
    assert state.is_failed() and "returned false" in (state.message or "")
    # ...and with a check that holds, it passes and marks every piece verified.
    cfg2 = str(policy_variant(sandbox, scratch, {"verify": {"checks": ["SELECT count(*) = 600 FROM ok_rows"]}}))
    summary = verify_latest_chain(db="app", config=cfg2)
    assert summary["passed"] and log_id in summary["pieces"]
    assert rt.catalog.get(log_id).status == "verified"
    audit = rt.catalog.audit_events(database="app", action="backup.verify")
    assert audit[-1].detail["passed"] and audit[-1].detail["restore_seconds"] > 0


def test_a_flipped_byte_marks_the_backup_corrupt_avoids_it_and_notifies(
    sandbox: Sandbox, rt: Runtime, scratch: Path
) -> None:
    with http_receiver() as receiver:
        CustomWebhookNotificationBlock(
            name="dba-hook", url=receiver.url, json_data={"title": "{{subject}}", "text": "{{body}}"},
        ).save("dba-hook", overwrite=True)
        cfg = str(policy_variant(sandbox, scratch, {"verify": {"after": []}},
                                 notifications={"backup_failed": ["dba-hook"]}))
        good = full_backup(db="app", config=cfg)
        bad = full_backup(db="app", config=cfg)
        copy = rt.catalog.copies(bad)[0]
        path = load_policy(cfg).tier_path(copy.tier) / copy.store_key
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))

        state = verify_backup_flow(db="app", backup_id=bad, config=cfg, return_state=True)
        assert state.is_failed()
        assert rt.catalog.get(bad).status == "corrupt"
        message = receiver.wait_for(lambda m: bad in m.get("text", ""))
        assert "app" in message["text"] and "corrupt" in message["text"]
        report = Artifact.get("app-verify-report")
        assert report is not None and "FAIL" in str(report.data) and "SHA-256" in str(report.data)

        plan = open_engine(rt, "app").plan_restore(None)
        assert plan.full.backup.id == good
        assert any(bad in r for r in plan.reasons)


def test_a_failed_backup_sends_backup_failed_and_a_dead_receiver_does_not_hide_it(
    sandbox: Sandbox, rt: Runtime, scratch: Path
) -> None:
    with http_receiver() as receiver:
        CustomWebhookNotificationBlock(name="ops", url=receiver.url, json_data={"text": "{{body}}"}).save(
            "ops-hook", overwrite=True)
        CustomWebhookNotificationBlock(name="dead", url="http://127.0.0.1:9/none", json_data={"text": "{{body}}"}).save(
            "dead-hook", overwrite=True)
        cfg = str(policy_variant(sandbox, scratch, {"data_dir": str(scratch)},
                                 notifications={"backup_failed": ["custom-webhook/dead-hook", "ops-hook"]}))
        state = full_backup(db="app", config=cfg, return_state=True)
        assert state.is_failed() and "not ready for backups" in (state.message or "")
        message = receiver.wait_for(lambda m: "full-backup" in m.get("text", "") or "data_dir" in m.get("text", ""))
        assert "app" in message["text"]
        assert json.dumps(message).find("password") == -1
