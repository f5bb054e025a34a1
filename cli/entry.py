"""The ``drkit`` command's entry point (``python -m cli`` too): a command the warm process runs (see
:mod:`cli.warm`) is sent there when it runs, before this process imports typer or any command module;
otherwise, or for any other command, the command runs here (:data:`cli.app`)."""

from __future__ import annotations

import sys


def main() -> None:
    from cli.warm import delegate

    status = delegate(sys.argv[1:])
    if status is not None:
        sys.exit(status)
    from cli import app

    app()
