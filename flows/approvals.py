"""Human approval: the typed form a DBA fills in (Prefect UI or `drkit approve`), and the pause loop.

Every answer, from the UI's Resume form or from ``drkit approve``, is judged here, in the flow: the
approver must be on ``approvals.approvers``, enrolled (``drkit approvers enroll``) and give the current
code from their authenticator app (RFC 6238; a code is spent once used), and ``approvals.required``
distinct approvers must approve a switch. A refused answer is audited (who, and why; never the code)
and the run pauses again, its form saying why; a rejection by any authenticated approver settles it; a
timeout aborts safely. After each answer the flow stores its outcome next to the pause (run input
``<pause>-outcome``: approved, rejected, recorded or refused, and why), which is what ``drkit approve``
waits for and reports. Prefect has no CLI to resume a run, so ``drkit approvals`` / ``drkit approve``
use the API here.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal
from uuid import UUID, uuid4

from prefect import get_client, get_run_logger
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput, keyset_from_paused_state
from prefect.input.actions import create_flow_run_input, read_flow_run_input
from prefect.runtime import flow_run as this_run
from pydantic import Field

from drkit import totp
from drkit.errors import ApprovalError, ConfigError, DrkitError
from tasks import approvers as enrolled

CODE_HELP = "the 6-digit code from your authenticator app"
WRONG_CODES_ALLOWED = 5  # per approver and run: then that name is locked out of the run (guessing)


class Approval(RunInput):
    """Approve or reject the step described above; your name must be on the approvers list."""

    approve: bool = Field(default=False, description="Tick to approve; leave unticked to reject.")
    approver: str = Field(description="Your name or e-mail, as on the policy's approvals.approvers list.")
    code: str = Field(default="", description=CODE_HELP)
    reason: str = Field(description="Why: this goes to the audit log.")


class FailoverApproval(RunInput):
    """Confirm that the primary region has failed and the replica should be promoted."""

    confirm_region_failure: bool = Field(
        default=False, description="Tick to confirm the primary region is down and to promote the DR replica.")
    approver: str = Field(description="Your name or e-mail, as on the policy's approvals.approvers list.")
    code: str = Field(default="", description=CODE_HELP)
    reason: str = Field(description="Why (incident number, what you checked): this goes to the audit log.")


class FailbackChoice(RunInput):
    """The primary region is back: move the database and traffic back to it, or stay on DR."""

    decision: Literal["fail back", "stay on DR"] = Field(
        default="stay on DR", description="'fail back' resynchronises the old primary and moves back gradually.")
    approver: str = Field(description="Your name or e-mail, as on the policy's approvals.approvers list.")
    code: str = Field(default="", description=CODE_HELP)
    reason: str = Field(description="Why: this goes to the audit log.")


class PendingStepsApproval(RunInput):
    """Run the step(s) the failover left waiting, shown above with what each would discard."""

    approve: bool = Field(default=False, description="Tick to run the steps now; leave unticked to leave them "
                                                     "waiting (a re-run of the failover asks again).")
    approver: str = Field(description="Your name or e-mail, as on the policy's approvals.approvers list.")
    code: str = Field(default="", description=CODE_HELP)
    reason: str = Field(description="Why (what you kept or checked first): this goes to the audit log.")


@dataclass(frozen=True)
class Decision:
    approve: bool
    approver: str  # who decided; with several approvers, their names joined by ", "
    reason: str
    waited_seconds: float
    approvers: tuple[str, ...] = field(default=())


@dataclass
class _Gate:
    """What one pause loop has seen: the approvals so far, and wrong codes per name (to stop guessing)."""

    approvers: list[str]
    required: int
    config: str | None
    approved: dict[str, str] = field(default_factory=dict)  # name -> reason, in order
    wrong: Counter[str] = field(default_factory=Counter)

    def refusal(self, approver: str, code: str) -> str | None:
        """Why this answer cannot count (None: it is an authenticated answer by a listed approver).

        A correct code is spent at once, whatever happens to the answer next.
        """
        if approver not in self.approvers:
            return f"{approver or '(no name)'} is not on approvals.approvers"
        if self.wrong[approver] >= WRONG_CODES_ALLOWED:
            return f"{WRONG_CODES_ALLOWED} wrong codes for {approver} in this run: {approver} is locked out of it"
        secret = enrolled.secret_of(approver)
        if secret is None:
            return f"{approver} is not enrolled: drkit approvers enroll {approver}"
        code = "".join(code.split())
        step = totp.matching_step(secret, code) if totp.well_formed(code) else None
        if step is None:
            self.wrong[approver] += 1
            return (f"wrong or expired code for {approver} (give the {totp.DIGITS} digits your authenticator "
                    "app shows now)")
        if step in enrolled.used_steps(approver, self.config):
            return f"that code of {approver}'s was used already; wait for the next code"
        enrolled.spend(approver, step, self.config, run=str(this_run.id or ""))
        if approver in self.approved:
            return (f"{approver} approved already; {self.required} different approvers must approve "
                    f"(so far: {', '.join(self.approved)})")
        return None

    def describe(self, description: str, last: str) -> str:
        text = description + (
            f"\n\n**Authentication.** Fill in *code* with {CODE_HELP} (enrolled with "
            "`drkit approvers enroll NAME`); a code counts once.")
        if self.required > 1:
            so_far = ", ".join(self.approved) or "nobody yet"
            text += (f"\n\n**{self.required} different approvers must approve** (any one of them can reject). "
                     f"Approved so far: {so_far} ({len(self.approved)} of {self.required}).")
        if last:
            text += f"\n\n**The last answer:** {last}"
        return text


def wait_for_approval(
    description: str, *, approvers: list[str], timeout: timedelta, audit: Any, config: str | None,
    required: int = 1, poll_interval: int = 1, form_class: type[RunInput] = Approval, decide: Any = None,
    initial: dict[str, Any] | None = None,
) -> Decision:
    """Pause until ``required`` distinct, authenticated approvers approve, or one of them rejects.

    Raises ApprovalError on timeout (nothing is done). ``decide(answer) -> bool`` reads the yes/no from
    the form (default: its ``approve`` field). ``audit(action, detail)`` records ``approval.refused``
    (``by``, ``why``, ``reason``) and, for each approval that counts, ``approval.given``. ``config`` is the
    policy whose catalog remembers the spent codes.
    """
    log = get_run_logger()
    t0 = time.monotonic()
    deadline = t0 + timeout.total_seconds()
    decide = decide or (lambda a: bool(a.approve))
    gate = _Gate(list(approvers), required, config)
    last = ""
    while True:
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            raise ApprovalError(_timed_out(gate, timeout))
        key = f"approval-{uuid4().hex[:12]}"
        form = form_class.with_initial_data(description=gate.describe(description, last),
                                            **(initial or {"approve": False}))
        try:
            answer = pause_flow_run(wait_for_input=form, timeout=remaining, poll_interval=poll_interval, key=key)
        except FlowPauseTimeout:
            raise ApprovalError(_timed_out(gate, timeout)) from None
        assert answer is not None
        approver, reason = str(getattr(answer, "approver", "")), str(getattr(answer, "reason", ""))
        why = gate.refusal(approver, str(getattr(answer, "code", "")))
        if why is not None:
            log.warning("an answer by %s was refused: %s; still waiting", approver, why)
            audit("approval.refused", {"by": approver, "why": why, "reason": reason})
            _outcome(key, "refused", approver, why)
            last = f"refused ({approver}): {why}."
            continue
        if not decide(answer):
            _outcome(key, "rejected", approver, reason)
            return Decision(False, approver, reason, time.monotonic() - t0, (approver,))
        gate.approved[approver] = reason
        audit("approval.given", {"by": approver, "reason": reason, "count": len(gate.approved),
                                 "required": required})
        if len(gate.approved) < required:
            more = required - len(gate.approved)
            note = f"{len(gate.approved)} of {required} approvals; waiting for {more} more approver(s)"
            _outcome(key, "recorded", approver, note)
            last = f"{approver} approved ({note})."
            continue
        _outcome(key, "approved", approver, reason)
        names = tuple(gate.approved)
        why_all = reason if len(names) == 1 else "; ".join(f"{n}: {r}" for n, r in gate.approved.items())
        return Decision(True, ", ".join(names), why_all, time.monotonic() - t0, names)


def _timed_out(gate: _Gate, timeout: timedelta) -> str:
    if gate.approved:
        return (f"only {len(gate.approved)} of {gate.required} approvals ({', '.join(gate.approved)}) within "
                f"{timeout}; nothing was switched")
    return f"no approval within {timeout}; nothing was switched"


def _outcome(key: str, verdict: str, approver: str, detail: str) -> None:
    """What became of the answer to pause ``key`` (read by `drkit approve`); never holds the code."""
    create_flow_run_input(key=f"paused-{key}-outcome",
                          value={"verdict": verdict, "approver": approver, "detail": detail})


# -- the answering side (drkit approve, tests, the demo) ----------------------------------------------------


def paused_runs() -> list[dict[str, Any]]:
    """Flow runs waiting for a human, with what they wait for."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    return [{"id": str(r.id), "name": r.name, "since": r.state.timestamp if r.state else None,
             "parameters": r.parameters} for r in runs]


