"""PostgreSQL data-directory files: which to copy, which pages changed, and the archive layout.

A drkit PostgreSQL backup is a tar stream (then compressed and encrypted by
``drkit.pipeline``). This module is the only place that knows its layout:

* a **full** holds every file of the data directory except the exclusions
  pg_basebackup makes (pg_wal contents, pg_stat_tmp, unlogged main forks, ...),
  then the WAL from its start to its stop LSN under ``pg_wal/``, its
  ``backup_label`` (and ``tablespace_map``), and ``.drkit/manifest.json`` last;
* a **diff** holds, for each relation file that the full also had, only the
  8 KiB pages whose page LSN is at or past the *full's start* LSN, pages past
  the full's length, and pages with LSN 0 (members ``.drkit/pages/<path>/<blk>``,
  one per 8 MiB read); ``_vm`` and ``_fsm`` forks, new relation files and every
  non-relation file whole; its own WAL, backup_label, and a manifest with every
  file's length, so restore can delete dropped files and truncate or extend
  each file exactly. (Visibility-map bit clears are not WAL-logged and do not
  move the page LSN: choosing ``_vm`` pages by LSN restores stale all-visible
  bits, a silent corruption; see docs/blockdiff.md.)
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import tarfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from drkit.errors import IntegrityError, PrerequisiteError

PAGE_SIZE = 8192
READ_CHUNK = 8 * 1024 * 1024
MANIFEST_NAME = ".drkit/manifest.json"
PAGES_PREFIX = ".drkit/pages/"
ZERO_PAGE = bytes(PAGE_SIZE)

# Same as PostgreSQL 15's basebackup.c: keep the directory, not its contents.
EXCLUDED_DIR_CONTENTS = frozenset({
    "pg_wal", "pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify",
    "pg_serial", "pg_snapshots", "pg_subtrans",
})
EXCLUDED_FILES = frozenset({
    "postmaster.pid", "postmaster.opts", "backup_label", "backup_label.old", "tablespace_map",
    "tablespace_map.old", "postgresql.auto.conf.tmp", "current_logfiles.tmp", "recovery.signal",
    "standby.signal",
})
EXCLUDED_PREFIXES = ("pg_internal.init", "pgsql_tmp")
_RELFILE_RE = re.compile(r"^(\d+)(?:_(fsm|vm|init))?(?:\.(\d+))?$")
_TEMP_REL_RE = re.compile(r"^t\d+_\d+")
_PAGE_LSN = struct.Struct("=II")
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class DataFile:
    relpath: str
    abspath: str
    size: int
    relation: bool
    fork: str | None  # None (main), "fsm", "vm", "init"


@dataclass
class DataDirListing:
    dirs: list[str] = field(default_factory=list)
    files: list[DataFile] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _is_relation_dir(rel_dir: str) -> bool:
    parts = rel_dir.split("/")
    return rel_dir == "global" or (len(parts) == 2 and parts[0] == "base")


def list_data_dir(data_dir: Path) -> DataDirListing:
    """Every directory and file a backup must hold, in a stable order."""
    tblspc = data_dir / "pg_tblspc"
    if tblspc.is_dir() and any(tblspc.iterdir()):
        raise PrerequisiteError(
            f"{data_dir} has tablespaces (pg_tblspc is not empty); drkit does not back up tablespaces yet"
        )
    listing = DataDirListing()

    def walk(rel_dir: str) -> None:
        abs_dir = os.path.join(data_dir, rel_dir) if rel_dir else str(data_dir)
        try:
            entries = sorted(os.scandir(abs_dir), key=lambda e: e.name)
        except FileNotFoundError:
            return  # a directory dropped during the walk: WAL replay recreates or removes it
        relation_dir = _is_relation_dir(rel_dir)
        unlogged: set[str] = set()
        if relation_dir:
            for e in entries:
                m = _RELFILE_RE.match(e.name)
                if m and m.group(2) == "init":
                    unlogged.add(m.group(1))
        for e in entries:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            try:
                if e.is_dir(follow_symlinks=False):
                    listing.dirs.append(rel)
                    if rel in EXCLUDED_DIR_CONTENTS:
                        if rel == "pg_wal":
                            listing.dirs.append("pg_wal/archive_status")
                        continue
                    walk(rel)
                    continue
                if not e.is_file(follow_symlinks=False):
                    continue
                if e.name in EXCLUDED_FILES or e.name.startswith(EXCLUDED_PREFIXES):
                    continue
                size = e.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
            relation, fork = False, None
            if relation_dir:
                if _TEMP_REL_RE.match(e.name):
                    continue
                m = _RELFILE_RE.match(e.name)
                if m:
                    relation, fork = True, m.group(2)
                    if m.group(1) in unlogged and fork != "init":
                        continue  # unlogged relations are reset from their init fork at the end of recovery
            listing.files.append(DataFile(rel, os.path.join(abs_dir, e.name), size, relation, fork))

    walk("")
    return listing


class _ExactReader:
    """Reads exactly ``size`` bytes from a file that may shrink or grow while we read it.

    A shrunk file is padded with zeros, a grown one cut; WAL replay from the
    backup's start repairs both, as it does for pg_basebackup.
    """

    def __init__(self, fh: BinaryIO, size: int, on_bytes: Callable[[int], None] | None) -> None:
        self._fh, self._left, self._on_bytes = fh, size, on_bytes

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if n is None or n < 0 else min(n, self._left)
        data = self._fh.read(want)
        if len(data) < want:
            data += bytes(want - len(data))
        self._left -= len(data)
        if self._on_bytes:
            self._on_bytes(len(data))
        return data


class _Tellable:
    """A write-only sink that knows its position, so tarfile can use its fast non-stream mode."""

    def __init__(self, out: Any) -> None:
        self._out, self._pos = out, 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos


class ArchiveWriter:
    """A tar stream of data-directory members, written once, front to back.

    Plain ``"w"`` mode over a position-counting sink: byte-identical to the
    ``"w|"`` stream mode, without its extra buffer copies (about 0.5 s CPU/GiB).
    """

    def __init__(self, out: Any, on_bytes: Callable[[int], None] | None = None) -> None:
        self._tar = tarfile.open(  # type: ignore[call-overload]  # noqa: SIM115 - copybufsize: typeshed lags
            fileobj=_Tellable(out), mode="w", format=tarfile.PAX_FORMAT, copybufsize=1 << 20)
        self._on_bytes = on_bytes

    def add_dir(self, relpath: str) -> None:
        info = tarfile.TarInfo(relpath)
        info.type, info.mode = tarfile.DIRTYPE, 0o700
        self._tar.addfile(info)

    def add_file(self, relpath: str, abspath: str, size: int | None = None) -> int | None:
        """Add a file as it is now; returns the size recorded, or None if it vanished."""
        try:
            fh = open(abspath, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return None
        with fh:
            if size is None:
                size = os.fstat(fh.fileno()).st_size
            info = tarfile.TarInfo(relpath)
            info.size, info.mode = size, 0o600
            self._tar.addfile(info, _ExactReader(fh, size, self._on_bytes))
        return size

    def add_open_file(self, relpath: str, fh: BinaryIO) -> int:
        """Add a file the caller opened (and checked) itself, at its current size; returns that size."""
        size = os.fstat(fh.fileno()).st_size
        info = tarfile.TarInfo(relpath)
        info.size, info.mode = size, 0o600
        self._tar.addfile(info, _ExactReader(fh, size, self._on_bytes))
        return size

    def add_bytes(self, relpath: str, data: bytes) -> None:
        info = tarfile.TarInfo(relpath)
        info.size, info.mode = len(data), 0o600
        self._tar.addfile(info, io.BytesIO(data))

    def add_json(self, relpath: str, obj: Mapping[str, Any]) -> None:
        self.add_bytes(relpath, json.dumps(obj, sort_keys=True).encode())

    def close(self) -> None:
        self._tar.close()


def scan_changed_pages(
    fh: BinaryIO, *, since_lsn: int, base_blocks: int, on_bytes: Callable[[int], None] | None = None
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(first_block, payload)`` per 8 MiB read that has pages to keep.

    A page is kept when its LSN is at or past ``since_lsn`` (the full's start),
    when it lies past the full's length, or when its LSN is 0 (new, extended or
    zeroed pages: a truncated-then-re-extended page must not keep the full's
    stale content). Payload: u32 n_pages, u32 n_zero, the block numbers of both
    lists, then the n_pages pages; all-zero pages carry no bytes.
    """
    block = 0
    while True:
        buf = fh.read(READ_CHUNK)
        if not buf:
            return
        if on_bytes:
            on_bytes(len(buf))
        if len(buf) % PAGE_SIZE:
            buf = buf + bytes(PAGE_SIZE - len(buf) % PAGE_SIZE)  # a torn tail: WAL repairs it
        n = len(buf) // PAGE_SIZE
        pages: list[int] = []
        zeros: list[int] = []
        unpack = _PAGE_LSN.unpack_from
        for i in range(n):
            off = i * PAGE_SIZE
            hi, lo = unpack(buf, off)
            lsn = (hi << 32) | lo
            blk = block + i
            if lsn == 0:
                if buf[off:off + PAGE_SIZE] == ZERO_PAGE:
                    zeros.append(blk)
                else:
                    pages.append(blk)
            elif lsn >= since_lsn or blk >= base_blocks:
                pages.append(blk)
        if pages or zeros:
            view = memoryview(buf)
            parts: list[bytes | memoryview] = [
                struct.pack(f"<II{len(pages)}I{len(zeros)}I", len(pages), len(zeros), *pages, *zeros)]
            parts.extend(view[(b - block) * PAGE_SIZE:(b - block + 1) * PAGE_SIZE] for b in pages)
            yield block, b"".join(parts)
        block += n


