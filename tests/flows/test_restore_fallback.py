"""A restore (and a verification, and a diff's manifest read) falls back to the next tier's copy.

A verified-or-not full in the local tier, copied to blob (Azurite); then the local copy is deleted or has a
byte flipped. The restore reads the blob copy, the data is what was written, and the local copy is recorded
"missing" / "corrupt" (audited). With no good copy left, one line names every copy tried.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from drkit.catalog.records import BackupRecord
from drkit.config import load_policy
from drkit.engines import open_engine
from drkit.engines.postgres.pgctl import LocalCluster
from drkit.engines.postgres.restore import restore, restored_dsn
from drkit.engines.postgres.verify import verify_backup
from drkit.errors import RestoreError
from drkit.plans import RestoreResult
from drkit.runtime import Runtime
from drkit.sandbox import KEY_ENV, Sandbox
from drkit.tiers.moves import copy_backup
from drkit.tiers.naming import DATA_OBJECT, MANIFEST_OBJECT, OBJECTS, object_key
from tests.support.azure_policy import CONN_ENV, azure_policy
from tests.support.azurite import Azurite, azurite  # noqa: F401 - the fixture
from tests.support.pgdata import connect, table_hashes

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(300)]


@dataclass
class World:
    sandbox: Sandbox
    cfg: Path
    rt: Runtime
    root: Path

    def local_path(self, b: BackupRecord, name: str = DATA_OBJECT) -> Path:
        return self.rt.policy.tier_path("local") / object_key(b, name)

    def status(self, b: BackupRecord) -> dict[str, str]:
        return {c.tier: c.status for c in self.rt.catalog.copies(b.id)}


@pytest.fixture(scope="module")
def world(sandbox: Sandbox, azurite: Azurite, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
          ) -> Iterator[World]:
    root = sandbox.root / "fallback"
    root.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, sandbox.key_b64)
        mp.setenv(CONN_ENV, azurite.connection_string)
        cfg = azure_policy(sandbox, root, f"t{uuid.uuid4().hex[:12]}", catalog=f"sqlite:///{root}/catalog.db")
        rt = Runtime(load_policy(cfg))
        try:
            yield World(sandbox, cfg, rt, root)
        finally:
            rt.close()


def _full_in_local_and_blob(w: World, rows: range) -> BackupRecord:
    with connect(w.sandbox.dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS fallback_rows(id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO fallback_rows SELECT g, md5(g::text) FROM generate_series(%s::int, %s::int) g",
                     [rows.start, rows.stop - 1])
    full = open_engine(w.rt, "app").take_backup("full")
    copy_backup(w.rt, full.id, "local", "blob")
    assert w.status(full) == {"local": "complete", "blob": "complete"}
    return full


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _restore_and_compare(w: World, into: Path) -> RestoreResult:
    """Restore the latest point; assert the data equals the source's and every warning was a step."""
    res = restore(w.rt, "app", into=into, plan=open_engine(w.rt, "app").plan_restore(None), keep_running=True)
    try:
        assert table_hashes(restored_dsn(res)) == table_hashes(w.sandbox.dsn)
    finally:
        LocalCluster(res.data_dir, res.port, w.rt.bin_dir("app"), w.rt.os_user("app")).stop()
    assert res.warnings and all(line in [s for s, _ in res.steps] for line in
                                (f"warning: {x}" for x in res.warnings))
    return res


