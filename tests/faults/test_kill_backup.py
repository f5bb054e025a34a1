"""The backup process SIGKILLed at each step: streaming data (an external killer polling for the partial
write), writing the manifest, writing backup.json, labelling the blob, completing the record (just before
and just after), pruning the spool, copying to blob and deleting by retention (the test-only fault points
of drkit/faults.py, docs/faults.md).

Each kill leaves a catalog that tells the truth: `drkit catalog check` finds what the kill left (a stale
`running` row; orphans once past its grace period) and `--repair` makes it clean; a backup killed before
its record completed ends `failed` with its objects removed, one killed after stays `completed` with every
object; a killed retention sweep completes when rerun; the next backup goes through the lock at once; the
newest chain restores exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.conftest import assert_catalog_clean, assert_complete_copies_exist, assert_pitr_exact
from tests.support.fault_scenarios import TESTED_KILL_CASES, KillCase, World, kill_backup, open_world
from tests.support.prefect_process import PrefectProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def world(prefect: PrefectProcess) -> Iterator[World]:
    with open_world(prefect, blob="memory") as w:
        yield w


@pytest.mark.parametrize("case", TESTED_KILL_CASES, ids=[c.point for c in TESTED_KILL_CASES])
def test_a_backup_killed_at_each_step_leaves_a_true_catalog_and_an_exact_restore(world: World,
                                                                                  case: KillCase) -> None:
    out = kill_backup(world, case)
    assert out.ok, out.report()


def test_after_every_kill_the_deep_cli_check_is_clean_and_the_newest_chain_restores(world: World) -> None:
    assert_catalog_clean(world)
    assert_complete_copies_exist(world)
    assert_pitr_exact(world)
