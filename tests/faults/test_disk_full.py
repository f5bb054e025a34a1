"""The local tier's filesystem full (an 8 MiB tmpfs mounted by the test): a full backup that does not fit fails
cleanly (one error line, the row failed, no partial file); once space is back the next log backup ships the
WAL since, and the newest chain restores exactly. (`python -m bench.faults` also fills it with a log backup.)"""

from __future__ import annotations

import pytest

from tests.support.fault_scenarios import local_tier_full, open_world
from tests.support.prefect_process import PrefectProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_local_tier_full(prefect: PrefectProcess) -> None:
    with open_world(prefect, local_tmpfs="8m", ballast_mib=0) as world:
        out = local_tier_full(world, ("full",))
    assert out.ok, out.report()