def apply_pages(target_file: Path | str, payload: bytes, *, fd: int | None = None) -> int:
    """Write a ``scan_changed_pages`` payload into a file; returns pages written.

    ``fd``: write through this descriptor (opened by the caller without following links) instead.
    """
    if len(payload) < 8:
        raise IntegrityError(f"page set for {target_file} is truncated")
    n_pages: int
    n_zero: int
    n_pages, n_zero = struct.unpack_from("<II", payload, 0)
    blocks = struct.unpack_from(f"<{n_pages}I{n_zero}I", payload, 8)
    data_off = 8 + 4 * (n_pages + n_zero)
    if len(payload) != data_off + n_pages * PAGE_SIZE:
        raise IntegrityError(f"page set for {target_file} has the wrong length")
    own = fd is None
    if fd is None:
        fd = os.open(target_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        view = memoryview(payload)
        for i, blk in enumerate(blocks[:n_pages]):
            start = data_off + i * PAGE_SIZE
            os.pwrite(fd, view[start:start + PAGE_SIZE], blk * PAGE_SIZE)
        for blk in blocks[n_pages:]:
            os.pwrite(fd, ZERO_PAGE, blk * PAGE_SIZE)
    finally:
        if own:
            os.close(fd)
    return n_pages + n_zero


def safe_member_path(root: Path, name: str) -> Path:
    """Refuse archive members that would escape the target directory."""
    if name.startswith("/") or "\\" in name or "\x00" in name or ".." in name.split("/"):
        raise IntegrityError(f"archive member {name!r} has an unsafe path; refusing to restore it")
    return root / name


def pages_member_name(relpath: str, first_block: int) -> str:
    return f"{PAGES_PREFIX}{relpath}/{first_block}"


def parse_pages_member(name: str) -> str:
    """``.drkit/pages/base/5/16384/0`` → ``base/5/16384``."""
    return name[len(PAGES_PREFIX):].rsplit("/", 1)[0]
