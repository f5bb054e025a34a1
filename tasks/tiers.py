"""Tier tasks: retention actions (I/O, retried), archive rehydration (a polling task that outlives workers)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State

from drkit.engines import chain_for
from drkit.plans import RestorePlan
from drkit.retention import Action
from drkit.tiers import moves as core
from tasks.common import retry_transient, runtime


@task(name="retention-plan", cache_policy=NO_CACHE)
def plan_retention(now: datetime, config: str | None) -> list[Action]:
    rt = runtime(config)
    try:
        return core.plan_retention(rt, now, chains=lambda db: chain_for(rt, db))
    finally:
        rt.close()


@task(name="retention-action", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[5, 30, 120],
      retry_condition_fn=retry_transient, task_run_name="{action.kind}-{action.backup_id}")
def apply_action(action: Action, config: str | None) -> str:
    rt = runtime(config)
    try:
        return core.apply_action(rt, action)
    finally:
        rt.close()


@task(name="start-rehydration", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[5, 30, 120],
      retry_condition_fn=retry_transient)
def start_rehydration(plan: RestorePlan, config: str | None) -> list[tuple[str, str]]:
    """Ask Azure to bring every archived piece back online; returns the (tier, key) pairs that were archived."""
    log = get_run_logger()
    rt = runtime(config)
    try:
        archived: list[tuple[str, str]] = []
        for piece in plan.pieces:
            for key in core.archived_keys(rt, piece.tier, [piece.store_key]):
                log.warning(core.start_rehydration(rt, piece.tier, key))
                archived.append((piece.tier, key))
        return archived
    finally:
        rt.close()


class StillArchived(Exception):
    """Raised by the polling task so Prefect retries it later."""


def _poll_condition(task: object, task_run: object, state: State[Any]) -> bool:
    try:
        state.result()
    except StillArchived:
        return True
    except Exception:
        return False
    return False


@task(name="wait-rehydrated", cache_policy=NO_CACHE, retries=96, retry_delay_seconds=900,
      retry_condition_fn=_poll_condition)
def wait_rehydrated(archived: list[tuple[str, str]], config: str | None) -> None:
    """Poll (a retry every 15 min, up to 24 h): a worker restart only costs a poll, never the rehydration."""
    rt = runtime(config)
    try:
        pending = [key for tier, key in archived if not core.rehydrated(rt, tier, key)]
    finally:
        rt.close()
    if pending:
        raise StillArchived(f"{len(pending)} piece(s) still rehydrating: {', '.join(pending[:3])}")


@task(name="re-archive", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[5, 30, 120])
def rearchive(archived: list[tuple[str, str]], config: str | None) -> None:
    rt = runtime(config)
    try:
        for tier, key in archived:
            core.rearchive(rt, tier, key)
    finally:
        rt.close()
