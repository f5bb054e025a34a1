"""Small steps several runbooks share."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from drkit.engines.pgctl import LocalCluster
from tasks.common import runtime


@task(name="stop-cluster", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def stop_cluster(db: str, data_dir: str, port: int, config: str | None) -> None:
    rt = runtime(config)
    LocalCluster(Path(data_dir), port, rt.bin_dir(db), rt.os_user(db)).stop()
