"""The connection to the blob store (Azurite behind tests/support/tcpproxy.py) cut mid-upload and mid-download.

Upload (a retention copy to blob): the copy is retried and completes once the network is back; nothing
half-uploaded is ever visible or recorded. Download (a restore at the DR site, from the container alone):
the restore fails with one line (or reads again), the copy is *not* marked damaged (a network error
proves nothing about it), and a rerun restores exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fault_scenarios import World, cut_download, cut_upload, open_world
from tests.support.prefect_process import PrefectProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def world(prefect: PrefectProcess) -> Iterator[World]:
    with open_world(prefect, blob="proxy") as w:
        yield w


def test_connection_cut_mid_upload(world: World) -> None:
    out = cut_upload(world)
    assert out.ok, out.report()


def test_connection_cut_mid_download(world: World) -> None:
    out = cut_download(world)
    assert out.ok, out.report()
