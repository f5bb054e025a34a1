"""``drkit.backup.guarded``: a failure never deletes objects a completed record points at, nor hides its cause."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from drkit.backup import DATA_OBJECT, begin, finish_backup, guarded, object_key, write_encrypted
from drkit.catalog.records import BackupRecord
from drkit.config import parse_policy
from drkit.runtime import Runtime

KEY = "DRKIT_BACKUP_KEY"


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    policy = parse_policy({"catalog": f"sqlite:///{tmp_path}/catalog.db",
                           "tiers": {"local": {"store": "filesystem", "path": str(tmp_path / "local")}}},
                          base_dir=tmp_path)
    return Runtime(policy, {KEY: base64.b64encode(os.urandom(32)).decode()})


def _complete(rt: Runtime, rec: BackupRecord) -> BackupRecord:
    _, data = write_encrypted(rt, "local", object_key(rec, DATA_OBJECT), lambda w: w.write(b"x" * 1000))
    return finish_backup(rt, "local", rec, data, {"format": "test"}, timeline=1, start_lsn=None, end_lsn=None,
                         start_wal=None, end_wal=None, start_time=None, end_time=None)


def test_a_failure_after_the_record_completed_deletes_nothing_and_is_raised_as_it_was(rt: Runtime) -> None:
    rec = begin(rt, "app", "full")

    def body() -> BackupRecord:
        _complete(rt, rec)
        raise RuntimeError("a step after completion failed")

    with pytest.raises(RuntimeError, match="a step after completion failed"):
        guarded(rt, "local", rec, body)
    assert rt.catalog.get(rec.id).status == "completed"
    (copy,) = rt.catalog.copies(rec.id)
    store = rt.store("local")
    assert store.exists(copy.store_key) and store.size(copy.store_key) == copy.stored_bytes
    assert sorted(store.list(f"app/{rec.id}/")) == [f"app/{rec.id}/{n}" for n in
                                                     ("backup.json", "data.drk", "manifest.drk")]


def test_a_failure_before_completion_removes_the_objects_and_records_the_real_error(rt: Runtime) -> None:
    rec = begin(rt, "app", "full")

    def body() -> BackupRecord:
        write_encrypted(rt, "local", object_key(rec, DATA_OBJECT), lambda w: w.write(b"x" * 1000))
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        guarded(rt, "local", rec, body)
    row = rt.catalog.get(rec.id)
    assert (row.status, row.error) == ("failed", "OSError: disk on fire")
    assert list(rt.store("local").list("app/")) == []


def test_the_descriptor_written_before_completion_describes_the_completed_record(rt: Runtime) -> None:
    from drkit.binding import open_descriptor

    done = _complete(rt, begin(rt, "app", "full"))
    where = object_key(done, "backup.json")
    with rt.store("local").reader(where) as fh:
        fields = open_descriptor(fh.read(), rt.key, where)
    assert done.finished_at is not None
    assert (fields["status"], fields["finished_at"], fields["sha256"]) == (
        "completed", done.finished_at.isoformat(), done.sha256)
    assert fields["meta"] == dict(done.meta)
