"""The archive_command script (drkit/engines/postgres/archive_wal.py): run as PostgreSQL runs it, and called directly.

Exit status is PostgreSQL's contract: 0 the WAL file is safe in the spool; 1 a different file already has that
name (refuse, visibly); 2 usage or I/O error (PostgreSQL retries). Never a half-written file under the final name.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from drkit.engines.postgres import archive_wal as pg_archive_wal

SCRIPT = Path(pg_archive_wal.__file__)
PYTHON = "/usr/bin/python3"  # what archive_command calls: the system Python, no virtualenv
SEGMENT = "000000010000000000000003"

pytestmark = pytest.mark.skipif(not Path(PYTHON).exists(), reason=f"{PYTHON} is what archive_command runs")


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # PostgreSQL runs archive_command through the shell with a minimal environment; no drkit on sys.path.
    return subprocess.run([PYTHON, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin"}, cwd="/")


@pytest.fixture
def wal(tmp_path: Path) -> Path:
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    path = pg_wal / SEGMENT
    path.write_bytes(os.urandom(1 << 16) * 40)  # 2.5 MiB: more than one copy buffer
    return path


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


def leftovers(spool: Path) -> list[str]:
    return [p.name for p in spool.iterdir() if ".part-" in p.name]


# -- as PostgreSQL runs it ---------------------------------------------------------------------------


def test_copies_the_segment_into_the_spool(wal: Path, spool: Path) -> None:
    res = run(wal, spool / SEGMENT)
    assert res.returncode == 0, res.stderr
    assert (spool / SEGMENT).read_bytes() == wal.read_bytes()
    assert wal.exists()  # the source is PostgreSQL's; never moved
    assert leftovers(spool) == []


def test_script_needs_only_the_standard_library() -> None:
    res = subprocess.run([PYTHON, "-I", "-S", str(SCRIPT), "only-one-arg"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2
    assert "usage" in res.stderr


def test_same_segment_twice_with_identical_content_succeeds(wal: Path, spool: Path) -> None:
    assert run(wal, spool / SEGMENT).returncode == 0
    before = (spool / SEGMENT).stat()
    res = run(wal, spool / SEGMENT)
    assert res.returncode == 0, res.stderr
    assert (spool / SEGMENT).stat().st_ino == before.st_ino  # not rewritten
    assert leftovers(spool) == []


def test_different_content_under_the_same_name_is_refused(wal: Path, spool: Path) -> None:
    original = b"the segment that was archived first" * 1000
    (spool / SEGMENT).write_bytes(original)
    res = run(wal, spool / SEGMENT)
    assert res.returncode == 1
    assert "different" in res.stderr and SEGMENT in res.stderr
    assert (spool / SEGMENT).read_bytes() == original
    assert leftovers(spool) == []


def test_same_size_different_content_is_refused(wal: Path, spool: Path) -> None:
    data = bytearray(wal.read_bytes())
    data[-1] ^= 0xFF
    (spool / SEGMENT).write_bytes(bytes(data))
    assert run(wal, spool / SEGMENT).returncode == 1
    assert (spool / SEGMENT).read_bytes() == bytes(data)


@pytest.mark.parametrize("args", [(), ("one",), ("a", "b", "c")])
def test_usage_error_exits_2(args: tuple[str, ...]) -> None:
    res = run(*args)
    assert res.returncode == 2
    assert "usage" in res.stderr


def test_missing_source_exits_2_and_writes_nothing(tmp_path: Path, spool: Path) -> None:
    res = run(tmp_path / "pg_wal" / SEGMENT, spool / SEGMENT)
    assert res.returncode == 2
    assert list(spool.iterdir()) == []


def test_missing_spool_exits_2(wal: Path, tmp_path: Path) -> None:
    res = run(wal, tmp_path / "no-spool" / SEGMENT)
    assert res.returncode == 2
    assert not (tmp_path / "no-spool").exists()


def test_read_error_mid_copy_leaves_no_part_file(spool: Path) -> None:
    # /proc/self/mem opens fine but reading offset 0 fails with EIO: the temp file exists by then.
    res = run("/proc/self/mem", spool / SEGMENT)
    assert res.returncode == 2
    assert list(spool.iterdir()) == []


# -- called directly ---------------------------------------------------------------------------------


def test_archive_returns_0_and_copies(wal: Path, spool: Path) -> None:
    assert pg_archive_wal.archive(str(wal), str(spool / SEGMENT)) == 0
    assert (spool / SEGMENT).read_bytes() == wal.read_bytes()
    assert pg_archive_wal.archive(str(wal), str(spool / SEGMENT)) == 0


def test_archive_refuses_a_conflict(wal: Path, spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (spool / SEGMENT).write_bytes(b"other")
    assert pg_archive_wal.archive(str(wal), str(spool / SEGMENT)) == 1
    assert (spool / SEGMENT).read_bytes() == b"other"
    assert "refusing" in capsys.readouterr().err


def test_failure_after_the_temp_file_is_written_cleans_up(
        wal: Path, spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pg_archive_wal.os, "fsync", disk_full)
    with pytest.raises(OSError):
        pg_archive_wal.archive(str(wal), str(spool / SEGMENT))
    assert list(spool.iterdir()) == []  # no final name, no .part- file
    monkeypatch.undo()
    assert pg_archive_wal.main(["x", str(wal), str(spool / SEGMENT)]) == 0


def test_failed_rename_cleans_up(wal: Path, spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_rename(src: str, dst: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(pg_archive_wal.os, "replace", no_rename)
    assert pg_archive_wal.main(["x", str(wal), str(spool / SEGMENT)]) == 2
    assert list(spool.iterdir()) == []


def test_main_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert pg_archive_wal.main(["x"]) == 2
    assert "usage" in capsys.readouterr().err


def test_an_identical_segment_already_there_is_made_durable_before_it_is_acknowledged(
        wal: Path, spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As left by a run killed between its rename and its directory fsync: the name may not be on disk yet.
    (spool / SEGMENT).write_bytes(wal.read_bytes())
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(pg_archive_wal.os, "fsync", recording_fsync)
    assert pg_archive_wal.archive(str(wal), str(spool / SEGMENT)) == 0
    assert str(spool / SEGMENT) in synced  # the file
    assert str(spool) in synced  # and its directory entry


def test_a_link_under_the_segment_name_is_refused(wal: Path, spool: Path) -> None:
    (spool / SEGMENT).symlink_to(wal)  # same content, through a link: not a spool file drkit may read
    res = run(wal, spool / SEGMENT)
    assert res.returncode == 1
    assert "not a regular file" in res.stderr
    assert (spool / SEGMENT).is_symlink()
