"""Point-in-time restore is exact: marker rows across full + diff + logs, and across a timeline switch."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from drkit.config import load_policy
from drkit.engines import open_engine
from drkit.engines.postgres.pgctl import LocalCluster, make_owned_dir
from drkit.engines.postgres.restore import restore, restored_dsn
from drkit.errors import WalGapError
from drkit.runtime import Runtime
from drkit.sandbox import Sandbox
from tests.support.pgdata import connect
from tests.support.policies import policy_variant

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _markers(dsn: str, table: str, ids: range) -> dict[int, datetime]:
    times: dict[int, datetime] = {}
    with connect(dsn) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table}"
                     "(id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        for i in ids:
            conn.execute(f"INSERT INTO {table}(id) VALUES (%s)", [i])
            row = conn.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            times[i] = row[0]
            time.sleep(0.25)
    return times


def _ids_at(rt: Runtime, into: Path, target: datetime, table: str) -> tuple[list[int], list[str]]:
    plan = open_engine(rt, "app").plan_restore(target)
    res = restore(rt, "app", into=into, plan=plan, keep_running=True)
    try:
        with connect(restored_dsn(res)) as conn:
            ids = [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()]
    finally:
        LocalCluster(res.data_dir, res.port, rt.bin_dir("app"), rt.os_user("app")).stop()
    return ids, [p.role for p in plan.pieces]


def test_markers_across_full_diff_and_logs(sandbox: Sandbox, rt: Runtime, scratch: Path) -> None:
    open_engine(rt, "app").take_backup("full")
    first = _markers(sandbox.dsn, "m1", range(1, 5))
    open_engine(rt, "app").take_backup("diff")
    second = _markers(sandbox.dsn, "m1", range(5, 9))
    open_engine(rt, "app").take_backup("log")
    ids, roles = _ids_at(rt, scratch / "a", first[2], "m1")
    assert ids == [1, 2] and roles[0] == "full" and "diff" not in roles and "log" in roles
    ids, roles = _ids_at(rt, scratch / "b", second[6], "m1")
    assert ids == [1, 2, 3, 4, 5, 6] and roles[:2] == ["full", "diff"] and "log" in roles


def test_markers_across_a_timeline_switch(sandbox: Sandbox, rt: Runtime, scratch: Path) -> None:
    open_engine(rt, "app").take_backup("full")
    old = _markers(sandbox.dsn, "m2", range(1, 4))
    open_engine(rt, "app").take_backup("log")

    # PITR to marker 2, promote (timeline 2), and make the restored cluster the database.
    plan = open_engine(rt, "app").plan_restore(old[2])
    res = restore(rt, "app", into=scratch / "newprimary", plan=plan, keep_running=True)
    spool = make_owned_dir(scratch / "spool2", rt.os_user("app"))
    cfg = policy_variant(sandbox, scratch, {"dsn": restored_dsn(res), "data_dir": str(res.data_dir),
                                             "wal_spool": str(spool)})
    rt2 = Runtime(load_policy(cfg), environ=rt.environ)
    new_primary = LocalCluster(res.data_dir, res.port, rt.bin_dir("app"), rt.os_user("app"),
                               log_file=scratch / "newprimary.log")
    try:
        assert open_engine(rt2, "app").setup().restart_needed
        new_primary.stop()
        new_primary.start()
        new = _markers(restored_dsn(res), "m2", range(10, 14))
        with pytest.raises(WalGapError, match="timeline"):
            open_engine(rt2, "app").take_backup("log")
        full2 = open_engine(rt2, "app").take_backup("full")
        assert full2.timeline == 2
        later = _markers(restored_dsn(res), "m2", range(20, 23))
        log2 = open_engine(rt2, "app").take_backup("log")
        assert log2 is not None and log2.timeline == 2
        ids, roles = _ids_at(rt2, scratch / "c", later[21], "m2")
        assert ids == [1, 2, 10, 11, 12, 13, 20, 21]
        assert new  # markers 10..13 were written before full2
        # The old timeline's chain still restores its own past exactly.
        ids, _ = _ids_at(rt2, scratch / "d", old[3], "m2")
        assert ids == [1, 2, 3]
    finally:
        new_primary.stop()
        rt2.close()
