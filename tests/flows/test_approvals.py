"""Authenticated approvals: every answer (API, CLI) is judged by the paused flow, and every refusal audited.

A runbook's approval gate (the failover form, ``approvals.required: 2``) in a real Prefect API; approvers
prove who they are with their authenticator app's code (TOTP), enrolled as Prefect Secret blocks.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect import flow, get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.input.actions import read_flow_run_input
from typer.testing import CliRunner

from cli import app
from drkit.config import load_policy
from drkit.errors import ApprovalError
from drkit.runtime import Runtime
from flows.approvals import FailoverApproval, pause_of, paused_runs, wait_for_approval
from tasks.approvers import block_name, secret_of
from tasks.common import record
from tests.support.approvers import answer, authenticator, from_enroll_output, wrong_code

pytestmark = [pytest.mark.slow, pytest.mark.integration]
DRKIT = Path(sys.executable).with_name("drkit")
ALICE, BOB, CAROL, DAVE = "alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com"


@flow(name="approval-gate", flow_run_name="gate-{tag}")
def gate(tag: str, config: str, timeout_seconds: int = 300) -> dict[str, Any]:
    """The failover's gate, as dr_failover calls it."""
    policy = load_policy(config)
    try:
        decision = wait_for_approval(
            f"## Fail {tag} over?", approvers=policy.approvals.approvers, timeout=timedelta(seconds=timeout_seconds),
            form_class=FailoverApproval, initial={"confirm_region_failure": False},
            decide=lambda a: bool(a.confirm_region_failure),
            audit=lambda action, detail: record(tag, f"failover.{action}", str(detail.get("by")), detail, config),
            config=config, required=policy.approvals.required)
    except ApprovalError as exc:
        record(tag, "failover.timeout", "drkit", {"outcome": str(exc)}, config)
        raise
    return asdict(decision)


@pytest.fixture
def config(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "drkit.yaml"
    path.write_text(yaml.safe_dump({
        "catalog": f"sqlite:///{tmp_path}/catalog.db", "tiers": {"local": {"path": str(tmp_path / "local")}},
        "approvals": {"approvers": [ALICE, BOB, CAROL, DAVE], "required": 2}}))
    yield str(path)


def _start(tag: str, config: str, timeout: int = 300) -> tuple[threading.Thread, dict[str, Any], str]:
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(
        state=gate(tag=tag, config=config, timeout_seconds=timeout, return_state=True)))
    thread.start()
    name = f"gate-{tag}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = [r for r in paused_runs() if r["name"] == name]
        if runs:
            return thread, out, str(runs[0]["id"])
        time.sleep(0.2)
    raise AssertionError(f"{name} never paused")


def _form(run_id: str) -> str:
    """The text above the Resume form, as the UI shows it now."""
    return str(read_flow_run_input(pause_of(run_id)["description"], flow_run_id=UUID(run_id)))


def _audit(config: str) -> list[tuple[str, str, dict[str, Any]]]:
    rt = Runtime(load_policy(config))
    try:
        return [(e.action, e.actor, dict(e.detail)) for e in rt.catalog.audit_events()]
    finally:
        rt.close()


def _everything_recorded(config: str, run_ids: list[str]) -> str:
    """The runs' logs, every artifact and the catalog's audit trail, as one text to search."""
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[UUID(r) for r in run_ids])))
        artifacts = client.read_artifacts()
    return "\n".join([*(lg.message for lg in logs), *(json.dumps(a.data, default=str) for a in artifacts),
                      *(json.dumps(e, default=str) for e in _audit(config))])


