"""The archive command killed between its rename and its directory fsync, and the WAL spool's disk full
(a tmpfs mounted by the test): PostgreSQL retries archiving, no segment is lost, and the next log backup
ships every segment so the newest chain restores exactly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fault_scenarios import World, archive_killed_after_rename, open_world, spool_full
from tests.support.prefect_process import PrefectProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def world(prefect: PrefectProcess) -> Iterator[World]:
    with open_world(prefect, spool_tmpfs="72m", ballast_mib=4) as w:
        yield w


def test_archive_command_killed_between_rename_and_fsync(world: World) -> None:
    out = archive_killed_after_rename(world)
    assert out.ok, out.report()


def test_spool_disk_full(world: World) -> None:
    out = spool_full(world)
    assert out.ok, out.report()
