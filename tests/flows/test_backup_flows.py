"""Backup and restore flows through a real Prefect API, against a real PostgreSQL."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client

from drkit.runtime import Runtime
from drkit.sandbox import Sandbox
from flows.backup import differential_backup, full_backup, log_backup_flow
from flows.restore import restore_point_in_time
from tasks.common import lock_name
from tests.support.pgdata import connect, table_hashes

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_full_diff_log_flows_record_backups_and_publish_artifacts(
    sandbox: Sandbox, rt: Runtime, scratch: Path
) -> None:
    cfg = str(sandbox.policy_path)
    with connect(sandbox.dsn) as conn:
        conn.execute("CREATE TABLE f(id int PRIMARY KEY)")
        conn.execute("INSERT INTO f SELECT generate_series(1, 1000)")
    full_id = full_backup(db="app", config=cfg)
    with connect(sandbox.dsn) as conn:
        conn.execute("INSERT INTO f SELECT generate_series(1001, 2000)")
    diff_id = differential_backup(db="app", config=cfg)
    with connect(sandbox.dsn) as conn:
        conn.execute("INSERT INTO f SELECT generate_series(2001, 3000)")
    log_id = log_backup_flow(db="app", config=cfg)
    assert log_id is not None
    kinds = {b.id: (b.kind, b.status) for b in rt.catalog.list_backups("app")}
    assert kinds[full_id] == ("full", "verified")  # verify.after defaults to [full]
    assert kinds[diff_id] == ("diff", "completed")
    assert kinds[log_id] == ("log", "completed")

    table = Artifact.get("app-diff-backup")
    assert table is not None
    rows = json.loads(str(table.data))
    assert rows[0]["backup"] == diff_id and rows[0]["pages_changed"] > 0
    progress = Artifact.get("app-full-backup-progress")
    assert progress is not None and progress.type == "progress" and float(str(progress.data)) == 100.0

    expected = table_hashes(sandbox.dsn)
    out = restore_point_in_time(db="app", into=str(scratch / "r"), config=cfg, keep_running=True)
    from drkit.engines.postgres.pgctl import LocalCluster
    data_dir = Path(str(out["data_dir"]))
    cluster = LocalCluster(data_dir, int(str(out["port"])), rt.bin_dir("app"), rt.os_user("app"), socket_dir=data_dir)
    try:
        assert table_hashes(cluster.dsn()) == expected
    finally:
        cluster.stop()
    report = Artifact.get("app-restore-report")
    assert report is not None and full_id in str(report.data) and log_id in str(report.data)
    assert "(running; to connect:" in str(report.data)

    out = restore_point_in_time(db="app", into=str(scratch / "r2"), config=cfg)  # not kept: stopped at the end
    assert out["running"] is False
    report = Artifact.get("app-restore-report")
    assert report is not None and str(scratch / "r2") in str(report.data)
    assert "(stopped after the checks)" in str(report.data) and "to connect" not in str(report.data)


def test_two_backups_of_one_database_never_overlap(sandbox: Sandbox, rt: Runtime) -> None:
    cfg = str(sandbox.policy_path)
    results: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(full_backup(db="app", config=cfg))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2
    runs = sorted((b for b in rt.catalog.list_backups("app") if b.id in results), key=lambda b: b.started_at)
    assert runs[0].finished_at is not None and runs[0].finished_at <= runs[1].started_at
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(lock_name("app"))
    assert limit.limit == 1
