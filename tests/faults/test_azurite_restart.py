"""Azurite restarted (same port, same data) while `drkit retention apply` moves copies to blob: the sweep's
task retries and completes (or fails cleanly and a rerun completes), no copy is left pending or recorded
without its objects, and the DR site restores the newest chain from the container exactly."""

from __future__ import annotations

import pytest

from tests.support.fault_scenarios import azurite_restart, open_world
from tests.support.prefect_process import PrefectProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_azurite_restarted_during_a_retention_sweep(prefect: PrefectProcess) -> None:
    with open_world(prefect, blob="disk") as world:
        out = azurite_restart(world)
    assert out.ok, out.report()
