"""DR runbooks: failover, failback, import-history."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cli.common import (
    app,
    config_path,
    console,
    guard,
    runtime,
    use_prefect,
)
from drkit.engines import open_engine

if TYPE_CHECKING:
    pass

@app.command()
def failover(db: str) -> None:
    """Unplanned failover runbook: probes, P1, approval pause, promote the replica, repoint clients."""
    def run() -> dict[str, Any]:
        runtime().policy.database(db)
        use_prefect()
        from flows.dr import dr_failover
        result: dict[str, Any] = dr_failover(db=db, config=config_path())
        return result
    out = guard(run)
    if out.get("failed_over"):
        rto = out["time_to_recover_seconds_excluding_approval"]
        console.print(f"{db} failed over to {out['endpoint']} (approved by {out['approver']}); data-loss window "
                      f"≈ {out['data_loss_window_seconds']} s, recovered in {rto} s")
        _print_protection(db, out.get("protection"))
        _print_pending(db, out.get("after_failover"))
    else:
        console.print(f"no failover: {out.get('why')}")


@app.command()
def failback(db: str) -> None:
    """Planned failback runbook: choice pause, resync, switch back, traffic 10% → 50% → 100%."""
    def run() -> dict[str, Any]:
        runtime().policy.database(db)
        use_prefect()
        from flows.dr import dr_failback
        result: dict[str, Any] = dr_failback(db=db, config=config_path())
        return result
    out = guard(run)
    console.print("failed back" if out.get("failed_back") else f"stayed on DR ({out.get('resync')})")
    _print_protection(db, out.get("protection"))


def _print_protection(db: str, protection: dict[str, Any] | None) -> None:
    """What the runbook did so backups follow the new primary (nothing when it switched nothing)."""
    if not protection or not protection.get("archiving", {}).get("needed"):
        return
    if protection.get("full"):
        console.print(f"backups follow the new primary: full backup {protection['full']} starts its chain")
    else:
        console.print(f"the full backup of the new primary failed ({protection.get('error')}); run `drkit "
                      f"backup full {db}` once it is fixed (the schedules retry)")


def _print_pending(db: str, steps: list[dict[str, Any]] | None) -> None:
    """The steps the promotion left for their own approval (SQL Server: resuming the other replicas): what each
    did once approved, or that it still waits (rejected or unanswered; the failover itself stays done)."""
    for step in steps or []:
        if step.get("done"):
            console.print(f"pending step {step['key']} approved by {step.get('by')}: {step['done']}")
        else:
            console.print(f"still waiting for approval: {step['action']} ({step['key']}); run `drkit failover "
                          f"{db}` again to be asked again")


@app.command("import-history")
def import_history(db: str) -> None:
    """Record the backups the server remembers (SQL Server's msdb), so drkit can plan restores from them."""
    console.print(guard(lambda: open_engine(runtime(), db).import_history()))


