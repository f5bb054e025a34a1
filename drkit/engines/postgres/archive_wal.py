#!/usr/bin/python3
"""PostgreSQL ``archive_command``: put one finished WAL file into drkit's local spool, safely.

Usage (installed by ``drkit setup DB``)::

    archive_command = '/usr/bin/python3 SPOOL/.drkit-archive-wal.py %p SPOOL/%f'

It runs as the PostgreSQL OS user, which may not be able to read drkit's
virtualenv, so this file uses the standard library only and is copied next to
the spool. Exit status is what PostgreSQL acts on:

* 0 — the file is in the spool, durably (copied to a temp name, fsync'd,
  renamed, directory fsync'd), or an identical copy was already there (a retry
  after a crash, or the same segment archived twice) and has been fsync'd,
  file and directory, before saying so: the run that renamed it may have died
  before its directory fsync;
* 1 — a *different* file (or something that is not a regular file) already
  exists under that name: refuse, so the conflict is visible in
  ``pg_stat_archiver`` instead of silently losing WAL;
* 2 — usage or I/O error (PostgreSQL retries).
"""

import hashlib
import os
import sys

BUF = 1 << 20


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(BUF)
            if not block:
                return h.hexdigest()
            h.update(block)


def _fsync_path(path: str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    _fsync_path(path, os.O_RDONLY | os.O_DIRECTORY)


def archive(src: str, dst: str) -> int:
    spool = os.path.dirname(dst) or "."
    if os.path.lexists(dst):
        if os.path.islink(dst) or not os.path.isfile(dst):
            sys.stderr.write(f"drkit-archive-wal: {dst} exists and is not a regular file; refusing\n")
            return 1
        if _digest(src) == _digest(dst):
            # Already there, from a run that may have been killed between its rename and its directory
            # fsync: make the file and its name durable before PostgreSQL may recycle the segment.
            _fsync_path(dst, os.O_RDONLY | os.O_NOFOLLOW)
            _fsync_dir(spool)
            return 0
        sys.stderr.write(f"drkit-archive-wal: {dst} exists with different content; refusing\n")
        return 1
    tmp = os.path.join(spool, f".{os.path.basename(dst)}.part-{os.getpid()}")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while True:
                block = fin.read(BUF)
                if not block:
                    break
                fout.write(block)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
        _fsync_dir(spool)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: drkit-archive-wal.py WAL_PATH(%p) SPOOL/%f\n")
        return 2
    try:
        return archive(argv[1], argv[2])
    except OSError as exc:
        sys.stderr.write(f"drkit-archive-wal: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
