"""`drkit check` / `drkit setup` against a server that is not ready for backups."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from drkit.config import default_bin_dir
from drkit.engines.postgres.engine import PostgresEngine
from drkit.engines.postgres.pgctl import LocalCluster, effective_os_user, free_port, make_owned_dir
from drkit.errors import PrerequisiteError

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_check_lists_each_missing_prerequisite_and_setup_fixes_them(scratch: Path) -> None:
    os_user = effective_os_user(None)
    cluster = LocalCluster(scratch / "plain", free_port(), default_bin_dir(), os_user, log_file=scratch / "plain.log")
    # A default cluster: no data checksums, wal_log_hints off, archive_mode off.
    cluster.initdb(checksums=False, extra_conf="wal_level = minimal\nmax_wal_senders = 0\n")
    cluster.start()
    spool = make_owned_dir(scratch / "spool", os_user)
    engine = PostgresEngine("plain", dsn=cluster.dsn(), data_dir=cluster.data_dir, spool=spool,
                            bin_dir=default_bin_dir(), os_user=os_user)
    try:
        missing = {i.name for i in engine.check() if not i.ok}
        assert {"wal_level", "archive_mode", "archive_command", "wal spool",
                "wal_log_hints or data checksums"} <= missing
        with pytest.raises(PrerequisiteError, match="wal_level"):
            engine.require_ready()

        result = engine.setup()
        assert result.restart_needed
        assert any(a.startswith("archive_mode") for a in result.applied)
        assert any(a.startswith("wal_level") for a in result.applied)
        cluster.stop()
        cluster.start()
        assert [i.name for i in engine.check() if not i.ok] == []
        engine.require_ready()
        # Setup is idempotent: a second run changes nothing.
        again = engine.setup()
        assert again.applied == [] and not again.restart_needed
    finally:
        cluster.stop()
        shutil.rmtree(scratch / "plain", ignore_errors=True)
