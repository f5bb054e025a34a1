"""The ``drkit`` command: operators' entry point (see :mod:`cli.common` for the output contract).

It sits above ``deployments``/``flows``: commands that change something run flows; read-only ones read the
catalog through ``drkit``. Each module registers one group of commands on :data:`cli.common.app`, in the order
``drkit --help`` lists them. ``from cli import app`` imports them all; ``import cli.entry`` (the ``drkit``
command) or ``cli.warm`` alone imports none, so a command the warm process runs costs this process no typer.
"""

from __future__ import annotations

TYPE_CHECKING = False  # (not typing's: importing typing costs the `drkit` process that only delegates)
if TYPE_CHECKING:
    from cli.common import app

_COMMANDS = ("backups", "restore", "drill", "catalog", "dr", "replica", "approvals", "status", "metrics",
             "deployments", "service", "server")  # the order of the commands in --help

__all__ = ["app"]


def __getattr__(name: str) -> object:
    if name != "app":
        raise AttributeError(f"module 'cli' has no attribute {name!r}")
    import importlib

    for module in _COMMANDS:
        importlib.import_module(f"cli.{module}")
    from cli.common import app
    globals()["app"] = app
    return app
