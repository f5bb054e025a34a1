"""Approvals: the runs waiting for a human, and the answer."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer
from rich.table import Table

from cli.common import (
    app,
    console,
    guard,
    print_json,
    state,
)
from drkit.config import load_policy
from drkit.errors import ConfigError

if TYPE_CHECKING:
    pass

@app.command()
def approvals(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Flow runs paused for a human decision."""
    def run() -> list[dict[str, Any]]:
        from flows.approvals import paused_runs
        return paused_runs()
    runs = guard(run)
    if as_json:
        print_json(runs)
        return
    table = Table(title="waiting for approval")
    for col in ("run id", "name", "since", "parameters"):
        table.add_column(col)
    for r in runs:
        table.add_row(r["id"], r["name"], str(r["since"]), json.dumps(r["parameters"], default=str)[:60])
    console.print(table)


@app.command()
def approve(
    run_id: str,
    as_name: Annotated[str, typer.Option("--as", help="your name, as on approvals.approvers")],
    reason: Annotated[str, typer.Option("--reason")],
    reject: Annotated[bool, typer.Option("--reject")] = False,
) -> None:
    """Answer a paused run (the same form as the Prefect UI's Resume)."""
    def run() -> None:
        try:
            UUID(run_id)
        except ValueError:
            raise ConfigError(f"run id {run_id!r} is not a flow run id (a UUID); `drkit approvals` lists the "
                              "runs waiting for an answer") from None
        approvers = load_policy(state["config"]).approvals.approvers
        if as_name not in approvers:
            raise ConfigError(f"{as_name!r} is not on approvals.approvers ({', '.join(approvers) or 'none'})")
        from flows.approvals import answer
        answer(run_id, approve=not reject, approver=as_name, reason=reason)
    guard(run)
    console.print(f"{'rejected' if reject else 'approved'} run {run_id} as {as_name}")


