"""The catalog check task: compare the catalog with every store, repair what can be repaired, audit."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from drkit.catalog_check import CheckReport, run_check
from tasks.common import retry_transient, runtime


@task(name="catalog-check", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=[60],
      retry_condition_fn=retry_transient)
def check_catalog(config: str | None, deep: bool, repair: bool) -> CheckReport:
    rt = runtime(config)
    try:
        return run_check(rt, deep=deep, repair=repair)
    finally:
        rt.close()