def test_cli_restore_latest_reads_the_blob_copy_when_the_local_files_are_gone(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world
    full = _full_in_local_and_blob(w, range(1, 2001))
    shutil.rmtree(w.local_path(full).parent)  # every local file of the backup is gone
    monkeypatch.setenv(KEY_ENV, w.sandbox.key_b64)
    monkeypatch.setenv(CONN_ENV, w.rt.environ[CONN_ENV])
    into = w.root / "cli-restore"
    result = CliRunner().invoke(app, ["--config", str(w.cfg), "restore", "app", "--latest", "--into", str(into),
                                      "--keep-running"])
    assert result.exit_code == 0, result.stderr
    assert "the local copy is missing" in result.stderr and "warning:" in result.stderr
    data_dir = Path(str(into))
    port = int((data_dir / "postmaster.pid").read_text().splitlines()[3])
    cluster = LocalCluster(data_dir, port, w.rt.bin_dir("app"), w.rt.os_user("app"), socket_dir=data_dir)
    try:
        assert table_hashes(cluster.dsn()) == table_hashes(w.sandbox.dsn)
    finally:
        cluster.stop()
    assert w.status(full) == {"local": "missing", "blob": "complete"}
    events = [e for e in w.rt.catalog.audit_events(database="app", action="copy.missing") if e.subject == full.id]
    assert len(events) == 1 and events[0].detail["tier"] == "local"
    # the next plan reads the blob copy directly, without a warning
    assert {p.tier for p in open_engine(w.rt, "app").plan_restore(None).pieces} == {"blob"}


def test_a_flipped_byte_in_the_local_copy_restarts_the_lay_down_from_blob(world: World) -> None:
    w = world
    with connect(w.sandbox.dsn) as conn:  # hex text: enough stored bytes for several 4 MiB frames
        conn.execute("CREATE TABLE bulk AS SELECT g, repeat(md5(g::text) || md5((-g)::text), 4) AS t "
                     "FROM generate_series(1, 60000) g")
    try:
        full = _full_in_local_and_blob(w, range(2001, 4001))
        path = w.local_path(full)
        data = bytearray(path.read_bytes())
        data[-100] ^= 0x01  # same size, in the last frame: found mid-extraction, after files were written
        path.write_bytes(bytes(data))
        res = _restore_and_compare(w, w.root / "flipped")
    finally:
        with connect(w.sandbox.dsn) as conn:
            conn.execute("DROP TABLE bulk")
    assert any(re.search(r"local copy is corrupt \(frame [1-9]\d* failed authentication", line)
               for line in res.warnings), res.warnings
    assert any(s.startswith("discarding what was laid down") for s, _ in res.steps)
    assert res.read_from == {full.id: "blob"}
    assert w.status(full) == {"local": "corrupt", "blob": "complete"}
    assert any(e.subject == full.id and e.detail["tier"] == "local"
               for e in w.rt.catalog.audit_events(database="app", action="copy.corrupt"))


def test_no_good_copy_left_is_one_line_naming_each_copy(world: World) -> None:
    w = world
    full = _full_in_local_and_blob(w, range(4001, 4101))
    for name in OBJECTS:
        w.local_path(full, name).unlink()
    blob = w.rt.store("blob")
    key = object_key(full, DATA_OBJECT)
    with blob.reader(key) as fh:
        data = bytearray(fh.read())
    data[len(data) // 2] ^= 0x01
    with blob.writer(key) as fh:
        fh.write(bytes(data))
    into = w.root / "none-left"
    with pytest.raises(RestoreError) as info:
        restore(w.rt, "app", into=into, plan=open_engine(w.rt, "app").plan_restore(None))
    message = str(info.value)
    assert "\n" not in message
    assert f"no readable copy of full {full.id}" in message
    assert "local: missing" in message and "blob: corrupt" in message
    assert w.status(full) == {"local": "missing", "blob": "corrupt"}
    # planning now leaves that full out: the newest full with a good copy is used instead
    assert open_engine(w.rt, "app").plan_restore(None).full.backup.id != full.id


def test_verification_of_a_corrupt_local_copy_marks_it_and_passes_on_the_blob_copy(world: World) -> None:
    w = world
    full = _full_in_local_and_blob(w, range(4101, 4201))
    _flip(w.local_path(full))
    report = verify_backup(w.rt, "app", full.id)
    assert report.passed, report.error
    assert w.rt.catalog.get(full.id).status == "verified"
    assert w.status(full) == {"local": "corrupt", "blob": "complete"}
    assert any("local copy is corrupt" in line for line in report.warnings)
    sha = next(c for c in report.checks if c.name == f"sha256 {full.id}")
    assert sha.ok and "in tier blob" in sha.detail


def test_a_diff_reads_its_full_manifest_from_blob_and_the_chain_restores(world: World) -> None:
    w = world
    full = _full_in_local_and_blob(w, range(4201, 4301))
    w.local_path(full, MANIFEST_OBJECT).unlink()
    with connect(w.sandbox.dsn) as conn:
        conn.execute("INSERT INTO fallback_rows SELECT g, 'diff' FROM generate_series(4301, 4400) g")
    diff = open_engine(w.rt, "app").take_backup("diff")
    assert diff.base_id == full.id
    assert w.status(full) == {"local": "missing", "blob": "complete"}
    plan = open_engine(w.rt, "app").plan_restore(None)
    assert [(p.backup.id, p.tier) for p in plan.pieces] == [(full.id, "blob"), (diff.id, "local")]
    res = restore(w.rt, "app", into=w.root / "diff-chain", plan=plan, keep_running=True)
    try:
        assert table_hashes(restored_dsn(res)) == table_hashes(w.sandbox.dsn)
    finally:
        LocalCluster(res.data_dir, res.port, w.rt.bin_dir("app"), w.rt.os_user("app")).stop()
