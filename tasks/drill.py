"""DR drill tasks: where the throwaway restore goes, removing it, and the report artifact.

The restore itself, its validation and the audit record reuse the restore, verification and common tasks.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from drkit.engines import open_engine
from drkit.plans import RestoreResult
from tasks.common import artifact_key, retry_transient, runtime


@task(name="drill-scratch-location", cache_policy=NO_CACHE)
def scratch_location(db: str, config: str | None) -> str:
    """A new place for the drill's restore (the engine decides: a directory under scratch_dir, a database name)."""
    rt = runtime(config)
    try:
        return open_engine(rt, db).scratch_location("drill")
    finally:
        rt.close()


@task(name="drill-discard-scratch", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15],
      retry_condition_fn=retry_transient)
def discard_scratch(db: str, location: str, result: RestoreResult | None, config: str | None) -> None:
    """Stop the drill's restored copy and delete it, whatever state the drill left it in."""
    rt = runtime(config)
    try:
        open_engine(rt, db).discard_restored(location, result)
    finally:
        rt.close()


@task(name="publish-drill-report", cache_policy=NO_CACHE)
def publish_drill_report(db: str, markdown: str, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=artifact_key(db, "dr-drill"), description=description)
