"""Corruption-recovery runbook: restore to just before the corruption, validate, approve, switch.

The operations guide's "Data Corruption Recovery → Restore Process → Standby
Database → Validate Data → Switch to Restored". The switch here records the
restored cluster as the database's active endpoint in the catalog (and audits
who approved what, when), after restarting it with the backup's own listen
settings (it is restored listening on a private Unix socket only); moving client
traffic is the traffic router's job.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from drkit.config import load_policy
from drkit.errors import ApprovalError, ConfigError, DrkitError, VerificationError
from flows.approvals import wait_for_approval
from flows.dr import protect_new_primary
from tasks.common import artifact_key, record
from tasks.dr import endpoint_variable, publish_endpoint
from tasks.restore import (
    client_access,
    execute_restore,
    open_to_clients,
    plan_restore,
    publish_restore_report,
    release_restored,
    switch_endpoint,
)
from tasks.verify import validate_restored


@flow(name="recover-from-corruption", flow_run_name="recover-{db}")
def recover_from_corruption(
    db: str,
    before: datetime,
    into: str | None = None,
    port: int | None = None,
    config: str | None = None,
    approval_timeout_seconds: int | None = None,
) -> dict[str, object]:
    """Restore ``db`` to ``before`` on a standby, validate it, and switch only after an approval.

    Args:
        db: The policy's name of the damaged database.
        before: The last good moment: the standby is restored up to it (recovery stops before the first
            commit after it).
        into: A new, empty directory for the standby on the worker's host. Empty: a new directory under the
            policy's `scratch_dir`.
        port: The port the standby listens on once switched to. Empty: a free port below 32768.
        config: The policy file. Filled in by the deployment; leave it.
        approval_timeout_seconds: How long to wait for the approval before stopping the standby (nothing
            is switched). Empty: the policy's `approvals.restore_timeout`.
    """
    log = get_run_logger()
    policy = load_policy(config)
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    into = into or str(policy.resolve(policy.scratch_dir) / db / f"recovered-{stamp}")
    plan = plan_restore(db, before, config)
    result = execute_restore(db, plan, into, port, True, config)
    if result.port is None:  # the CLI refuses such engines up front (EngineFeatures.standby_restore)
        raise ConfigError(f"{db!r}'s engine restored into {result.location} without a server of its own on this "
                          "host; corruption recovery cannot switch clients to it")
    port = result.port
    checks = validate_restored(db, result, config)
    publish_restore_report(result, checks)
    if not all(c.ok for c in checks):
        release_restored(db, result, config)
        raise VerificationError(f"the standby restored to {before.isoformat()} failed validation; nothing was "
                                f"switched (it is stopped, data left in {into})")
    evidence = "\n".join(f"* {c.name}: {'ok' if c.ok else 'FAILED'} — {c.detail[:160]}" for c in checks)
    hba = client_access(db, result, config)
    description = (
        f"## Switch {db} to the restored standby?\n\n"
        f"The standby was restored to **{before.isoformat()}** (just before the corruption) from "
        f"{', '.join(p.backup.id for p in plan.pieces)} and is running on port {port}, on the Unix socket "
        f"in its data dir `{into}` only (no TCP yet).\n\nValidation:\n{evidence}\n\n"
        f"**Approving** restarts the standby on port {port} with the backup's own listen_addresses and "
        f"socket settings (PostgreSQL's default `localhost` where the backup sets none) and {hba}; once "
        f"`127.0.0.1:{port}` accepts connections it is recorded as the active endpoint of {db}. Writes "
        f"made on the old primary after {before.isoformat()} are not in it. **Rejecting** stops the standby "
        f"and switches nothing. Approvers: {', '.join(policy.approvals.approvers) or '(none configured)'}.")
    timeout = policy.approvals.restore_timeout
    if approval_timeout_seconds is not None:
        timeout = timedelta(seconds=approval_timeout_seconds)
    try:
        decision = wait_for_approval(
            description, approvers=policy.approvals.approvers, timeout=timeout,
            audit=lambda action, detail: record(db, f"corruption.{action}", str(detail.get("by")), detail, config),
            config=config, required=policy.approvals.required)
    except ApprovalError as exc:
        release_restored(db, result, config)
        record(db, "corruption.timeout", "drkit", {"before": before.isoformat(), "data_dir": into,
                                                  "outcome": f"{exc}; the restored standby is stopped"}, config)
        log.error("%s; the restored standby is stopped, its data left in %s", exc, into)
        raise
    detail = {"approver": decision.approver, "reason": decision.reason, "before": before.isoformat(),
              "data_dir": into, "port": port, "pieces": [p.backup.id for p in plan.pieces],
              "waited_seconds": round(decision.waited_seconds, 1)}
    if not decision.approve:
        release_restored(db, result, config)
        record(db, "corruption.rejected", decision.approver, detail, config)
        log.warning("switch rejected by %s: %s; nothing was switched", decision.approver, decision.reason)
        return {"switched": False, **detail}
    try:
        opened = open_to_clients(db, into, port, config)
    except DrkitError as exc:
        record(db, "corruption.open_failed", decision.approver, {**detail, "error": str(exc)}, config)
        log.error("%s; nothing was switched", exc)
        raise
    detail.update(listen_addresses=opened["listen_addresses"], tcp_clients=opened["tcp_clients"])
    switch_endpoint(db, port, str(Path(into).absolute()), decision.approver, config)
    detail.update(endpoint=publish_endpoint(db, config), variable=endpoint_variable(db))
    detail["protection"] = protect_new_primary(db, config)
    record(db, "corruption.switched", decision.approver, detail, config)
    create_markdown_artifact(
        markdown=f"# {db} switched to the restored standby\n\n" + "\n".join(f"* {k}: {v}" for k, v in detail.items()),
        key=artifact_key(db, "corruption-switch"), description="corruption recovery switch")
    return {"switched": True, "into": str(Path(into)), **detail}
