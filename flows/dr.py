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
from drkit.dr import PrimaryProbe, TrafficStep
from drkit.engines.base import PendingStep, Promotion, ReplicaLag, Switchover
from drkit.errors import ApprovalError
from flows.approvals import FailbackChoice, FailoverApproval, PendingStepsApproval, wait_for_approval
from flows.backup import full_backup
from tasks.common import artifact_key, record
from tasks.dr import (
    archive_on_primary,
    confirm_writes,
    dr_methods,
    fence_primary,
    pending_steps,
    point_clients,
    probe_primary,
    probe_side,
    promote_replica,
    publish_endpoint,
    replica_lag,
    replica_state,
    resync_as_standby,
    route_back_to_dr,
    run_pending_step,
    switch_database_back,
    traffic_step,
    wait_zero_lag,
    where_is_primary,
)
from tasks.notify import notify


def _loss_window(probes: PrimaryProbe, lag: ReplicaLag) -> float | None:
    """Upper bound of the data-loss window: from the replica's newest applied commit to the first failed probe.

    Measured before the approval wait (a DBA's thinking time is not data loss). It overstates the loss
    when the primary was idle before it died: then nothing was committed after that last commit.
    """
    first = probes.database.first_failure_at
    last = lag.last_applied_at
    if first is None or last is None:
        return None
    return max(0.0, round((first - last).total_seconds(), 3))


def protect_new_primary(db: str, config: str | None) -> dict[str, Any]:
    """After a switch of primary: the new primary archives into drkit, and a full backup of it starts the new
    chain at once (engines whose chain carries on across a switch need neither). A failed backup does not
    undo the switch: it is reported (and notified by the backup flow), and the scheduled backups retry."""
    archiving = archive_on_primary(db, config)
    if not archiving["needed"]:
        return {"archiving": archiving, "full": None, "why": "the log chain carries on on the new primary"}
    if not archiving["ok"]:
        get_run_logger().warning("the new primary of %s does not archive into drkit yet: %s", db, archiving)
    state = full_backup(db=db, config=config, return_state=True)
    if state.is_completed():
        return {"archiving": archiving, "full": state.result()}
    get_run_logger().error("the full backup of the new primary of %s failed: %s", db, state.message)
    return {"archiving": archiving, "full": None, "error": state.message}


def _timeline(events: list[tuple[str, str]], what: str) -> None:
    events.append((datetime.now(UTC).isoformat(timespec="milliseconds"), what))


def _steps_text(steps: list[PendingStep]) -> str:
    return "\n\n".join(f"**{s.action}**" + "".join(f"\n* {line}" for line in s.evidence) for s in steps)


