"""Restores: restore-plan, restore, verify, recover."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import (
    app,
    config_path,
    console,
    err,
    error,
    guard,
    human_bytes,
    parse_time,
    print_json,
    runtime,
    span,
    use_prefect,
)
from drkit.engines import open_engine
from drkit.errors import ConfigError, VerificationError

if TYPE_CHECKING:
    pass

# -- restore --------------------------------------------------------------------------------------------


@app.command("restore-plan")
def restore_plan(db: str, to: Annotated[str | None, typer.Option("--to", help="ISO 8601 timestamp")] = None,
                 lsn: Annotated[str | None, typer.Option("--lsn", help="a WAL position like 0/3000028")] = None,
                 as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What a restore to TIME or LSN (default: latest) would read, from where, and how long. Touches nothing."""
    from drkit.restore import estimated_seconds

    def run() -> None:
        from rich.table import Table
        rt = runtime()
        plan = open_engine(rt, db).plan_restore(parse_time(to) if to else None, position=lsn)
        seconds, basis = estimated_seconds(rt, db, plan)
        if as_json:
            print_json({"database": db, "target": plan.target_time, "target_lsn": lsn, "recovery": plan.recovery,
                         "reaches": plan.reaches, "total_bytes": plan.total_bytes,
                         "estimated_seconds": round(seconds, 1), "estimate_basis": basis,
                         "pieces": [{"backup": p.backup.id, "kind": p.role, "tier": p.tier,
                                     "bytes": p.stored_bytes, "wal": [p.backup.start_wal, p.backup.end_wal],
                                     "positions": [p.backup.start_lsn, p.backup.end_lsn]}
                                    for p in plan.pieces],
                         "reasons": list(plan.reasons)})
            return
        table = Table(title=f"restore plan for {db} → {to or 'latest'} (recovery: {plan.recovery})")
        for col in ("piece", "backup", "tier", "bytes", "covers"):
            table.add_column(col)
        for p in plan.pieces:
            table.add_row(p.role, p.backup.id, p.tier, human_bytes(p.stored_bytes), span(p.backup))
        console.print(table)
        for r in plan.reasons:
            console.print(f"• {r}")
        console.print(f"{human_bytes(plan.total_bytes)} to read; about {seconds:.0f} s {basis}")
    guard(run)


@app.command()
def restore(
    db: str,
    into: Annotated[str, typer.Option("--into", help="PostgreSQL: a new, empty directory; SQL Server: a new "
                                                     "database name")],
    to: Annotated[str | None, typer.Option("--to", help="ISO 8601 timestamp")] = None,
    lsn: Annotated[str | None, typer.Option("--lsn", help="a WAL position like 0/3000028")] = None,
    latest: Annotated[bool, typer.Option("--latest")] = False,
    port: Annotated[int | None, typer.Option("--port")] = None,
    keep_running: Annotated[bool, typer.Option("--keep-running")] = False,
) -> None:
    """Restore DB (full + diff + logs) into DIR, to TIME or the latest point; runs the restore flow."""
    if sum(map(bool, (to, lsn, latest))) != 1:
        error("give exactly one of --to TIME, --lsn LSN or --latest")
        raise typer.Exit(2)

    def run() -> dict[str, Any]:
        target = parse_time(to) if to else None
        open_engine(runtime(), db).plan_restore(target, position=lsn)  # fail fast, before a flow run
        use_prefect()
        from flows.restore import restore_point_in_time
        result: dict[str, Any] = restore_point_in_time(
            db=db, into=into, target=target, target_lsn=lsn, port=port,
            keep_running=keep_running, config=config_path())
        return result
    out = guard(run)
    for line in out.get("warnings") or []:  # a copy found missing or corrupt: read from the next tier
        err.print(f"warning: {line}")
    where = f"running; to connect: {out['connect']}" if out["running"] else "stopped"
    console.print(f"restored {db} to {out['reaches']} in {out['seconds']} s into {out['into']} ({where})")


@app.command()
def verify(
    db: str,
    backup_id: Annotated[str | None, typer.Option("--backup", help="default: the newest full")] = None,
    chain: Annotated[bool, typer.Option("--chain", help="the newest chain end to end")] = False,
) -> None:
    """Verification restore into a scratch cluster, with amcheck, visibility and SQL checks. Exit 1 on failure."""
    def run() -> dict[str, Any]:
        rt = runtime()
        rt.policy.database(db)
        use_prefect()
        from flows.verify import verify_backup_flow, verify_latest_chain
        state = (verify_latest_chain(db=db, config=config_path(), return_state=True) if chain else
                 verify_backup_flow(db=db, backup_id=backup_id, config=config_path(), return_state=True))
        if state.is_failed():
            raise VerificationError(state.message or "verification failed")
        result: dict[str, Any] = state.result()
        return result
    summary = guard(run)
    from rich.table import Table
    table = Table(title=f"verification of {summary['subject']}: PASS")
    for col in ("check", "result", "seconds", "detail"):
        table.add_column(col)
    for c in summary["checks"]:
        table.add_row(c["name"], "ok" if c["ok"] else "FAILED", str(c["seconds"]), c["detail"][:80])
    console.print(table)


@app.command()
def recover(
    db: str,
    before: Annotated[str, typer.Option("--before", help="ISO 8601: the last good moment")],
    into: Annotated[Path | None, typer.Option("--into")] = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
) -> None:
    """Corruption recovery: restore to BEFORE on a standby, validate, wait for approval, switch."""
    def run() -> dict[str, Any]:
        target = parse_time(before, "--before")
        engine = open_engine(runtime(), db)
        if not engine.features.standby_restore:
            raise ConfigError(f"corruption recovery switches clients to a restored server on this host, which "
                              f"{db!r}'s engine cannot provide; restore to a new database with `drkit restore "
                              f"{db} --into NAME --to TIME` and repoint clients yourself")
        engine.plan_restore(target)
        use_prefect()
        from flows.corruption import recover_from_corruption
        result: dict[str, Any] = recover_from_corruption(
            db=db, before=target, into=str(into.resolve()) if into else None, port=port, config=config_path())
        return result
    out = guard(run)
    who = f"(by {out['approver']}: {out['reason']})"
    if out["switched"]:
        console.print(f"recovered {db} to {out['before']}: the cluster runs at 127.0.0.1:{out['port']}, data "
                      f"directory {out['data_dir']}")
        console.print(f"clients switched {who}: the catalog's endpoint record and the Prefect Variable "
                      f"{out['variable']} name it; TCP clients: {out['tcp_clients']}")
    else:
        console.print(f"recovered {db} to {out['before']} into {out['data_dir']}; the cluster is stopped "
                      f"(it ran at 127.0.0.1:{out['port']})")
        console.print(f"clients not switched {who}: they still use the old primary")