def pause_of(run_id: str, *, timeout: float = 30.0) -> dict[str, str]:
    """The input keys of the pause ``run_id`` waits in (description, response, schema), once its form is
    saved (a run turns PAUSED a moment before its flow saves the form).

    An unknown run is bad input (ConfigError); a run that is not paused is a failed operation (DrkitError).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(UUID(run_id))
        except ObjectNotFound:
            raise ConfigError(f"no flow run {run_id} in the Prefect API; `drkit approvals` lists the runs "
                              "waiting for an answer") from None
        if run.state is None or not run.state.is_paused():
            raise DrkitError(f"run {run_id} is not paused (answered already, timed out or finished); "
                             "nothing was changed")
        keys = {str(k): v for k, v in keyset_from_paused_state(run.state).items()}
        if all(read_flow_run_input(keys[k], flow_run_id=run.id) is not None for k in ("schema", "description")):
            return keys
        if time.monotonic() > deadline:
            raise DrkitError(f"run {run_id} is paused but its form was never saved (is its flow process "
                             "still running?); nothing was changed")
        time.sleep(0.1)


def answer(run_id: str, *, approve: bool, approver: str, reason: str, code: str) -> str:
    """Resume a paused run with the form its pause asked for (approval, failover or failback).

    Returns the pause answered (for :func:`outcome`). The flow judges the answer.
    """
    keys = pause_of(run_id)
    schema: Any = read_flow_run_input(keys["schema"], flow_run_id=UUID(run_id))
    fields = (json.loads(schema) if isinstance(schema, str) else schema or {}).get("properties", {})
    data: dict[str, Any] = {"approver": approver, "reason": reason, "code": code}
    if "confirm_region_failure" in fields:
        data["confirm_region_failure"] = approve
    elif "decision" in fields:
        data["decision"] = "fail back" if approve else "stay on DR"
    else:
        data["approve"] = approve
    try:
        resume_flow_run(UUID(run_id), run_input=data)
    except NotPausedError:
        raise DrkitError(f"run {run_id} is not paused (answered already, timed out or finished); "
                         "nothing was changed") from None
    except FlowPauseTimeout:
        raise DrkitError(f"run {run_id} timed out waiting for an answer; nothing was changed") from None
    return keys["response"].removesuffix("-response")


def outcome(run_id: str, pause: str, *, timeout: float = 120.0, poll: float = 0.2) -> dict[str, str]:
    """Wait until the flow has judged the answer to ``pause``: its verdict (approved, rejected, recorded,
    refused) with the approver and why; or, if the run ended first, ``ended`` with its state. After a
    refused or recorded answer it also waits until the run has paused again, ready for the next answer."""
    deadline = time.monotonic() + timeout
    rid = UUID(run_id)
    found: dict[str, str] | None = None
    while True:
        if found is None:
            value: Any = read_flow_run_input(f"{pause}-outcome", flow_run_id=rid)
            found = {k: str(v) for k, v in value.items()} if value else None
        if found is not None and found["verdict"] in ("approved", "rejected"):
            return found
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(rid).state
        if found is not None and state is not None and (  # refused or recorded: once it waits again
                state.is_final() or (state.is_paused() and not keyset_from_paused_state(state)[
                    "response"].startswith(f"{pause}-"))):
            return found
        if found is None and state is not None and state.is_final():
            value = read_flow_run_input(f"{pause}-outcome", flow_run_id=rid)  # judged just before it ended?
            if value:
                return {k: str(v) for k, v in value.items()}
            return {"verdict": "ended", "approver": "", "detail": f"the run ended {state.name}: {state.message}"}
        if time.monotonic() > deadline:
            raise DrkitError(f"run {run_id} has not judged the answer within {timeout:.0f} s; is its flow "
                             "process still running? `drkit approvals` shows whether it still waits")
        time.sleep(poll)


def api_url() -> str:
    """The Prefect API URL this process talks to ('' when none is set)."""
    from prefect.settings import get_current_settings

    return str(get_current_settings().api.url or "")
