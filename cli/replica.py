"""The DR replica: ``drkit replica create DB`` builds the replica the policy's ``databases.DB.replica`` describes.

It runs the engine's operation directly, not as a Prefect flow: provisioning is a one-off administrative
step on the replica's host with no approval and no schedule, re-running it is how it recovers (a streaming
replica is left alone, a stopped one started), and it must work before any Prefect server is set up. A
change is recorded in the catalog's audit log (``replica.create``).
"""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import app, console, err, group, guard, print_json, runtime

if TYPE_CHECKING:
    from drkit.engines.base import ReplicaCreated, ReplicaLag

replica_app = group("The DR replica: build it from the primary.")
app.add_typer(replica_app, name="replica")


@replica_app.command("create")
def create(
    db: str,
    timeout: Annotated[float, typer.Option("--timeout", min=1,
                                                 help="seconds for the base backup and the start")] = 3600,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Build DB's DR replica from the primary (slot, base backup, standby settings), start it, wait until it
    streams. Idempotent; refuses to overwrite a directory that is not a replica of this primary."""
    from drkit.engines import dr_operations

    def run() -> ReplicaCreated:
        rt = runtime()
        rt.policy.database(db)  # an unknown name is bad input before anything else
        made = dr_operations(rt, db).create_replica(timeout=timeout)
        if made.outcome != "already streaming":
            rt.catalog.audit(actor=getpass.getuser(), action="replica.create", database=db, subject=made.location,
                             detail=made.as_dict())
        return made

    made = guard(run)
    from rich.text import Text
    for w in made.warnings:
        err.print(Text.assemble(("warning:", "yellow"), " ", w))
    if as_json:
        print_json({"database": db, **made.as_dict()})
        return
    where = f"{made.location} ({made.endpoint})"
    how = f"from {made.source}" + (f" through slot {made.slot}" if made.slot else "")
    if made.outcome == "already streaming":
        console.print(f"{db}: the replica in {where} already streams {how}; nothing changed", soft_wrap=True)
    else:
        verb = "created" if made.outcome == "created" else "started"
        console.print(f"{db}: replica {verb} in {where}, streaming {how} ({made.seconds:.1f} s)", soft_wrap=True)
    console.print(f"lag: {lag_text(made.lag)}", soft_wrap=True)


def lag_text(lag: ReplicaLag) -> str:
    size = "unknown" if lag.bytes is None else f"{lag.bytes} B"
    secs = "unknown" if lag.seconds is None else f"{lag.seconds:.1f} s"
    return f"{size}, {secs} ({lag.state})"
