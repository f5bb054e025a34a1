"""Two backups of one database started at once (one waits for the lock, or is refused; never both at once),
and a retention sweep moving copies to blob while a differential backup reads its full."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fault_scenarios import World, open_world, sweep_during_backup, two_backups_at_once
from tests.support.prefect_process import PrefectProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def world(prefect: PrefectProcess) -> Iterator[World]:
    with open_world(prefect, blob="memory") as w:
        yield w


def test_two_backups_of_one_database_at_once(world: World) -> None:
    out = two_backups_at_once(world)
    assert out.ok, out.report()


def test_retention_sweep_concurrent_with_a_backup(world: World) -> None:
    out = sweep_during_backup(world)
    assert out.ok, out.report()
