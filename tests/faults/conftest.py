"""The fault-injection suite's shared parts: one real Prefect server, and the assertions every fault ends with.

The scenarios themselves live in tests/support/fault_scenarios.py (``python -m bench.faults`` runs the same
functions N times); each module here builds the world its faults need, once per module where the faults
leave it usable. See docs/faults.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fault_scenarios import (
    Outcome,
    World,
    catalog_check,
    complete_copy_problems,
    restore_exact,
)
from tests.support.prefect_process import PrefectProcess


@pytest.fixture(scope="session")
def prefect() -> Iterator[PrefectProcess]:
    """A real `prefect server start` (stopped and restarted by the Prefect faults; same port and database)."""
    server = PrefectProcess()
    server.start()
    try:
        yield server
    finally:
        server.close()


def assert_catalog_clean(world: World, *, deep: bool = True) -> None:
    """`drkit catalog check --json` (the CLI) finds nothing."""
    report = catalog_check(world, deep=deep, via_cli=True)
    assert report["clean"], "catalog check is not clean:\n" + "\n".join(
        f"{f['kind']} {f['subject']}: {f['detail']}" for f in report["findings"])


def assert_complete_copies_exist(world: World) -> None:
    """Every copy the catalog calls complete has its objects (data with the recorded size, manifest, backup.json)."""
    problems = complete_copy_problems(world)
    assert not problems, "\n".join(problems)


def assert_pitr_exact(world: World) -> None:
    """A restore of the newest chain to its latest point holds exactly the marker rows written."""
    out = Outcome("restore")
    assert restore_exact(world, out), out.report()
