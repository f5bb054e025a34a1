"""A link planted in the WAL spool by the database's OS user is refused by name, never read as root."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from drkit.engines import open_engine
from drkit.errors import EngineError
from drkit.runtime import Runtime
from drkit.sandbox import Sandbox
from tests.support.pgdata import connect

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(240)]


def test_a_link_named_like_the_next_segment_stops_the_log_backup_until_removed(
    sandbox: Sandbox, rt: Runtime, scratch: Path
) -> None:
    open_engine(rt, "app").take_backup("full")
    with connect(sandbox.dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS spool_rows(id int)")
        conn.execute("INSERT INTO spool_rows VALUES (1)")
        row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
    assert row is not None
    segment = str(row[0])  # the segment the log backup is about to close and ship
    private = scratch / "root-only"
    private.mkdir(mode=0o700)
    (private / "secret").write_bytes(b"only root may read this")
    link = sandbox.spool / segment
    # planted by the database's OS user, who owns the spool (and could do it from SQL: COPY ... TO PROGRAM)
    subprocess.run(["runuser", "-u", "postgres", "--", "ln", "-s", str(private / "secret"), str(link)], check=True)
    logs_before = len(rt.catalog.list_backups("app", kinds=["log"]))

    with pytest.raises(EngineError, match=f"{segment}: it is a symbolic link") as info:
        open_engine(rt, "app").take_backup("log")
    assert "\n" not in str(info.value)
    assert len(rt.catalog.list_backups("app", kinds=["log"])) == logs_before  # nothing was started

    link.unlink()  # the operator removes it; PostgreSQL archives the real segment on its next attempt
    done = open_engine(rt, "app").take_backup("log")
    assert done is not None and done.status == "completed"
    assert done.start_wal is not None and done.end_wal is not None and done.start_wal <= segment <= done.end_wal
