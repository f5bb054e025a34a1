"""Long-running commands: serve and demo."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import (
    app,
    config_path,
    guard,
    policy_dir,
    use_prefect,
)

if TYPE_CHECKING:
    pass

# -- long-running ---------------------------------------------------------------------------------------


@app.command()
def serve() -> None:
    """Every deployment: backups on their schedules, runbooks on demand (needs PREFECT_API_URL)."""
    def run() -> None:
        use_prefect()
        from cli.prefect_server import LOCAL_DIR
        from cli.warm import start_warm
        start_warm(policy_dir() / LOCAL_DIR, with_parent=True)  # ends with this process
        from deployments.serve import serve_all
        serve_all(config_path())
    guard(run)


@app.command()
def demo(workdir: Annotated[Path, typer.Option("--workdir")] = Path("var/demo")) -> None:
    """Run the whole story once on a local sandbox (what `make demo` runs)."""
    from cli.demo import run_demo
    guard(lambda: run_demo(workdir))
