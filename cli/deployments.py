"""``drkit deployments``: the policy's deployments as ``prefect.yaml`` (the same list ``drkit serve`` serves)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import app, config_path, guard


@app.command()
def deployments(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write this file (default: stdout)")] = None,
    pool: Annotated[str | None, typer.Option(
        "--pool", help="put every deployment on this one work pool (default: each on its site's pool)")] = None,
) -> None:
    """prefect.yaml for process work pools: every scheduled and on-demand deployment of the policy, each on its pool."""
    def run() -> str:
        from deployments.prefect_yaml import config_reference, render, write
        from deployments.serve import deployment_specs
        from drkit.config import load_policy

        policy_file = Path(config_path())
        ref = config_reference(policy_file)
        text = render(deployment_specs(load_policy(str(policy_file)), ref), ref, pool)
        if output is not None:
            write(text, output)
        return text
    text = guard(run)
    if output is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"wrote {output}")  # plain: a long path is not wrapped at 80 columns
