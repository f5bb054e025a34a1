"""The fast retention planner (drkit.retention) and the reference one (drkit.retention_reference) agree.

Same actions (kind, backup, tiers, in the same order; the reasons are worded differently) over generated
histories mapped to both engines' records, under generated policies, at the history's ``now`` and later
(as the windows slide past the backups). tests/unit/test_retention.py and test_chain_mssql.py run the
same comparison over their own generators (PostgreSQL timelines; SQL Server forks and copy-only backups).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drkit import retention, retention_reference
from drkit.catalog.records import BackupRecord, CopyRecord, HoldRecord
from drkit.engines.base import ChainModel
from drkit.engines.postgres.chain_model import POSTGRES_CHAIN
from drkit.engines.sqlserver.chain_model import SQLSERVER_CHAIN
from drkit.retention import Action, TierSpec
from tests.support.histories import Backup, History, Policy, histories, hours, policies

MODELS: dict[str, ChainModel] = {"postgres": POSTGRES_CHAIN, "sqlserver": SQLSERVER_CHAIN}


def both(backups: Sequence[BackupRecord], copies: Sequence[CopyRecord], holds: Sequence[HoldRecord],
         keep_days: dict[str, int], now: datetime, model: ChainModel,
         **options: Any) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(fast, reference) actions as (kind, backup, from, to)."""
    tiers = {t: TierSpec(k) for t, k in keep_days.items()}

    def key(actions: list[Action]) -> list[tuple[str, ...]]:
        return [(a.kind, a.backup_id, a.tier_from, a.tier_to or "") for a in actions]

    fast = retention.plan(backups, copies, holds, tiers, now, chains=lambda db: model, **options)
    ref = retention_reference.plan(backups, copies, holds, tiers, now, chains=lambda db: model, **options)
    assert all(a.reason for a in ref)
    return key(fast), key(ref)


@pytest.mark.parametrize("engine", sorted(MODELS))
def test_reference_keeps_a_full_under_a_diff_inside_blobs_window(engine: str) -> None:
    blob = {"blob": "complete"}
    h = History(backups=[
        Backup("F1", "full", "verified", hours(0), 2, 2, 1, copies=blob),
        Backup("D2", "diff", "verified", hours(25 * 24), 3, 3, 1, base_id="F1", copies=blob),
        Backup("F3", "full", "verified", hours(40 * 24), 4, 4, 1, copies=blob),
    ])
    backups = h.postgres() if engine == "postgres" else h.sqlserver()
    actions = retention_reference.plan(backups, h.copies(), [], {"local": TierSpec(7), "blob": TierSpec(30)},
                                       hours(45 * 24), chains=lambda db: MODELS[engine])
    assert [(a.kind, a.backup_id, a.tier_from) for a in actions] == [("keep", "F1", "blob")]  # D2: 20 days old


def test_reference_validates_like_the_fast_planner() -> None:
    chains = lambda db: POSTGRES_CHAIN  # noqa: E731
    with pytest.raises(ValueError, match="first"):
        retention_reference.plan([], [], [], {"archive": TierSpec(7), "local": TierSpec(7)}, hours(0), chains=chains)
    with pytest.raises(ValueError, match="negative"):
        retention_reference.plan([], [], [], {"local": TierSpec(-1)}, hours(0), chains=chains)
    assert retention_reference.plan([], [], [], {}, hours(0), chains=chains) == []


def applied(h: History, actions: Sequence[Action]) -> History:
    """The history with the actions carried out on its copies."""
    copies = {b.id: dict(b.copies) for b in h.backups}
    for a in actions:
        if a.kind in ("copy", "move"):
            assert a.tier_to is not None
            copies[a.backup_id][a.tier_to] = "complete"
        if a.kind in ("move", "delete"):
            copies[a.backup_id][a.tier_from] = "deleted"
    return h.with_copies(copies)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(max_gap_hours=24 * 3, max_now_hours=24 * 5), policies(), st.sampled_from(sorted(MODELS)),
       st.lists(st.integers(0, 12), min_size=1, max_size=8))
def test_fast_and_reference_planners_give_the_same_actions(h: History, p: Policy, engine: str,
                                                           steps: list[int]) -> None:
    """Sweeps some days apart, each applying the fast planner's actions: copies age through the tiers."""
    now = h.now
    for days in steps:
        now += timedelta(days=days)
        backups = h.postgres() if engine == "postgres" else h.sqlserver()
        fast, ref = both(backups, h.copies(), h.hold_records(), dict(p.keep_days), now, MODELS[engine],
                         **p.options)
        assert fast == ref, f"at {now}"
        h = applied(h, retention.plan(backups, h.copies(), h.hold_records(),
                                      {t: TierSpec(k) for t, k in p.keep_days.items()}, now,
                                      chains=lambda db: MODELS[engine], **p.options))