def test_two_approvers_and_every_refusal_audited_while_the_run_keeps_waiting(config: str) -> None:
    authenticator(ALICE), authenticator(BOB)  # enrolled; carol is listed but not enrolled
    thread, out, run_id = _start("app", config)
    assert "2 different approvers must approve" in _form(run_id) and "authenticator app" in _form(run_id)

    refused = {
        "mallory@example.com": answer(run_id, approve=True, approver="mallory@example.com", reason="trust me"),
        CAROL: answer(run_id, approve=True, approver=CAROL, reason="no app", code="123456"),
        f"{ALICE} (wrong)": answer(run_id, approve=True, approver=ALICE, reason="typo", code=wrong_code(ALICE)),
    }
    assert {k: v["verdict"] for k, v in refused.items()} == dict.fromkeys(refused, "refused")
    assert "not on approvals.approvers" in refused["mallory@example.com"]["detail"]
    assert refused[CAROL]["detail"] == f"{CAROL} is not enrolled: drkit approvers enroll {CAROL}"
    assert "wrong or expired code" in refused[f"{ALICE} (wrong)"]["detail"]
    assert "refused" in _form(run_id) and "wrong or expired code" in _form(run_id)

    code = authenticator(ALICE).next_code()
    first = answer(run_id, approve=True, approver=ALICE, reason="region down, INC-9", code=code)
    assert first["verdict"] == "recorded" and "1 of 2" in first["detail"]
    assert f"Approved so far: {ALICE} (1 of 2)" in _form(run_id)
    replay = answer(run_id, approve=True, approver=ALICE, reason="again", code=code)
    assert replay["verdict"] == "refused" and "used already" in replay["detail"]
    twice = answer(run_id, approve=True, approver=ALICE, reason="me again")
    assert twice["verdict"] == "refused" and "approved already" in twice["detail"]
    assert thread.is_alive() and any(r["id"] == run_id for r in paused_runs())  # still waiting

    second = answer(run_id, approve=True, approver=BOB, reason="confirmed with the cloud provider")
    assert second["verdict"] == "approved"
    thread.join(60)
    decision = out["state"].result()
    assert decision["approve"] is True and decision["approvers"] == (ALICE, BOB)
    assert decision["approver"] == f"{ALICE}, {BOB}"

    audit = _audit(config)
    refusals = [(actor, d["why"]) for action, actor, d in audit if action == "failover.approval.refused"]
    assert [a for a, _ in refusals] == ["mallory@example.com", CAROL, ALICE, ALICE, ALICE]
    assert [actor for action, actor, _ in audit if action == "failover.approval.given"] == [ALICE, BOB]
    # The secret and the codes are nowhere in the logs, the artifacts or the audit trail.
    recorded = _everything_recorded(config, [run_id])
    for secret in (secret_of(ALICE), secret_of(BOB)):
        assert secret and secret not in recorded
    assert code not in json.dumps(audit)


def test_any_approver_rejecting_settles_it_and_a_spent_code_is_refused_in_another_run(config: str) -> None:
    thread, out, run_id = _start("shop", config)
    code = authenticator(DAVE).next_code()
    assert answer(run_id, approve=True, approver=DAVE, reason="looks down", code=code)["verdict"] == "recorded"
    assert answer(run_id, approve=False, approver=BOB, reason="it is a network blip")["verdict"] == "rejected"
    thread.join(60)
    decision = out["state"].result()
    assert (decision["approve"], decision["approver"], decision["reason"]) == (False, BOB, "it is a network blip")

    # dave's code, readable in the first run's stored answer, is worth nothing in the next run
    thread, out, run_id = _start("shop2", config)
    replay = answer(run_id, approve=True, approver=DAVE, reason="replayed", code=code)
    assert replay["verdict"] == "refused" and "used already" in replay["detail"]
    # guessing: after five wrong codes even the right one is refused for the rest of the run
    for _ in range(5):
        guess = answer(run_id, approve=True, approver=BOB, reason="guess", code=wrong_code(BOB))
        assert "wrong or expired code" in guess["detail"]
    locked = answer(run_id, approve=True, approver=BOB, reason="the right one")
    assert locked["verdict"] == "refused" and "locked out" in locked["detail"]
    assert answer(run_id, approve=False, approver=DAVE, reason="done")["verdict"] == "rejected"
    thread.join(60)


