"""Both engines' chain models behind one interface give the same answers for equivalent histories.

One abstract history (tests/support/histories.py) is mapped to PostgreSQL's records (WAL segments, LSNs,
timelines) and to SQL Server's (msdb LSNs in ``meta``, recovery forks); restore plans, the latest
restorable point ``drkit status`` reports, and retention's actions must be the same, backup id for backup
id. The day 0/25/40/45 case of issue 10 is the plain regression test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drkit.catalog.records import BackupRecord, CopyRecord
from drkit.engines import chain_model
from drkit.engines.base import ChainModel
from drkit.engines.postgres.chain_model import POSTGRES_CHAIN
from drkit.engines.sqlserver.chain_model import SQLSERVER_CHAIN
from drkit.errors import RestorePlanError
from drkit.retention import Action, TierSpec, plan
from drkit.status import database_status
from tests.support.histories import DB, Backup, History, Policy, histories, policies, restore_targets

Engine = Literal["postgres", "sqlserver", "sqlserver-columns"]
ENGINES: tuple[Engine, ...] = ("postgres", "sqlserver", "sqlserver-columns")
MODELS: dict[Engine, ChainModel] = {"postgres": POSTGRES_CHAIN, "sqlserver": SQLSERVER_CHAIN,
                                    "sqlserver-columns": SQLSERVER_CHAIN}
TIER_ORDER = ("local", "blob", "archive")
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def records(h: History, engine: Engine) -> list[BackupRecord]:
    if engine == "postgres":
        return h.postgres()
    return h.sqlserver("columns" if engine == "sqlserver-columns" else "meta")


def retention_actions(h: History, engine: Engine, tiers: dict[str, TierSpec], now: datetime,
                      **options: Any) -> list[Action]:
    model = MODELS[engine]
    return plan(records(h, engine), h.copies(), h.hold_records(), tiers, now, chains=lambda db: model, **options)


def day(n: float) -> datetime:
    return datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=n)


# -- the regression case of issue 10 ------------------------------------------------------------------------


def day_0_25_40() -> History:
    """F1 on day 0, diff D1 on F1 on day 25, F2 on day 40; every copy in blob, everything verified."""
    blob = {"blob": "complete"}
    return History(backups=[
        Backup("F1", "full", "verified", day(0), 2, 2, 1, copies=blob),
        Backup("D2", "diff", "verified", day(25), 3, 3, 1, base_id="F1", copies=blob),
        Backup("F3", "full", "verified", day(40), 4, 4, 1, copies=blob),
    ], now=day(45))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_full_under_a_diff_inside_blobs_window_is_kept(engine: Engine) -> None:
    """Blob keeps 30 days; on day 45 targets from day 25 to 40 restore from F1 and D2: F1 stays."""
    h = day_0_25_40()
    actions = retention_actions(h, engine, {"local": TierSpec(7), "blob": TierSpec(30)}, day(45))
    f1 = [a for a in actions if a.backup_id == "F1"]
    assert [(a.kind, a.tier_from) for a in f1] == [("keep", "blob")]
    assert f1[0].reason == "kept: diff D2 on this full is inside blob's 30-day window"
    # and once day 25 leaves the window (day 40 starts F3's stretch), F1 and D2 go
    later = retention_actions(h, engine, {"local": TierSpec(7), "blob": TierSpec(30)}, day(55.5))
    assert {(a.kind, a.backup_id) for a in later} == {("delete", "F1"), ("delete", "D2")}


# -- the models behind one interface -----------------------------------------------------------------------


def test_each_engine_has_its_chain_model_and_positions() -> None:
    assert chain_model("postgres") is POSTGRES_CHAIN
    assert chain_model("sqlserver") is SQLSERVER_CHAIN
    assert POSTGRES_CHAIN.parse_position("16/B374D848") == 0x16_B374_D848
    assert POSTGRES_CHAIN.format_position(0x3000028) == "0/3000028"
    assert SQLSERVER_CHAIN.parse_position(" 34000000012300001\n") == 34000000012300001
    assert SQLSERVER_CHAIN.format_position(34000000012300001) == "34000000012300001"
    with pytest.raises(ValueError, match="SQL Server LSN"):
        SQLSERVER_CHAIN.parse_position("0/3000028")
    h = day_0_25_40()
    with pytest.raises(RestorePlanError, match="stop at a time"):
        SQLSERVER_CHAIN.plan_to_position(DB, h.sqlserver(), h.copies(), position=10**20, tier_order=TIER_ORDER)


def test_sqlserver_reads_positions_from_meta_or_from_the_records_columns() -> None:
    h = day_0_25_40()
    for backups in (h.sqlserver("meta"), h.sqlserver("columns")):
        got = SQLSERVER_CHAIN.plan_restore(DB, backups, h.copies(), target=day(25), now=day(45),
                                           tier_order=TIER_ORDER)
        assert [p.backup.id for p in got.pieces] == ["F1", "D2"]


# -- equivalent histories ------------------------------------------------------------------------------------


def restore_answer(model: ChainModel, backups: list[BackupRecord], copies: list[CopyRecord],
                   target: datetime | None, now: datetime) -> tuple[object, ...] | None:
    try:
        got = model.plan_restore(DB, backups, copies, target=target, now=now, tier_order=TIER_ORDER)
    except RestorePlanError:
        return None
    return (tuple(p.backup.id for p in got.pieces), tuple(p.tier for p in got.pieces), got.recovery, got.reaches,
            got.target_time)


@SETTINGS
@given(histories(max_now_hours=48))
def test_restore_plans_are_the_same_on_both_engines(h: History) -> None:
    copies = h.copies()
    for target in restore_targets(h):
        answers = {e: restore_answer(MODELS[e], records(h, e), copies, target, h.now) for e in ENGINES}
        assert answers["postgres"] == answers["sqlserver"] == answers["sqlserver-columns"], (target, answers)


@SETTINGS
@given(histories(max_now_hours=48), st.data())
def test_plans_for_one_backup_are_the_same_on_both_engines(h: History, data: st.DataObject) -> None:
    if not h.backups:
        return
    target = data.draw(st.sampled_from(h.backups)).id
    copies = h.copies()
    answers: dict[Engine, tuple[tuple[str, ...], datetime] | None] = {}
    for e in ENGINES:
        backups = records(h, e)
        me = next(b for b in backups if b.id == target)
        try:
            got = MODELS[e].plan_for_backup(me, backups, copies, tier_order=TIER_ORDER)
        except RestorePlanError:
            answers[e] = None
        else:
            # recovery differs by design: PostgreSQL recovers to the log's end time, SQL Server applies it whole
            answers[e] = (tuple(p.backup.id for p in got.pieces), got.reaches)
    assert answers["postgres"] == answers["sqlserver"] == answers["sqlserver-columns"], answers


@SETTINGS
@given(histories(max_now_hours=24 * 10))
def test_status_reports_the_same_restorable_point_on_both_engines(h: History) -> None:
    copies = h.copies()
    seen = []
    for e in ENGINES:
        got = database_status(DB, records(h, e), copies, now=h.now, tier_order=TIER_ORDER, chain=MODELS[e])
        seen.append((got.restorable_until, got.rpo_seconds, got.copies, got.stores,
                     {k: v.id if v else None for k, v in got.newest.items()}))
    assert seen[0] == seen[1] == seen[2], seen


@SETTINGS
@given(histories(), policies())
def test_retention_plans_the_same_actions_on_both_engines(h: History, p: Policy) -> None:
    tiers = {t: TierSpec(k) for t, k in p.keep_days.items()}
    got = {e: retention_actions(h, e, tiers, h.now, **p.options) for e in ENGINES}
    assert got["postgres"] == got["sqlserver"] == got["sqlserver-columns"]
