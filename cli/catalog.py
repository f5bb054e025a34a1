"""Retention, legal holds and the catalog itself."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import (
    app,
    config_path,
    console,
    group,
    guard,
    parse_time,
    print_json,
    runtime,
    use_prefect,
)
from drkit.engines import chain_for

if TYPE_CHECKING:
    from drkit.catalog_check import CheckReport

retention_app = group("Tiered retention: plan and apply.")
hold_app = group("Legal holds: a held backup is never deleted.")
catalog_app = group("The catalog itself.")
app.add_typer(retention_app, name="retention")
app.add_typer(hold_app, name="hold")
app.add_typer(catalog_app, name="catalog")


@retention_app.command("plan")
def retention_plan(now: Annotated[str | None, typer.Option("--now", help="rehearse at this time")] = None,
                   as_json: Annotated[bool, typer.Option("--json")] = False,
                   all_keeps: Annotated[bool, typer.Option("--all", help="list routine keeps too")] = False) -> None:
    """The actions retention would take now (or at --now), each with its reason. Changes nothing."""
    from drkit.tiers.moves import plan_retention

    def run() -> list[Any]:
        rt = runtime()
        return plan_retention(rt, parse_time(now, "--now") if now else datetime.now(UTC),
                              chains=lambda db: chain_for(rt, db),
                              routine_keeps=all_keeps)
    actions = guard(run)
    if as_json:
        print_json([{"action": a.kind, "backup": a.backup_id, "database": a.database, "from": a.tier_from,
                      "to": a.tier_to, "reason": a.reason} for a in actions])
        return
    from rich.table import Table
    table = Table(title=f"retention plan at {now or 'now'}")
    for col in ("action", "backup", "from", "to", "reason"):
        table.add_column(col)
    for a in actions:
        table.add_row(a.kind, a.backup_id, a.tier_from, a.tier_to or "", a.reason)
    console.print(table)


@retention_app.command("apply")
def retention_apply(now: Annotated[str | None, typer.Option("--now", help="rehearse at this time")] = None) -> None:
    """Run the retention sweep flow (copies, moves, deletes)."""
    def run() -> list[dict[str, str]]:
        use_prefect()
        from flows.retention import retention_sweep
        rows: list[dict[str, str]] = retention_sweep(config=config_path(),
                                                          now=parse_time(now, "--now") if now else None)
        return rows
    rows = guard(run)
    for r in rows:
        console.print(f"{r['action']:6} {r['backup']}: {r['done']} ({r['reason']})")
    console.print(f"{len(rows)} change(s)")


@hold_app.command("add")
def hold_add(backup_id: str, reason: Annotated[str, typer.Option("--reason")],
             actor: Annotated[str, typer.Option("--as", help="who places it (audited)")] = "operator") -> None:
    """Place a legal hold: the backup (and what its restore needs) is never deleted while held."""
    guard(lambda: runtime().catalog.add_hold(backup_id, reason=reason, actor=actor))
    console.print(f"hold placed on {backup_id}")


@hold_app.command("remove")
def hold_remove(backup_id: str, reason: Annotated[str, typer.Option("--reason")],
                actor: Annotated[str, typer.Option("--as", help="who lifts it (audited)")] = "operator") -> None:
    """Lift a legal hold (the history stays in the catalog)."""
    guard(lambda: runtime().catalog.remove_hold(backup_id, actor=actor, reason=reason))
    console.print(f"hold on {backup_id} removed")


@catalog_app.command("rebuild")
def catalog_rebuild(from_tier: Annotated[str, typer.Option("--from", help="the tier to read")]) -> None:
    """Rebuild the catalog (the policy's `catalog:` URL) from one store's backup descriptors alone.

    Descriptors that fail authentication are refused, one line each on stderr, and the exit status is 1.
    """
    def run() -> dict[str, int]:
        from drkit.tiers.rebuild import rebuild_catalog
        return rebuild_catalog(runtime(), from_tier, report=lambda line: sys.stderr.write(f"refused: {line}\n"))
    counts = guard(run)
    console.print(f"imported {counts['imported']}, already present {counts['present']}, "
                  f"skipped {counts['skipped']} (descriptor without data), refused {counts['refused']}")
    if counts["refused"]:
        raise typer.Exit(1)


@catalog_app.command("check")
def catalog_check(
    deep: Annotated[bool, typer.Option("--deep", help="also hash every readable copy (reads all of them)")] = False,
    repair: Annotated[bool, typer.Option("--repair", help="mark, fail and remove what the findings say")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Does every copy the catalog counts on exist? Stale runs, orphans, lost restore points. Exit 1 on findings."""
    def run() -> CheckReport:
        from drkit.catalog_check import run_check
        return run_check(runtime(), deep=deep, repair=repair)
    report = guard(run)
    _print_check(report, as_json)
    if not report.clean:
        raise typer.Exit(1)


def _print_check(report: CheckReport, as_json: bool) -> None:
    from rich.table import Table
    from rich.text import Text
    if as_json:
        print_json(report.as_json())
        return
    if report.outcomes:
        table = Table(title="catalog check")
        for col in ("finding", "database", "subject", "tier", "detail", "repair"):
            table.add_column(col)
        for o in report.outcomes:
            f = o.finding
            fix = f.repair.describe() if f.repair else "needs a person"
            if report.repair and f.repair:
                fix = ("done: " if o.repaired else "not done: ") + o.note
            table.add_row(*(Text(str(c)) for c in (f.kind, f.database or "", f.subject, f.tier or "", f.detail, fix)))
        console.print(table)
    console.print(Text(report.summary()))


