"""What drkit takes from the WAL spool (writable by the database's OS user, read by drkit as root).

Regular files only: an entry with a WAL file's name that is a link, directory or FIFO is refused by name,
before and after opening; the archive script's temp files from killed runs are removed when the spool is listed.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path

import pytest

from drkit.engines.postgres.engine import PostgresEngine
from drkit.engines.postgres.lsn import segment_name
from drkit.engines.postgres.walspool import (
    STALE_PART_SECONDS,
    Anchor,
    list_spool,
    open_spool_file,
    plan_batch,
    remove_stale_parts,
)
from drkit.errors import EngineError

SECRET = b"root-only secret bytes"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "private" / "secret"
    path.parent.mkdir(mode=0o700)
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    for segno in (5, 6):
        (path / segment_name(1, segno)).write_bytes(b"w" * 1000)
    return path


def test_a_link_named_like_a_segment_is_refused_by_name(spool: Path, secret: Path) -> None:
    planted = segment_name(1, 7)
    (spool / planted).symlink_to(secret)
    with pytest.raises(EngineError, match=f"{planted}: it is a symbolic link") as info:
        list_spool(spool)
    assert "\n" not in str(info.value)


def test_a_link_named_like_a_history_file_is_refused(spool: Path, secret: Path) -> None:
    (spool / "00000002.history").symlink_to(secret)
    with pytest.raises(EngineError, match="00000002.history: it is a symbolic link"):
        list_spool(spool)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_other_non_regular_entries_are_refused(spool: Path, kind: str) -> None:
    planted = spool / segment_name(1, 7)
    if kind == "directory":
        planted.mkdir()
    else:
        os.mkfifo(planted)
    with pytest.raises(EngineError, match=f"{planted.name}: it is a {'directory' if kind == 'directory' else 'FIFO'}"):
        list_spool(spool)


def test_open_refuses_links_fifos_and_others_hard_links(spool: Path, secret: Path, tmp_path: Path) -> None:
    (spool / "l").symlink_to(secret)
    with pytest.raises(EngineError, match="symbolic link"):
        open_spool_file(spool, "l")
    os.mkfifo(spool / "f")
    with pytest.raises(EngineError, match="FIFO"):
        open_spool_file(spool, "f")  # and it did not block
    assert open_spool_file(spool, "gone") is None
    fh = open_spool_file(spool, segment_name(1, 5))
    assert fh is not None
    with fh:
        assert fh.read() == b"w" * 1000
    if os.geteuid() == 0:  # a second name for a file of another user
        other = tmp_path / "others"
        other.write_bytes(SECRET)
        os.chown(other, 65534, 65534)
        os.link(other, spool / "h")
        with pytest.raises(EngineError, match="hard link"):
            open_spool_file(spool, "h")


def test_a_segment_swapped_for_a_link_after_listing_is_not_shipped(spool: Path, secret: Path,
                                                                   tmp_path: Path) -> None:
    segments, histories = list_spool(spool)
    batch = plan_batch(segments, histories, Anchor(timeline=1, next_segno=5, after="full F"), upto_segno=6)
    assert batch is not None
    victim = spool / segment_name(1, 6)
    victim.unlink()
    victim.symlink_to(secret)
    engine = PostgresEngine("app", dsn="", data_dir=tmp_path, spool=spool, bin_dir=tmp_path, os_user=None)
    out = io.BytesIO()
    with pytest.raises(EngineError, match=f"{victim.name}: it is a symbolic link"):
        engine.write_wal_archive(out, batch)
    assert SECRET not in out.getvalue()


def test_shipping_regular_segments_still_works(spool: Path, tmp_path: Path) -> None:
    segments, histories = list_spool(spool)
    batch = plan_batch(segments, histories, Anchor(timeline=1, next_segno=5, after="full F"), upto_segno=6)
    assert batch is not None
    engine = PostgresEngine("app", dsn="", data_dir=tmp_path, spool=spool, bin_dir=tmp_path, os_user=None)
    out = io.BytesIO()
    manifest = engine.write_wal_archive(out, batch)
    assert manifest["segments"] == segs(5, 6)
    assert out.getvalue().count(b"w" * 1000) == 2


def segs(first: int, last: int) -> list[str]:
    return [segment_name(1, s) for s in range(first, last + 1)]


# -- the archive script's temp files -----------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_listing_removes_temp_files_of_dead_or_old_archive_runs(spool: Path) -> None:
    dead = spool / f".{segment_name(1, 7)}.part-{_dead_pid()}"
    writing = spool / f".{segment_name(1, 8)}.part-{os.getpid()}"  # a live archive run, just started
    old = spool / f".{segment_name(1, 9)}.part-{os.getpid()}"  # a live PID, but far too old: reused
    for path in (dead, writing, old):
        path.write_bytes(b"partial")
    stale = time.time() - STALE_PART_SECONDS - 60
    os.utime(old, (stale, stale))
    segments, _ = list_spool(spool)
    assert segments == segs(5, 6)
    assert not dead.exists() and not old.exists()
    assert writing.exists()
    assert remove_stale_parts(spool) == []
    assert remove_stale_parts(spool, older_than=0) == [writing.name]
    assert sorted(p.name for p in spool.iterdir()) == segs(5, 6)
