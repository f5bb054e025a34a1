"""Full, block-level differential and log backups of a real PostgreSQL 15, restored and compared."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from drkit.engines import open_engine
from drkit.engines.postgres.restore import restore, restored_dsn
from drkit.runtime import Runtime
from drkit.sandbox import Sandbox
from tests.support.pgdata import connect, table_hashes, visibility_problems

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _write(sb: Sandbox, sql: str) -> None:
    """Run each '; '-separated statement on its own (VACUUM cannot share a transaction)."""
    with connect(sb.dsn) as conn:
        for statement in sql.split("; "):
            conn.execute(statement)


def _restore_and_hash(rt: Runtime, scratch: Path, name: str, target: datetime | None) -> dict[str, tuple[int, str]]:
    res = restore(rt, rt.policy.databases and "app", into=scratch / name, target=target, keep_running=True)
    try:
        return table_hashes(restored_dsn(res))
    finally:
        from drkit.engines.postgres.pgctl import LocalCluster
        LocalCluster(res.data_dir, res.port, rt.bin_dir("app"), rt.os_user("app")).stop()


def test_full_diff_and_logs_restore_exactly_what_was_written(sandbox: Sandbox, rt: Runtime, scratch: Path) -> None:
    _write(sandbox, "CREATE TABLE items(id int PRIMARY KEY, body text); "
                    "INSERT INTO items SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 50000) g")
    full = open_engine(rt, "app").take_backup("full")
    after_full = table_hashes(sandbox.dsn)

    _write(sandbox, "UPDATE items SET body = 'changed' WHERE id % 97 = 0; DELETE FROM items WHERE id > 49000; "
                    "CREATE TABLE extra AS SELECT g AS n FROM generate_series(1, 1000) g")
    diff = open_engine(rt, "app").take_backup("diff")
    assert diff.base_id == full.id
    after_diff = table_hashes(sandbox.dsn)

    _write(sandbox, "INSERT INTO items SELECT g, 'late' FROM generate_series(60000, 61000) g; DROP TABLE extra")
    log = open_engine(rt, "app").take_backup("log")
    assert log is not None and log.start_wal is not None
    after_log = table_hashes(sandbox.dsn)

    assert _restore_and_hash(rt, scratch, "r-full", full.end_time) == after_full
    assert _restore_and_hash(rt, scratch, "r-diff", diff.end_time) == after_diff
    assert _restore_and_hash(rt, scratch, "r-latest", None) == after_log
    assert after_full != after_diff != after_log


def test_point_in_time_restore_stops_exactly_at_a_marker(sandbox: Sandbox, rt: Runtime, scratch: Path) -> None:
    _write(sandbox, "CREATE TABLE marker(id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
    open_engine(rt, "app").take_backup("full")
    committed: dict[int, datetime] = {}
    with connect(sandbox.dsn) as conn:
        for i in range(1, 7):
            conn.execute("INSERT INTO marker(id) VALUES (%s)", [i])
            row = conn.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            committed[i] = row[0]
            time.sleep(0.3)
    open_engine(rt, "app").take_backup("log")
    k = 4
    plan = open_engine(rt, "app").plan_restore(committed[k])
    assert plan.recovery == "time" and plan.logs
    res = restore(rt, "app", into=scratch / "pitr", target=committed[k], plan=plan, keep_running=True)
    try:
        with connect(restored_dsn(res)) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM marker ORDER BY id").fetchall()]
    finally:
        from drkit.engines.postgres.pgctl import LocalCluster
        LocalCluster(res.data_dir, res.port, rt.bin_dir("app"), rt.os_user("app")).stop()
    assert ids == list(range(1, k + 1))


def test_diff_after_small_update_is_bounded_by_changed_pages(sandbox: Sandbox, rt: Runtime) -> None:
    _write(sandbox, "CREATE TABLE big(id int PRIMARY KEY, pad text) WITH (fillfactor = 100); "
                    "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 300000) g; "
                    "VACUUM (FREEZE, ANALYZE) big")
    full = open_engine(rt, "app").take_backup("full")
    # 1% of the rows, clustered in a range, as a typical OLTP touch.
    _write(sandbox, "UPDATE big SET pad = repeat('y', 200) WHERE id <= 3000")
    diff = open_engine(rt, "app").take_backup("diff")
    pages = diff.meta["pages_changed"]
    scanned = diff.meta["pages_scanned"]
    assert pages < scanned * 0.1, (pages, scanned)
    # Raw diff bytes: changed pages + whole small files (vm/fsm, catalogs' non-relation files) + its WAL.
    wal_bytes = 16 * 1024 * 1024 * (int(diff.end_wal[-8:], 16) - int(diff.start_wal[-8:], 16) + 1)
    bound = 1.2 * pages * 8192 + diff.meta["whole_file_bytes"] + wal_bytes + 2 * 1024 * 1024
    assert diff.raw_bytes <= bound, (diff.raw_bytes, bound)
    assert diff.raw_bytes < 0.5 * full.raw_bytes


def test_diff_taken_during_vacuum_and_updates_keeps_visibility_map_true(
    sandbox: Sandbox, rt: Runtime, scratch: Path
) -> None:
    _write(sandbox, "CREATE TABLE vm(id int PRIMARY KEY, v int); "
                    "INSERT INTO vm SELECT g, 0 FROM generate_series(1, 200000) g; VACUUM (FREEZE) vm; "
                    "CREATE TABLE hot(id int PRIMARY KEY, v int); "
                    "INSERT INTO hot SELECT g, 0 FROM generate_series(1, 50000) g; VACUUM (FREEZE) hot")
    open_engine(rt, "app").take_backup("full")
    # Clearing all-visible bits is not WAL-logged and leaves the VM page's LSN alone:
    # only a VM fork copied whole carries these clears into the diff.
    _write(sandbox, "UPDATE vm SET v = 1 WHERE id % 50 = 0")
    import threading
    stop = threading.Event()

    def churn() -> None:
        with connect(sandbox.dsn) as conn:
            while not stop.is_set():
                conn.execute("UPDATE hot SET v = v + 1 WHERE id % 777 = 0")
                conn.execute("VACUUM hot")

    t = threading.Thread(target=churn)
    t.start()
    try:
        open_engine(rt, "app").take_backup("diff")
    finally:
        stop.set()
        t.join()
    diff = rt.catalog.latest("app", "diff")
    assert diff is not None
    res = restore(rt, "app", into=scratch / "vm", target=diff.end_time, keep_running=True)
    try:
        assert visibility_problems(restored_dsn(res)) == {}
        with connect(restored_dsn(res)) as conn:
            conn.execute("SET enable_seqscan = off")
            ios = conn.execute("SELECT count(*) FROM vm WHERE id > 0").fetchone()
            for setting in ("enable_seqscan = on", "enable_indexscan = off", "enable_indexonlyscan = off",
                            "enable_bitmapscan = off"):
                conn.execute(f"SET {setting}")
            seq = conn.execute("SELECT count(*) FROM vm WHERE id > 0").fetchone()
        assert ios == seq == (200000,)
    finally:
        from drkit.engines.postgres.pgctl import LocalCluster
        LocalCluster(res.data_dir, res.port, rt.bin_dir("app"), rt.os_user("app")).stop()
