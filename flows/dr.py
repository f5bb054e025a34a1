"""DR runbooks: unplanned failover (with a human approval) and planned failback.

Every step is an idempotent task: re-running a runbook after a crash continues
where it stopped. A replica that is already primary is never promoted again; on
a re-run the failover sees it and goes straight to repointing clients.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from drkit.config import load_policy
from drkit.errors import ApprovalError
from flows.approvals import FailoverApproval, wait_for_approval
from tasks.common import artifact_key
from tasks.dr import (
    confirm_writes,
    fence_primary,
    point_clients,
    probe_primary,
    probe_side,
    promote_replica,
    record,
    replica_state,
)
from tasks.notify import notify


def _timeline(events: list[tuple[str, str]], what: str) -> None:
    events.append((datetime.now(UTC).isoformat(timespec="milliseconds"), what))


@flow(name="dr-failover", flow_run_name="failover-{db}")
def dr_failover(
    db: str,
    config: str | None = None,
    probe_interval_seconds: float | None = None,
    approval_timeout_seconds: int | None = None,
) -> dict[str, Any]:
    """Unplanned failover: probe, P1, approval, fence, promote, confirm writes, repoint clients, probe, notify."""
    log = get_run_logger()
    policy = load_policy(config)
    events: list[tuple[str, str]] = []
    state = replica_state(db, config)
    resumed = bool(state["already_primary"])
    if resumed:
        _timeline(events, "the replica is already primary: a previous run promoted it; continuing from there")
        decision_by, decision_reason, waited = "(earlier run)", "resumed after a crash", 0.0
        promotion: dict[str, Any] = {"already_primary": True}
        loss_window = None
    else:
        probes = probe_primary(db, config, probe_interval_seconds)
        _timeline(events, "probed the primary: " + "; ".join(probes["summary"]))
        if not probes["down"]:
            log.info("the primary answers; no failover: %s", "; ".join(probes["summary"]))
            return {"failed_over": False, "why": "primary healthy", "probes": probes["summary"]}
        lag = state["lag"]
        notify("p1", f"P1: {db} primary is DOWN — failover awaiting approval",
               f"database: {db}\nprobes: {'; '.join(probes['summary'])}\nreplica lag: {lag['bytes']} bytes, "
               f"{lag['seconds']} s (last replayed {lag['last_replay_at']})\n"
               "A DBA must approve the failover in the Prefect UI (Resume) or with `drkit approve`.", config)
        _timeline(events, "P1 opened; waiting for approval")
        description = (
            f"## Fail {db} over to the DR replica?\n\n"
            f"**Evidence.** {'; '.join(probes['summary'])}.\n\n"
            f"Replica: {lag['state']}, {lag['bytes']} bytes behind its receive position, newest replayed "
            f"transaction from {lag['last_replay_at']}.\n\n"
            f"**Approving** (tick *confirm_region_failure*) fences the old primary where reachable, promotes the "
            f"replica, and points clients at it. Writes not yet replicated are lost. **Rejecting** (leave it "
            f"unticked) changes nothing. Approvers: {', '.join(policy.approvals.approvers) or '(none)'}; "
            f"times out after {policy.approvals.failover_timeout} and then promotes nothing.")
        timeout = (timedelta(seconds=approval_timeout_seconds) if approval_timeout_seconds is not None
                   else policy.approvals.failover_timeout)
        try:
            decision = wait_for_approval(
                description, approvers=policy.approvals.approvers, timeout=timeout, form_class=FailoverApproval,
                initial={"confirm_region_failure": False}, decide=lambda a: bool(a.confirm_region_failure),
                audit=lambda action, detail: record(db, f"failover.{action}", str(detail.get("by")), detail, config))
        except ApprovalError as exc:
            record(db, "failover.timeout", "drkit", {"outcome": f"{exc}; nothing was promoted"}, config)
            log.error("%s: nothing was promoted", exc)
            raise
        decision_by, decision_reason, waited = decision.approver, decision.reason, decision.waited_seconds
        if not decision.approve:
            record(db, "failover.rejected", decision.approver, {"reason": decision.reason}, config)
            log.warning("failover rejected by %s: %s; nothing was promoted", decision.approver, decision.reason)
            return {"failed_over": False, "why": "rejected", "by": decision.approver}
        _timeline(events, f"approved by {decision.approver}: {decision.reason}")
        t_approved = time.monotonic()
        fenced = fence_primary(db, config)
        _timeline(events, f"fenced the old primary: {fenced['action']} ({fenced['detail']})")
        state = replica_state(db, config)
        loss_window = state["seconds"]
        promotion = promote_replica(db, config)
        _timeline(events, f"promoted the replica: timeline {promotion.get('timeline')} at {promotion.get('lsn')}")
    t_switch = time.monotonic()
    first_write = confirm_writes(db, "dr", config)
    _timeline(events, f"DR accepts writes ({first_write})")
    pointed = point_clients(db, "dr", config)
    _timeline(events, f"clients repointed to {pointed['endpoint']}")
    probe = probe_side(db, "dr", config)
    _timeline(events, "DR side probed healthy")
    rto = None if resumed else round(time.monotonic() - t_approved, 3)
    detail = {"approver": decision_by, "reason": decision_reason, "data_loss_window_seconds": loss_window,
              "time_to_recover_seconds_excluding_approval": rto, "waited_for_approval_seconds": round(waited, 1),
              "promotion": promotion, "endpoint": pointed["endpoint"], "resumed": resumed,
              "switch_seconds": round(time.monotonic() - t_switch, 3), "timeline": events}
    record(db, "failover.completed", decision_by, detail, config)
    notify("p1", f"{db} failed over to DR", f"database: {db}\nnow served from {pointed['endpoint']}\n"
           f"approved by {decision_by}; data-loss window ≈ {loss_window} s; time to recover {rto} s", config)
    create_markdown_artifact(
        markdown=f"# Failover of {db}\n\n" + "\n".join(f"* **{k}**: {v}" for k, v in detail.items() if k != "timeline")
        + "\n\n## Timeline\n\n| at | what |\n|---|---|\n" + "\n".join(f"| {a} | {w} |" for a, w in events),
        key=artifact_key(db, "failover-report"), description=f"failover of {db}")
    return {"failed_over": True, **detail, "probe": probe}