def test_too_few_approvals_before_the_timeout_switch_nothing(config: str) -> None:
    thread, out, run_id = _start("late", config, timeout=10)
    assert answer(run_id, approve=True, approver=ALICE, reason="go")["verdict"] == "recorded"
    thread.join(120)
    assert out["state"].is_failed()
    timeouts = [d["outcome"] for action, _, d in _audit(config) if action == "failover.timeout"]
    assert timeouts == [f"only 1 of 2 approvals ({ALICE}) within 0:00:10; nothing was switched"]


def _on_a_terminal(config: str, args: list[str], typed: str) -> tuple[int, str]:
    """Run `drkit` on a terminal of its own (a pty), type ``typed`` at its prompt; (exit status, screen)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session of its own whose controlling terminal is the pty
        os.execve(str(DRKIT), [str(DRKIT), "--config", config, *args], env)  # noqa: S606
    screen, sent = b"", False
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child has exited and closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        if not sent and b"authenticator app:" in screen:
            os.write(fd, typed.encode() + b"\n")
            sent = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), re.sub(r"\x1b\[[0-9;]*m", "", screen.decode(errors="replace"))


def test_the_cli_enrolls_approvers_and_its_answers_go_through_the_flow(config: str) -> None:
    runner = CliRunner()

    def drkit(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        r = runner.invoke(app, ["--config", config, *args], input=stdin)
        return r.exit_code, r.stdout, r.stderr

    from flows.approvals import api_url

    code, out, err = drkit("approvers", "enroll", "eve@example.com")
    assert code == 2 and "not on approvals.approvers" in err
    code, out, err = drkit("approvers", "enroll", CAROL)
    assert code == 0, err
    carol = from_enroll_output(api_url(), CAROL, out)
    assert out.count(secret_of(CAROL) or "?") == 2  # in the otpauth:// URI and as the key to type: once
    code, out, err = drkit("approvers", "enroll", CAROL)
    assert code == 1 and "--replace" in err and (secret_of(CAROL) or "?") not in out + err
    listed = {r["approver"]: r for r in json.loads(drkit("approvers", "list", "--json")[1])}
    assert listed[CAROL]["enrolled"] and listed[CAROL]["block"] == block_name(CAROL)

    thread, out_, run_id = _start("cli", config)
    code, out, err = drkit("approve", run_id, "--as", "mallory@example.com", "--reason", "x", "--code", "123456")
    assert (code, out.strip()) == (1, "refused: mallory@example.com is not on approvals.approvers"), err
    code, out, err = drkit("approve", run_id, "--as", CAROL, "--reason", "INC-3", stdin=carol.next_code() + "\n")
    assert code == 0 and out.strip().startswith(f"recorded: {CAROL} approved run {run_id}; 1 of 2"), err
    typed = authenticator(DAVE).next_code()
    code, screen = _on_a_terminal(config, ["approve", run_id, "--as", DAVE, "--reason", "INC-3", "--reject"], typed)
    assert code == 0 and f"rejected run {run_id} as {DAVE}" in screen, screen
    assert "code from your authenticator app:" in screen and typed not in screen  # asked for, not echoed
    thread.join(60)
    assert out_["state"].result()["approve"] is False
    code, _, err = drkit("approve", run_id, "--as", CAROL, "--reason", "late", "--code", "123456")
    assert code == 1 and "is not paused" in err
    code, _, err = drkit("approve", "00000000-0000-0000-0000-000000000000", "--as", CAROL, "--reason", "x")
    assert code == 2 and "no flow run" in err

    assert drkit("approvers", "enroll", CAROL, "--replace")[0] == 0
    assert drkit("approvers", "remove", CAROL)[0] == 0
    assert not json.loads(drkit("approvers", "list", "--json")[1])[2]["enrolled"]
    assert drkit("approvers", "remove", CAROL)[0] == 1
    changes = [(a, d.get("block")) for a, _, d in _audit(config)
               if a.startswith("approver.") and a != "approver.code_used"]
    assert changes == [("approver.enrolled", block_name(CAROL)), ("approver.replaced", block_name(CAROL)),
                       ("approver.removed", block_name(CAROL))]