def run_approved_pending_steps(db: str, config: str | None, timeout: timedelta,
                               events: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The steps the promotion left waiting (SQL Server: resuming the other replicas, which rolls back what the
    new primary never received), each shown with its evidence, run only once approved in a pause of their own.

    Rejected or unanswered they stay waiting (the failover itself is done and stays done): a re-run of the
    runbook asks again. None on an engine that leaves nothing waiting (PostgreSQL).
    """
    steps = pending_steps(db, config)
    if not steps:
        return []
    policy = load_policy(config)
    description = (
        f"## {db}: run the step(s) the failover left waiting?\n\n{_steps_text(steps)}\n\n"
        "**Approving** (tick *approve*) runs them now. **Rejecting** leaves them waiting: re-run "
        f"`drkit failover {db}` to be asked again. Times out after {timeout} and then runs nothing.")
    waiting = [{**s.as_dict(), "done": None} for s in steps]
    try:
        decision = wait_for_approval(
            description, approvers=policy.approvals.approvers, timeout=timeout, form_class=PendingStepsApproval,
            audit=lambda action, detail: record(db, f"failover.pending.{action}", str(detail.get("by")), detail,
                                                config),
            config=config, required=policy.approvals.required)
    except ApprovalError as exc:
        record(db, "failover.pending.timeout", "drkit", {"outcome": f"{exc}; nothing was run", "steps": waiting},
               config)
        _timeline(events, f"pending steps left waiting: {exc}")
        return waiting
    if not decision.approve:
        record(db, "failover.pending.rejected", decision.approver, {"reason": decision.reason, "steps": waiting},
               config)
        _timeline(events, f"pending steps left waiting: {decision.approver} rejected them ({decision.reason})")
        return waiting
    done = []
    for step in steps:
        outcome = run_pending_step(db, step.key, config)
        _timeline(events, f"{step.key} approved by {decision.approver}: {outcome}")
        done.append({**step.as_dict(), "done": outcome, "by": decision.approver})
    record(db, "failover.pending.done", decision.approver, {"reason": decision.reason, "steps": done}, config)
    return done


@flow(name="dr-failover", flow_run_name="failover-{db}")
def dr_failover(
    db: str,
    config: str | None = None,
    probe_interval_seconds: float | None = None,
    approval_timeout_seconds: int | None = None,
) -> dict[str, Any]:
    """Unplanned failover: probe, P1, approval, fence, promote, confirm writes, repoint clients, probe, notify.

    Nothing changes unless every probe of the primary fails and a listed approver confirms the region
    failure on the run's Resume form (or with `drkit approve`).

    Args:
        db: The policy's name of the database to fail over to its DR replica.
        config: The policy file. Filled in by the deployment; leave it.
        probe_interval_seconds: Seconds between probes of the primary. Empty: the policy's
            `health.interval`.
        approval_timeout_seconds: How long to wait for the approval before giving up (nothing is
            promoted). Empty: the policy's `approvals.failover_timeout`.
    """
    log = get_run_logger()
    policy = load_policy(config)
    events: list[tuple[str, str]] = []
    timeout = (timedelta(seconds=approval_timeout_seconds) if approval_timeout_seconds is not None
               else policy.approvals.failover_timeout)
    state = replica_state(db, config)
    resumed = state.already_primary
    promotion: Promotion | None = None
    if resumed:
        _timeline(events, "the replica is already primary: a previous run promoted it; continuing from there")
        decision_by, decision_reason, waited = "(earlier run)", "resumed after a crash", 0.0
        loss_window = None
    else:
        probes = probe_primary(db, config, probe_interval_seconds)
        _timeline(events, "probed the primary: " + "; ".join(probes.summary))
        if not probes.down:
            log.info("the primary answers; no failover: %s", "; ".join(probes.summary))
            return {"failed_over": False, "why": "primary healthy", "probes": probes.summary}
        lag = state.lag
        methods = dr_methods(db, config)
        loss_window = _loss_window(probes, lag)
        applied = lag.last_applied_at.isoformat() if lag.last_applied_at else "unknown"
        notify("p1", f"P1: {db} primary is DOWN — failover awaiting approval",
               f"database: {db}\nprobes: {'; '.join(probes.summary)}\nreplica lag: {lag.bytes} bytes, "
               f"{lag.seconds} s (newest applied commit {applied})\n"
               "A DBA must approve the failover in the Prefect UI (Resume) or with `drkit approve`.", config)
        _timeline(events, "P1 opened; waiting for approval")
        evidence = "".join(f"\n* {line}" for line in lag.details)
        description = (
            f"## Fail {db} over to the DR replica?\n\n"
            f"**Evidence.** {'; '.join(probes.summary)}.\n\n"
            f"Replica: {lag.state}, {lag.bytes if lag.bytes is not None else 'unknown'} bytes received but not "
            f"yet applied, newest applied transaction from {lag.last_applied_at or 'before the replica started'}"
            f"{f' (data-loss window up to {loss_window} s before the first failed probe)' if loss_window else ''}."
            f"{evidence}\n\n"
            f"**Approving** (tick *confirm_region_failure*) fences the old primary where reachable ({methods.fence}), "
            f"promotes the replica ({methods.promote}), and points clients at it. Writes not yet replicated are "
            f"lost. **Rejecting** (leave it unticked) changes nothing. Approvers: "
            f"{', '.join(policy.approvals.approvers) or '(none)'}; times out after "
            f"{timeout} and then promotes nothing.")
        try:
            decision = wait_for_approval(
                description, approvers=policy.approvals.approvers, timeout=timeout, form_class=FailoverApproval,
                initial={"confirm_region_failure": False}, decide=lambda a: bool(a.confirm_region_failure),
                audit=lambda action, detail: record(db, f"failover.{action}", str(detail.get("by")), detail, config),
                config=config, required=policy.approvals.required)
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
        _timeline(events, f"fenced the old primary: {fenced.action} ({fenced.detail})")
        promotion = promote_replica(db, config)
        _timeline(events, f"promoted the replica: {promotion.summary()}")
    t_switch = time.monotonic()
    first_write = confirm_writes(db, "dr", config)
    _timeline(events, f"DR accepts writes ({first_write.isoformat()})")
    pointed = point_clients(db, "dr", config)
    rto = None if resumed else round(time.monotonic() - t_approved, 3)
    _timeline(events, f"clients repointed to {pointed.endpoint}")
    publish_endpoint(db, config)
    probe = probe_side(db, "dr", config)
    _timeline(events, "DR side probed healthy")
    protection = protect_new_primary(db, config)
    _timeline(events, f"new chain on DR: full backup {protection['full'] or 'FAILED (see the log)'}")
    detail = {"approver": decision_by, "reason": decision_reason, "data_loss_window_seconds": loss_window,
              "time_to_recover_seconds_excluding_approval": rto, "waited_for_approval_seconds": round(waited, 1),
              "promotion": promotion.as_dict() if promotion else {"already_primary": True},
              "endpoint": pointed.endpoint, "resumed": resumed,
              "switch_seconds": round(time.monotonic() - t_switch, 3), "protection": protection,
              "timeline": events}
    record(db, "failover.completed", decision_by, detail, config)
    notify("p1", f"{db} failed over to DR", f"database: {db}\nnow served from {pointed.endpoint}\n"
           f"approved by {decision_by}; data-loss window ≈ {loss_window} s; time to recover {rto} s", config)
    create_markdown_artifact(
        markdown=f"# Failover of {db}\n\n" + "\n".join(f"* **{k}**: {v}" for k, v in detail.items() if k != "timeline")
        + "\n\n## Timeline\n\n| at | what |\n|---|---|\n" + "\n".join(f"| {a} | {w} |" for a, w in events),
        key=artifact_key(db, "failover-report"), description=f"failover of {db}")
    after = run_approved_pending_steps(db, config, timeout, events)
    return {"failed_over": True, **detail, "probe": probe.as_dict(), "after_failover": after}


@flow(name="dr-failback", flow_run_name="failback-{db}")
def dr_failback(
    db: str,
    config: str | None = None,
    approval_timeout_seconds: int | None = None,
    hold_seconds: float | None = None,
) -> dict[str, Any]:
    """Planned failback: choose, resync the old primary, switch the database, move traffic back gradually.

    Pauses first for the choice: fail back, or stay on DR (the old primary becomes DR's replica).

    Args:
        db: The policy's name of the database to bring back to its primary region.
        config: The policy file. Filled in by the deployment; leave it.
        approval_timeout_seconds: How long to wait for the decision before giving up (nothing changes).
            Empty: the policy's `approvals.failover_timeout`.
        hold_seconds: How long each traffic step is held while error rate and latency are watched.
            Empty: the policy's `failback.hold`.
    """
    log = get_run_logger()
    policy = load_policy(config)
    cfg = policy.database(db)
    events: list[tuple[str, str]] = []
    where = where_is_primary(db, config)
    _timeline(events, f"the database is written on: {where}")
    if where not in ("dr", "primary"):
        raise RuntimeError(f"cannot fail back {db}: writable sides are {where!r}; resolve by hand first")
    methods = dr_methods(db, config)
    timeout = (timedelta(seconds=approval_timeout_seconds) if approval_timeout_seconds is not None
               else policy.approvals.failover_timeout)
    waiting = pending_steps(db, config) if where == "dr" else []
    description = (
        f"## {db}: fail back to the primary region, or stay on DR?\n\n"
        f"The database is now written on **{where}**. *fail back* resynchronises the old primary as a "
        f"replica of DR ({methods.resync}), waits until it has caught up, switches the database back with no "
        f"data loss ({methods.switch_back}; writes pause for a moment), makes DR a replica again, then moves "
        f"application traffic back {' → '.join(f'{p}%' for p in cfg.failback.steps)}, each step held "
        f"{cfg.failback.hold} while the error rate stays ≤ {cfg.failback.max_error_rate:.1%} and p95 latency "
        f"≤ {cfg.failback.max_latency_ms:.0f} ms (a breach routes traffic back to DR and stops). "
        f"*stay on DR* records the decision and makes the old primary a replica of DR."
        + (f"\n\nEither choice runs what the failover left waiting:\n\n{_steps_text(waiting)}" if waiting else ""))
    try:
        decision = wait_for_approval(
            description, approvers=policy.approvals.approvers, timeout=timeout, form_class=FailbackChoice,
            initial={"decision": "stay on DR"}, decide=lambda a: a.decision == "fail back",
            audit=lambda action, detail: record(db, f"failback.{action}", str(detail.get("by")), detail, config),
            config=config, required=policy.approvals.required)
    except ApprovalError as exc:
        record(db, "failback.timeout", "drkit", {"outcome": f"{exc}; nothing changed"}, config)
        raise
    _timeline(events, f"{decision.approver} chose {'fail back' if decision.approve else 'stay on DR'}: "
                      f"{decision.reason}")
    if not decision.approve:
        outcome = resync_as_standby(db, "primary", config).outcome if where == "dr" else "nothing to do"
        point_clients(db, where, config, app_weight=None)  # the record names the side that takes writes
        publish_endpoint(db, config)
        record(db, "failback.stay", decision.approver, {"reason": decision.reason, "resync": outcome}, config)
        return {"failed_back": False, "decision": "stay on DR", "resync": outcome, "by": decision.approver}
    switch: Switchover | None = None
    protection: dict[str, Any] | None = None
    if where == "dr":
        resynced = resync_as_standby(db, "primary", config)
        _timeline(events, f"old primary resynchronised as a replica of DR ({resynced.outcome}: {resynced.detail})")
        caught_up = wait_zero_lag(db, "primary", config)
        _timeline(events, f"caught up ({caught_up.position})")
        # Point new connections at the primary first: until its promotion they fail fast (read-only)
        # instead of hanging on DR's closing port through HAProxy's retries.
        point_clients(db, "primary", config, app_weight=None)
        publish_endpoint(db, config)
        switch = switch_database_back(db, config)
        _timeline(events, f"database switched back ({switch.promotion.summary()}); writes paused "
                          f"{round(switch.write_unavailable_seconds, 3)} s")
        dr_resync = resync_as_standby(db, "dr", config)
        _timeline(events, f"DR is a replica again ({dr_resync.outcome}: {dr_resync.detail})")
        protection = protect_new_primary(db, config)
        _timeline(events, f"new chain on the primary: full backup {protection['full'] or 'FAILED (see the log)'}")
    else:  # switched back by an earlier run: the record (and the Variable) must say so
        point_clients(db, "primary", config, app_weight=None)
        publish_endpoint(db, config)
    steps: list[TrafficStep] = []
    if cfg.traffic.router == "endpoint":
        _timeline(events, "no application router configured: the database switch is the whole failback")
    for pct in cfg.failback.steps if cfg.traffic.router != "endpoint" else []:
        step = traffic_step(db, pct, config, hold_seconds)
        steps.append(step)
        _timeline(events, f"{pct}% of traffic on the primary region: error rate {step.error_rate}, "
                          f"p95 {step.p95_ms} ms, served {step.served}")
        if step.breach:
            weights = route_back_to_dr(db, config)
            _timeline(events, f"BREACH at {pct}%: traffic routed back to DR ({weights})")
            record(db, "failback.breach", "drkit", {"step": step.as_dict(), "timeline": events}, config)
            notify("p1", f"P1: failback of {db} stopped at {pct}%",
                   f"database: {db}\nerror rate {step.error_rate}, p95 {step.p95_ms} ms at {pct}%\n"
                   "application traffic is back on DR; the database stays on the primary region.", config)
            _postmortem(db, events, steps, switch, decision.approver, breached=True)
            raise RuntimeError(f"failback of {db} breached its bounds at {pct}% (error rate "
                               f"{step.error_rate}, p95 {step.p95_ms} ms): traffic routed back to DR")
    report = {"switch": switch.as_dict() if switch else {}, "steps": [s.as_dict() for s in steps],
              "protection": protection}
    record(db, "failback.completed", decision.approver,
           {"reason": decision.reason, **report, "timeline": events}, config)
    notify("p1", f"{db} failed back: incident closed",
           f"database: {db}\nback on the primary region; DR is a replica again.", config)
    log.info("failback of %s complete", db)
    _postmortem(db, events, steps, switch, decision.approver, breached=False)
    return {"failed_back": True, **report, "by": decision.approver}


def _postmortem(db: str, events: list[tuple[str, str]], steps: list[TrafficStep], switch: Switchover | None,
                approver: str, *, breached: bool) -> None:
    unavailable = round(switch.write_unavailable_seconds, 3) if switch else "n/a"
    lines = [f"# Post-mortem: {db} failover and failback", "",
             "## Summary", "", "_What happened, impact, detection (fill in)._", "",
             f"* failback approved by {approver}; outcome: {'stopped on a breach' if breached else 'complete'}",
             f"* write unavailability at the switch back: {unavailable} s", "",
             "## Timeline", "", "| at (UTC) | what |", "|---|---|"]
    lines += [f"| {a} | {w} |" for a, w in events]
    lines += ["", "## Traffic steps", "", "| % primary | error rate | p95 ms | served |", "|---|---|---|---|"]
    lines += [f"| {s.percent} | {s.error_rate} | {s.p95_ms} | {s.served} |" for s in steps]
    lines += ["", "## Root cause", "", "_(fill in)_", "", "## Action items", "", "- [ ] _(fill in)_"]
    create_markdown_artifact(markdown="\n".join(lines), key=artifact_key(db, "postmortem"),
                             description=f"post-mortem skeleton for {db}")


@flow(name="replica-lag-check", flow_run_name="lag-{db}")
def replica_lag_check(db: str, config: str | None = None) -> dict[str, Any]:
    """Measure the DR replica's lag; alert (p1) when it passes ``replica.max_lag_seconds``."""
    lag = replica_lag(db, config)
    if lag.too_far:
        notify("p1", f"{db}: DR replica lag {lag.seconds} s exceeds {lag.max_lag_seconds} s",
               f"database: {db}\nreplica state: {lag.state}, {lag.bytes} bytes behind\n"
               "a failover now would lose more than the policy allows", config)
    return lag.as_dict()
