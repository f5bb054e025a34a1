"""Prerequisites and backups: check, setup, backup, backups."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import (
    app,
    config_path,
    console,
    err,
    error,
    guard,
    human_bytes,
    print_json,
    runtime,
    span,
    use_prefect,
)
from drkit.engines import open_engine

if TYPE_CHECKING:
    pass

# -- prerequisites -------------------------------------------------------------------------------------


@app.command()
def check(db: str) -> None:
    """Prerequisites for backing up DB, each with its fix. Exit 1 if any is missing."""
    def run() -> bool:
        from rich.table import Table
        rt = runtime()
        items = open_engine(rt, db).check()
        table = Table(title=f"prerequisites of {db}")
        for col in ("", "check", "now", "needs", "fix"):
            table.add_column(col)
        for i in items:
            table.add_row("✔" if i.ok else "✘", i.name, i.current, i.expected, "" if i.ok else i.fix)
        console.print(table)
        return all(i.ok for i in items)
    if not guard(run):
        raise typer.Exit(1)


@app.command()
def setup(db: str) -> None:
    """Apply what can be applied (ALTER SYSTEM, WAL spool, archive_command) and say if a restart is needed."""
    def run() -> None:
        from rich.text import Text
        res = open_engine(runtime(), db).setup()
        for a in res.applied:
            console.print(f"applied: {a}")
        if not res.applied:
            console.print("nothing to change")
        if res.restart_needed:
            console.print(Text(f"restart PostgreSQL for {db} to finish (a setting is pending restart)", "yellow"))
        for i in res.remaining:
            console.print(Text.assemble(("still missing:", "red"), f" {i.name}: {i.fix}"))
    guard(run)

# -- backups --------------------------------------------------------------------------------------------


@app.command()
def backup(kind: Annotated[str, typer.Argument(help="full, diff or log")], db: str) -> None:
    """Run the backup flow for DB and print the backup id."""
    if kind not in ("full", "diff", "log"):
        error(f"backup kind must be full, diff or log, not {kind!r}")
        raise typer.Exit(2)

    started = datetime.now(UTC)

    def run() -> str | None:
        rt = runtime()
        rt.policy.database(db)
        _ = rt.key
        use_prefect()
        from flows.backup import BACKUP_FLOWS
        result: str | None = BACKUP_FLOWS[kind](db=db, config=config_path())
        return result
    bid = guard(run)
    if bid is None:
        skips = guard(lambda: [e for e in runtime().catalog.audit_events(database=db, action="backup.skipped")
                               if e.at >= started and e.subject == kind])
        err.print(f"{kind} backup of {db} skipped: {skips[-1].detail.get('reason')}" if skips
                  else "no new WAL since the last log backup; nothing shipped", markup=False)
        return
    console.print(bid)
    status = guard(lambda: runtime().catalog.get(bid).status)
    if status == "corrupt":
        error(f"backup {bid} failed its verification restore and is marked corrupt; "
               "see the verify report in the Prefect UI")
        raise typer.Exit(1)


@app.command()
def backups(db: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The catalog for DB, newest first."""
    def run() -> None:
        from rich.table import Table
        rt = runtime()
        rt.policy.database(db)
        rows = rt.catalog.list_backups(db)
        if as_json:
            print_json([{
                "id": b.id, "kind": b.kind, "status": b.status, "base": b.base_id, "timeline": b.timeline,
                "start_wal": b.start_wal, "end_wal": b.end_wal, "start_position": b.start_lsn,
                "end_position": b.end_lsn, "started_at": b.started_at,
                "finished_at": b.finished_at, "end_time": b.end_time, "raw_bytes": b.raw_bytes,
                "stored_bytes": b.stored_bytes, "sha256": b.sha256, "error": b.error,
                "copies": [{"tier": c.tier, "status": c.status} for c in rt.catalog.copies(b.id)],
            } for b in rows])
            return
        table = Table(title=f"backups of {db}")
        for col in ("id", "kind", "status", "covers", "covers until", "stored", "copies"):
            table.add_column(col)
        for b in rows:
            tiers = ",".join(c.tier for c in rt.catalog.copies(b.id) if c.status == "complete")
            table.add_row(b.id, b.kind, b.status, span(b, short=True),
                          b.end_time.isoformat(timespec="seconds") if b.end_time else (b.error or "")[:60],
                          human_bytes(b.stored_bytes), tiers)
        console.print(table)
    guard(run)


