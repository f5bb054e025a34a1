"""The daily catalog check: does every copy the catalog counts on exist, and is there debris to clear?

Runs :func:`drkit.catalog_check.run_check` (repairing by default: marking copies missing or corrupt,
failing stale rows, removing orphans older than the grace period, all audited), publishes the findings
as a markdown artifact (``catalog-check``), and fails the run when findings remain, so the UI and any
automation on failed runs show it. ``drkit status`` shows the last result.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from drkit.catalog_check import raise_if_findings
from tasks.catalog_check import check_catalog


@flow(name="catalog-check")
def catalog_check(config: str | None = None, deep: bool = False, repair: bool = True) -> dict[str, Any]:
    """Check (``deep``: hash every readable copy) and ``repair``; returns the report as JSON."""
    report = check_catalog(config, deep, repair)
    create_markdown_artifact(markdown=report.markdown(), key="catalog-check", description=report.summary())
    raise_if_findings(report)
    return report.as_json()
