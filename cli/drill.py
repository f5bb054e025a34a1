"""DR drills: drill (restore the newest chain into scratch, measure RTO and RPO against the policy's targets)."""

from __future__ import annotations

from typing import Any

import typer

from cli.common import app, config_path, console, err, guard, runtime, use_prefect
from drkit.errors import RestoreError


@app.command()
def drill(db: str) -> None:
    """DR drill now: restore the newest chain of DB into scratch, validate, measure RTO/RPO vs the policy's
    targets; the scratch copy is removed. Exit 1 on a missed target or a failed drill."""
    def run() -> dict[str, Any]:
        runtime().policy.database(db)  # an unknown name is refused (exit 2) before a flow run
        use_prefect()
        from flows.drill import dr_drill
        state = dr_drill(db=db, config=config_path(), return_state=True)
        if state.is_failed():
            raise RestoreError(f"the DR drill of {db} failed: {state.message or 'see the run in the Prefect UI'}")
        result: dict[str, Any] = state.result()
        return result
    out = guard(run)
    from rich.table import Table

    from drkit.drill import fmt_seconds
    table = Table(title=f"DR drill of {db}: targets {'met' if out['met'] else 'MISSED'}")
    for col in ("figure", "measured", "target", ""):
        table.add_column(col)
    for name in ("rto", "rpo"):
        measured, target = out[f"{name}_seconds"], out[f"{name}_target_seconds"]
        table.add_row(name.upper(), fmt_seconds(measured), fmt_seconds(target),
                      "ok" if out[f"{name}_met"] else "MISSED")
    console.print(table)
    console.print(f"restored {', '.join(out['pieces'])} to {out['reached']}; writable after "
                  f"{fmt_seconds(out['writable_seconds'])}; the scratch copy {out['location']} was removed")
    if not out["met"]:
        for reason in out["reasons"]:
            err.print(f"missed: {reason}")
        raise typer.Exit(1)
