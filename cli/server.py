"""The local Prefect server drkit starts on demand (see :mod:`cli.prefect_server`): status, start, stop."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import app, console, err, group, guard, policy_dir, print_json

server_app = group("The local Prefect server flow commands start when PREFECT_API_URL is not set.")
app.add_typer(server_app, name="server")


@server_app.command("status")
def server_status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Which Prefect API commands use, and whether the local server runs."""
    from cli.prefect_server import LOCAL_DIR, configured_api_url, healthy, recorded
    from cli.warm import running_pid

    def run() -> dict[str, object]:
        home = policy_dir() / LOCAL_DIR
        known = recorded(home)
        return {"configured_api_url": configured_api_url(), "local_dir": str(home),
                "local_url": known.url if known else None, "local_pid": known.pid if known else None,
                "local_running": bool(known and healthy(known.url)), "warm_pid": running_pid(home)}
    out = guard(run)
    if as_json:
        print_json(out)
        return
    if out["configured_api_url"]:
        console.print(f"commands use PREFECT_API_URL={out['configured_api_url']}")
    if out["local_running"]:
        console.print(f"local server running at {str(out['local_url']).removesuffix('/api')} "
                      f"(pid {out['local_pid']}, data in {out['local_dir']})")
    else:
        console.print(f"no local server running (it starts with the first flow command; data in {out['local_dir']})")
    if out["warm_pid"]:
        console.print(f"warm drkit process running (pid {out['warm_pid']})")


@server_app.command("start")
def server_start() -> None:
    """Start the local server now (flow commands otherwise start it when they first need it)."""
    from cli.prefect_server import LOCAL_DIR, ensure_local_server
    from cli.warm import start_warm

    server = guard(lambda: ensure_local_server(policy_dir() / LOCAL_DIR, announce=lambda line: err.print(line)))
    console.print(f"local server {'started' if server.started else 'already running'} at "
                  f"{server.url.removesuffix('/api')}")
    warm = guard(lambda: start_warm(policy_dir() / LOCAL_DIR))
    console.print(f"warm drkit process pid {warm} (commands skip importing Prefect; `drkit server stop` stops it)")


@server_app.command("stop")
def server_stop() -> None:
    """Stop the local server (its runs and artifacts stay in its directory for the next start)."""
    from cli.prefect_server import LOCAL_DIR, stop_local_server
    from cli.warm import stop_warm

    warm = guard(lambda: stop_warm(policy_dir() / LOCAL_DIR))
    if warm is not None:
        console.print(f"stopped the warm drkit process (pid {warm})")
    stopped = guard(lambda: stop_local_server(policy_dir() / LOCAL_DIR))
    console.print("no local server was running" if stopped is None else
                  f"stopped the local server at {stopped.url.removesuffix('/api')}")
