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
    """Check that every copy the catalog counts on exists; repair what can be repaired; returns the report.

    Publishes the findings as the ``catalog-check`` markdown artifact; the run fails while findings remain.

    Args:
        config: The policy file. Filled in by the deployment; leave it.
        deep: Also read and hash every readable copy against its recorded SHA-256 (reads every byte;
            copies in the Archive tier are skipped). Off: check existence and sizes only.
        repair: Mark missing and corrupt copies, fail stale runs, remove orphans older than 1 h and rewrite
            missing descriptors, each audited. Off: report only.
    """
    report = check_catalog(config, deep, repair)
    create_markdown_artifact(markdown=report.markdown(), key="catalog-check", description=report.summary())
    raise_if_findings(report)
    return report.as_json()
