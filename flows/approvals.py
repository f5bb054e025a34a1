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
from typing import Any
from uuid import UUID

from prefect import get_client, get_run_logger
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from pydantic import Field

from drkit.errors import ApprovalError


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


def wait_for_approval(
    description: str, *, approvers: list[str], timeout: timedelta, audit: Any, poll_interval: int = 2
) -> Decision:
    """Pause until an approver on the list answers. Raises ApprovalError on timeout (nothing is done)."""
    log = get_run_logger()
    t0 = time.monotonic()
    deadline = t0 + timeout.total_seconds()
    form = Approval.with_initial_data(description=description, approve=False)
    while True:
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            raise ApprovalError(f"no valid approval within {timeout}; nothing was switched")
        try:
            answer = pause_flow_run(wait_for_input=form, timeout=remaining, poll_interval=poll_interval)
        except FlowPauseTimeout:
            raise ApprovalError(f"no approval within {timeout}; nothing was switched") from None
        assert answer is not None
        if answer.approver not in approvers:
            log.error("approval by %r refused: not on approvals.approvers; still waiting", answer.approver)
            audit("approval.refused", {"by": answer.approver, "reason": answer.reason})
            continue
        return Decision(answer.approve, answer.approver, answer.reason, time.monotonic() - t0)


def paused_runs() -> list[dict[str, Any]]:
    """Flow runs waiting for a human, with what they wait for."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    return [{"id": str(r.id), "name": r.name, "since": r.state.timestamp if r.state else None,
             "parameters": r.parameters} for r in runs]


def answer(run_id: str, *, approve: bool, approver: str, reason: str) -> None:
    resume_flow_run(UUID(run_id), run_input={"approve": approve, "approver": approver, "reason": reason})
