"""The daily catalog-check flow: a markdown report as an artifact, repairs by default, a failed run on findings."""

from __future__ import annotations

import pytest
from prefect.artifacts import Artifact

from drkit.engines import open_engine
from drkit.runtime import Runtime
from drkit.sandbox import Sandbox
from flows.catalog_check import catalog_check

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_the_flow_reports_repairs_and_fails_while_findings_remain(sandbox: Sandbox, rt: Runtime) -> None:
    cfg = str(sandbox.policy_path)
    full = open_engine(rt, "app").take_backup("full")
    result = catalog_check(config=cfg)
    assert result["clean"] is True
    report = Artifact.get("catalog-check")
    assert report is not None and "catalog check: clean" in str(report.data)

    local = rt.policy.tier_path("local")
    (local / "app" / full.id / "data.drk").unlink()
    state = catalog_check(config=cfg, return_state=True)
    assert state.is_failed()
    assert "lost" in str(state.message)
    report = Artifact.get("catalog-check")
    assert report is not None
    text = str(report.data)
    assert f"| missing | app | {full.id} | local |" in text and "done: local copy marked missing" in text
    assert "| lost | app |" in text and "needs a person" in text
    assert [c.status for c in rt.catalog.copies(full.id)] == ["missing"]
    assert catalog_check(config=cfg)["clean"] is True  # the loss is on record; nothing left to do
