"""The ``drkit`` command: operators' entry point (see :mod:`cli.common` for the output contract).

It sits above ``deployments``/``flows``: commands that change something run flows; read-only ones read the
catalog through ``drkit``. Each module registers one group of commands on :data:`cli.common.app`, in the order
``drkit --help`` lists them.
"""
# ruff: noqa: I001, F401  (the order of these imports is the order of the commands in --help)

import cli.backups
import cli.restore
import cli.drill
import cli.catalog
import cli.dr
import cli.replica
import cli.approvals
import cli.status
import cli.metrics
import cli.deployments
import cli.service
import cli.server
from cli.common import app

__all__ = ["app"]
