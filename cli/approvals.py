"""Approvals: the runs waiting for a human, the answer (judged by the flow), and the approvers' enrollment."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any
from uuid import UUID

import typer

from cli.common import (
    app,
    console,
    group,
    guard,
    print_json,
    state,
    use_prefect,
)
from drkit.errors import ConfigError, DrkitError


@app.command()
def approvals(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Flow runs paused for a human decision."""
    def run() -> list[dict[str, Any]]:
        from cli.prefect_server import paused_runs  # plain HTTP: no Prefect import for a listing
        return paused_runs()
    runs = guard(run)
    if as_json:
        print_json(runs)
        return
    _table("waiting for approval", ("run id", "name", "since", "parameters"),
           [(r["id"], r["name"], str(r["since"]), json.dumps(r["parameters"], default=str)[:60]) for r in runs])


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _read_code() -> str:
    """The code, typed at a hidden prompt on a terminal, else one line of standard input."""
    if sys.stdin is not None and sys.stdin.isatty():
        import getpass

        code = getpass.getpass("code from your authenticator app: ")
    else:
        code = sys.stdin.readline() if sys.stdin is not None else ""
    code = code.strip()
    if not code:
        raise ConfigError("no code: type the 6-digit code from your authenticator app at the prompt "
                          "(or pipe it on standard input)")
    return code


@app.command()
def approve(
    run_id: str,
    as_name: Annotated[str, typer.Option("--as", help="your name, as on approvals.approvers")],
    reason: Annotated[str, typer.Option("--reason")],
    reject: Annotated[bool, typer.Option("--reject")] = False,
    code: Annotated[str | None, typer.Option(
        "--code", help="the 6-digit code from your authenticator app (asked for, hidden, when left out)")] = None,
    wait: Annotated[float, typer.Option("--wait", help="seconds to wait for the run to judge the answer")] = 120,
) -> None:
    """Answer a paused run (the same form as the Prefect UI's Resume); the run judges and audits it."""
    def run() -> dict[str, str]:
        try:
            UUID(run_id)
        except ValueError:
            raise ConfigError(f"run id {run_id!r} is not a flow run id (a UUID); `drkit approvals` lists the "
                              "runs waiting for an answer") from None
        use_prefect()
        from flows.approvals import answer, outcome, pause_of

        pause_of(run_id)  # an unknown or finished run fails before the code is asked for
        given = code if code is not None else _read_code()
        pause = answer(run_id, approve=not reject, approver=as_name, reason=reason, code=given)
        return outcome(run_id, pause, timeout=wait)

    result = guard(run)
    verdict, detail = result["verdict"], result["detail"]
    if verdict == "refused":
        console.print(f"refused: {detail}", soft_wrap=True)
        raise typer.Exit(1)
    if verdict == "ended":
        console.print(f"not answered: {detail}", soft_wrap=True)
        raise typer.Exit(1)
    if verdict == "recorded":
        console.print(f"recorded: {as_name} approved run {run_id}; {detail}", soft_wrap=True)
        return
    console.print(f"{verdict} run {run_id} as {as_name}", soft_wrap=True)


# -- approvers: who can prove they are who they type --------------------------------------------------

approvers_app = group("Approvers' authenticator-app enrollment (TOTP).")
app.add_typer(approvers_app, name="approvers")


def _listed(name: str) -> None:
    from drkit.config import load_policy

    listed = load_policy(state["config"]).approvals.approvers
    if name not in listed:
        raise ConfigError(f"{name!r} is not on approvals.approvers ({', '.join(listed) or 'none'}); add them "
                          "to the policy file first")


@approvers_app.command("enroll")
def approvers_enroll(
    name: str,
    replace: Annotated[bool, typer.Option("--replace", help="give an enrolled approver a new secret")] = False,
) -> None:
    """Create NAME's secret (a Prefect Secret block) and show it once, for their authenticator app."""
    def run() -> str:
        _listed(name)
        use_prefect()
        from tasks.approvers import audit_enrollment, block_name, enroll, enrollment

        renewed = enrollment(name).since is not None
        secret = enroll(name, replace=replace)
        audit_enrollment("approver.replaced" if renewed else "approver.enrolled", name, state["config"],
                         {"block": block_name(name)})
        return secret

    secret = guard(run)
    from drkit.totp import provisioning_uri

    # Plain lines, never wrapped: the URI is copied (or turned into a QR code) as it is.
    sys.stdout.write(f"enrolled {name}. Add this to their authenticator app now (it is shown only this once):\n"
                     f"  {provisioning_uri(secret, name)}\n"
                     f"  or type the key: {secret}  (TOTP, SHA1, 6 digits, 30 s)\n")


@approvers_app.command("list")
def approvers_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The approvers on the policy and whether each is enrolled (no secrets)."""
    def run() -> list[dict[str, Any]]:
        from drkit.config import load_policy
        use_prefect()
        from tasks.approvers import enrollment

        rows = []
        for name in load_policy(state["config"]).approvals.approvers:
            e = enrollment(name)
            rows.append({"approver": name, "enrolled": e.since is not None,
                         "since": e.since.isoformat() if e.since else None, "block": e.block})
        return rows

    rows = guard(run)
    if as_json:
        print_json(rows)
        return
    _table("approvers", ("approver", "enrolled", "since", "secret block"),
           [(r["approver"], "yes" if r["enrolled"] else f"no: drkit approvers enroll {r['approver']}",
             r["since"] or "", r["block"]) for r in rows])


@approvers_app.command("remove")
def approvers_remove(name: str) -> None:
    """Delete NAME's secret: their codes stop working (they can be enrolled again)."""
    def run() -> None:
        use_prefect()
        from tasks.approvers import audit_enrollment, block_name, remove

        if not remove(name):
            raise DrkitError(f"{name} is not enrolled; nothing was removed")
        audit_enrollment("approver.removed", name, state["config"], {"block": block_name(name)})

    guard(run)
    console.print(f"removed {name}'s secret; `drkit approvers enroll {name}` enrolls them again")
