"""WAL shipping rules and bad input against a real PostgreSQL: clear errors, nothing half-written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from drkit.config import load_policy
from drkit.engines import open_engine
from drkit.engines.postgres.engine import server
from drkit.engines.postgres.lsn import parse_segment_name, segment_name
from drkit.errors import (
    ConfigError,
    DatabaseUnreachableError,
    EncryptionKeyError,
    PrerequisiteError,
    UnknownDatabaseError,
    WalGapError,
)
from drkit.runtime import Runtime
from drkit.sandbox import KEY_ENV, Sandbox
from tests.support.pgdata import connect

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _objects(rt: Runtime) -> list[str]:
    return list(rt.store("local").list())


def _policy_variant(sandbox: Sandbox, scratch: Path, **changes: object) -> Path:
    data = yaml.safe_load(sandbox.policy_path.read_text())
    data["catalog"] = f"sqlite:///{sandbox.root}/catalog.db"
    data["tiers"]["local"]["path"] = str(sandbox.root / "backups" / "local")
    data["databases"]["app"].update(changes)
    path = scratch / "drkit.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_log_backups_join_and_a_missing_segment_is_a_gap(sandbox: Sandbox, rt: Runtime) -> None:
    open_engine(rt, "app").take_backup("full")
    first = open_engine(rt, "app").take_backup("log")
    second = open_engine(rt, "app").take_backup("log")
    assert first is not None and second is not None
    assert first.end_wal is not None and second.start_wal is not None
    tli, end = parse_segment_name(first.end_wal)
    assert second.start_wal == segment_name(tli, end + 1)
    assert second.start_lsn == first.end_lsn

    # A segment the archiver wrote but that disappears before it is shipped breaks the chain.
    with connect(sandbox.dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS gap(x int)")
        for _ in range(2):
            conn.execute("INSERT INTO gap VALUES (1)")
            conn.execute("SELECT pg_switch_wal()")
    missing = segment_name(tli, end + 2)
    server(rt, "app").wait_archived(missing)
    os.unlink(sandbox.spool / missing)
    before = rt.catalog.list_backups("app")
    with pytest.raises(WalGapError, match=missing):
        open_engine(rt, "app").take_backup("log")
    assert rt.catalog.list_backups("app") == before  # nothing recorded for the failed attempt

    # A new full re-anchors the chain; log backups work again.
    open_engine(rt, "app").take_backup("full")
    assert open_engine(rt, "app").take_backup("log") is not None


def test_unknown_database_is_refused_before_anything_is_written(rt: Runtime) -> None:
    before = _objects(rt)
    with pytest.raises(UnknownDatabaseError, match="app"):
        open_engine(rt, "nosuchdb").take_backup("full")
    assert _objects(rt) == before


def test_missing_key_is_refused_and_names_the_variable(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    runtime = Runtime(load_policy(sandbox.policy_path))
    before = runtime.catalog.list_backups("app")
    with pytest.raises(EncryptionKeyError, match=KEY_ENV):
        open_engine(runtime, "app").take_backup("full")
    assert runtime.catalog.list_backups("app") == before


def test_unreachable_dsn_is_a_clear_error_without_the_password(
    sandbox: Sandbox, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, sandbox.key_b64)
    path = _policy_variant(sandbox, scratch, dsn="host=127.0.0.1 port=1 user=postgres password=hunter2 dbname=x")
    runtime = Runtime(load_policy(path))
    before = runtime.catalog.list_backups("app")
    with pytest.raises(DatabaseUnreachableError) as exc:
        open_engine(runtime, "app").take_backup("full")
    assert "127.0.0.1:1" in str(exc.value) and "hunter2" not in str(exc.value)
    assert runtime.catalog.list_backups("app") == before


def test_wrong_data_dir_is_refused_with_the_servers_own(
    sandbox: Sandbox, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, sandbox.key_b64)
    path = _policy_variant(sandbox, scratch, data_dir=str(scratch))
    runtime = Runtime(load_policy(path))
    before = (runtime.catalog.list_backups("app"), list(runtime.store("local").list()))
    with pytest.raises(PrerequisiteError, match=str(sandbox.primary.data_dir)):
        open_engine(runtime, "app").take_backup("full")
    assert (runtime.catalog.list_backups("app"), list(runtime.store("local").list())) == before


def test_malformed_policy_names_the_key(scratch: Path) -> None:
    path = scratch / "drkit.yaml"
    path.write_text("databases:\n  app:\n    engine: postgres\n    dsn_env: X\n    data_dir: /x\n"
                    "    schedules: {ful: '0 2 * * *'}\n")
    with pytest.raises(ConfigError, match=r"databases\.app\.schedules\.ful"):
        load_policy(path)


def test_a_failure_mid_stream_leaves_no_object_and_marks_the_row_failed(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drkit.engines.postgres import pgfiles

    calls = {"n": 0}
    real = pgfiles.ArchiveWriter.add_file

    def failing(self: pgfiles.ArchiveWriter, relpath: str, abspath: str, size: int | None = None) -> int | None:
        calls["n"] += 1
        if calls["n"] == 50:
            raise OSError("disk full (simulated)")
        return real(self, relpath, abspath, size)

    monkeypatch.setattr(pgfiles.ArchiveWriter, "add_file", failing)
    before = _objects(rt)
    with pytest.raises(OSError, match="disk full"):
        open_engine(rt, "app").take_backup("full")
    assert _objects(rt) == before
    failed = rt.catalog.list_backups("app", statuses=["failed"])
    assert failed and "disk full" in (failed[0].error or "")
    assert not rt.catalog.copies(failed[0].id)
    # The server's backup was aborted: a new one starts cleanly.
    monkeypatch.setattr(pgfiles.ArchiveWriter, "add_file", real)
    assert open_engine(rt, "app").take_backup("full").status == "completed"


def test_restore_refuses_a_target_dir_it_cannot_use_and_changes_nothing(rt: Runtime, scratch: Path) -> None:
    from drkit.engines.postgres.restore import restore
    from drkit.errors import RestoreError

    open_engine(rt, "app").take_backup("full")
    busy = scratch / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("precious")
    with pytest.raises(RestoreError, match="not empty"):
        restore(rt, "app", into=busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]

    private = scratch / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    if rt.os_user("app") not in (None, "root"):
        with pytest.raises(RestoreError, match="cannot write"):
            restore(rt, "app", into=private / "r")
        assert not (private / "r").exists()
