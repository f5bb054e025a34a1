"""Approvals waiting, as `drkit serve`'s listener counts them: runs in a Paused or Suspended state in a real
Prefect API (deployments.metrics_sources.paused_since), turned into drkit_approvals_waiting and the oldest wait."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
from prefect import flow, get_client
from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Paused, Suspended
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from deployments.metrics_sources import paused_since
from drkit.config import parse_policy
from drkit.metrics import metrics_registry
from drkit.runtime import Runtime

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@flow(name="drkit-test-waits")
def waits() -> None:
    """Never run: its runs are put in a paused state directly."""


@pytest.fixture
def paused() -> Iterator[list[UUID]]:
    runs: list[UUID] = []
    with get_client(sync_client=True) as client:
        states: list[State[None]] = [Paused(timeout_seconds=600), Suspended(timeout_seconds=600)]
        for state in states:
            run = client.create_flow_run(waits)
            client.set_flow_run_state(run.id, state, force=True)
            runs.append(run.id)
        try:
            yield runs
        finally:
            for run_id in runs:
                client.set_flow_run_state(run_id, Cancelled(), force=True)


def test_paused_and_suspended_runs_are_approvals_waiting(paused: list[UUID], tmp_path: Path) -> None:
    with get_client(sync_client=True) as client:
        ours = [client.read_flow_run(run_id).state for run_id in paused]
    assert [s.name if s else None for s in ours] == ["Paused", "Suspended"]
    since = paused_since()
    assert all(s is not None and s.timestamp in since for s in ours)

    rt = Runtime(parse_policy({"catalog": f"sqlite:///{tmp_path / 'catalog.db'}"}, base_dir=tmp_path))
    registry, collector = metrics_registry(rt, approvals=paused_since)
    before = datetime.now(UTC)
    try:
        text = generate_latest(registry).decode()
    finally:
        collector.close()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["drkit_approvals_waiting"] >= 2  # ours, and any another test left waiting
    oldest_of_ours = min(s.timestamp for s in ours if s is not None)
    assert samples["drkit_approval_oldest_wait_seconds"] >= (before - oldest_of_ours).total_seconds() > 0
