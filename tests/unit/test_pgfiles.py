"""The backup archive layout: what ArchiveWriter writes, extract_archive lays down exactly (or refuses)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from drkit.engines.postgres.pgfiles import (
    MANIFEST_NAME,
    PAGE_SIZE,
    ArchiveWriter,
    pages_member_name,
    scan_changed_pages,
)
from drkit.engines.postgres.pgrestore import extract_archive
from drkit.errors import IntegrityError


def _page(lsn: int, fill: int) -> bytes:
    """A page whose header starts with pd_lsn (xlogid, xrecoff), native (little-endian here)."""
    header = (lsn >> 32).to_bytes(4, "little") + (lsn & 0xFFFFFFFF).to_bytes(4, "little")
    return header + bytes([fill]) * (PAGE_SIZE - 8)


def _archive(tmp: Path) -> bytes:
    (tmp / "src").mkdir()
    big = tmp / "src" / "big"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    out = io.BytesIO()
    w = ArchiveWriter(out)
    w.add_dir("base")
    w.add_file("base/big", str(big))
    w.add_bytes("pg_wal/000000010000000000000001", b"old")
    w.add_bytes("pg_wal/000000010000000000000003", b"new")
    w.add_bytes(pages_member_name("base/rel", 0), _pages_payload())
    w.add_json(MANIFEST_NAME, {"files": {"base/big": big.stat().st_size}, "dirs": ["base"]})
    w.close()
    return out.getvalue()


def _pages_payload() -> bytes:
    data = _page(0x200, 1) + _page(0x050, 2) + bytes(PAGE_SIZE) + _page(0x300, 3)
    chunks = list(scan_changed_pages(io.BytesIO(data), since_lsn=0x100, base_blocks=4))
    assert len(chunks) == 1
    return chunks[0][1]


def test_round_trip_is_exact_and_selects_pages_by_lsn(tmp_path: Path) -> None:
    data = _archive(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames()  # a standard tar, readable by tar(1)
    out = tmp_path / "out"
    out.mkdir()
    manifest = extract_archive(io.BytesIO(data), out, skip_wal_before="000000010000000000000002")
    assert manifest["dirs"] == ["base"]
    assert (out / "base" / "big").read_bytes() == (tmp_path / "src" / "big").read_bytes()
    assert not (out / "pg_wal" / "000000010000000000000001").exists()
    assert (out / "pg_wal" / "000000010000000000000003").read_bytes() == b"new"
    rel = (out / "base" / "rel").read_bytes()
    # page 0 (LSN past the full's start) and page 3 are kept; page 1 (older LSN) is not; page 2 is a zero page.
    assert rel[:PAGE_SIZE] == _page(0x200, 1)
    assert rel[PAGE_SIZE:2 * PAGE_SIZE] == bytes(PAGE_SIZE)
    assert rel[3 * PAGE_SIZE:] == _page(0x300, 3)


@pytest.mark.parametrize("cut", [100, 512 * 3, 3 * 1024 * 1024, 3 * 1024 * 1024 + 4096])
def test_a_truncated_archive_is_refused(tmp_path: Path, cut: int) -> None:
    data = _archive(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError):
        extract_archive(io.BytesIO(data[:cut]), out)


def test_a_member_escaping_the_target_is_refused(tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("../evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(IntegrityError, match="unsafe path"):
        extract_archive(io.BytesIO(out.getvalue()), target)
    assert not (tmp_path / "evil").exists()
