"""Human approval: the typed form a DBA fills in (Prefect UI or `drkit approve`), and the pause loop.

The approver must be on the policy's ``approvals.approvers`` list. An answer
from anyone else is refused (audited) and the run stays paused for a valid
answer until the timeout; a timeout aborts safely. Prefect has no CLI to
resume a run, so ``drkit approvals`` / ``drkit approve`` use the API here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal
from uuid import UUID

from prefect import get_client, get_run_logger
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from pydantic import Field

from drkit.errors import ApprovalError, ConfigError, DrkitError


class Approval(RunInput):
    """Approve or reject the step described above; your name must be on the approvers list."""

    approve: bool = Field(default=False, description="Tick to approve; leave unticked to reject.")
    approver: str = Field(description="Your name or e-mail, as on the policy's approvals.approvers list.")
    reason: str = Field(description="Why: this goes to the audit log.")


@dataclass(frozen=True)
class Decision:
    approve: bool
    approver: str
    reason: str
    waited_seconds: float


class FailoverApproval(RunInput):
    """Confirm that the primary region has failed and the replica should be promoted."""

    confirm_region_failure: bool = Field(
        default=False, description="Tick to confirm the primary region is down and to promote the DR replica.")
    approver: str = Field(description="Your name or e-mail, as on the policy's approvals.approvers list.")
    reason: str = Field(description="Why (incident number, what you checked): this goes to the audit log.")


class FailbackChoice(RunInput):
    """The primary region is back: move the database and traffic back to it, or stay on DR."""

    decision: Literal["fail back", "stay on DR"] = Field(
        default="stay on DR", description="'fail back' resynchronises the old primary and moves back gradually.")
    approver: str = Field(description="Your name or e-mail, as on the policy's approvals.approvers list.")
    reason: str = Field(description="Why: this goes to the audit log.")


def wait_for_approval(
    description: str, *, approvers: list[str], timeout: timedelta, audit: Any, poll_interval: int = 1,
    form_class: type[RunInput] = Approval, decide: Any = None, initial: dict[str, Any] | None = None,
) -> Decision:
    """Pause until an approver on the list answers. Raises ApprovalError on timeout (nothing is done).

    ``decide(answer) -> bool`` reads the yes/no from the form (default: its ``approve`` field).
    """
    log = get_run_logger()
    t0 = time.monotonic()
    deadline = t0 + timeout.total_seconds()
    form = form_class.with_initial_data(description=description, **(initial or {"approve": False}))
    decide = decide or (lambda a: bool(a.approve))
    while True:
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            raise ApprovalError(f"no valid approval within {timeout}; nothing was switched")
        try:
            answer = pause_flow_run(wait_for_input=form, timeout=remaining, poll_interval=poll_interval)
        except FlowPauseTimeout:
            raise ApprovalError(f"no approval within {timeout}; nothing was switched") from None
        assert answer is not None
        approver, reason = str(getattr(answer, "approver", "")), str(getattr(answer, "reason", ""))
        if approver not in approvers:
            log.error("approval by %r refused: not on approvals.approvers; still waiting", approver)
            audit("approval.refused", {"by": approver, "reason": reason})
            continue
        return Decision(decide(answer), approver, reason, time.monotonic() - t0)


def paused_runs() -> list[dict[str, Any]]:
    """Flow runs waiting for a human, with what they wait for."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    return [{"id": str(r.id), "name": r.name, "since": r.state.timestamp if r.state else None,
             "parameters": r.parameters} for r in runs]


def answer(run_id: str, *, approve: bool, approver: str, reason: str) -> None:
    """Resume a paused run with the form its pause asked for (approval, failover or failback).

    An unknown run is bad input (ConfigError); a run that is not paused is a failed operation (DrkitError).
    """
    try:
        _answer(run_id, approve=approve, approver=approver, reason=reason)
    except ObjectNotFound:
        raise ConfigError(f"no flow run {run_id} in the Prefect API; `drkit approvals` lists the runs "
                          "waiting for an answer") from None
    except NotPausedError:
        raise DrkitError(f"run {run_id} is not paused (answered already, timed out or finished); "
                         "nothing was changed") from None


def api_url() -> str:
    """The Prefect API URL this process talks to ('' when none is set)."""
    from prefect.settings import get_current_settings

    return str(get_current_settings().api.url or "")


def _answer(run_id: str, *, approve: bool, approver: str, reason: str) -> None:
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
    flow_name = (run.name or "")
    if flow_name.startswith("failover-"):
        data: dict[str, Any] = {"confirm_region_failure": approve, "approver": approver, "reason": reason}
    elif flow_name.startswith("failback-"):
        data = {"decision": "fail back" if approve else "stay on DR", "approver": approver, "reason": reason}
    else:
        data = {"approve": approve, "approver": approver, "reason": reason}
    resume_flow_run(UUID(run_id), run_input=data)
