"""The local WAL spool: what ``archive_command`` left there, and which run of it to ship next.

Choosing the next batch is a pure function (:func:`plan_batch`) of the spool's
file names and what the catalog says was shipped before, so the gap and
timeline rules are unit-testable without a server.

The spool is writable by the database's OS user, and drkit may read it as
root. So only regular files are taken from it: :func:`list_spool` refuses an
entry named like a WAL file that is anything else (a symbolic link, a
directory, a FIFO), and :func:`open_spool_file` opens without following links
and checks again what it opened. A refused entry is an error naming it, never
skipped: the chain needs that segment.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from drkit.engines.postgres.lsn import (
    DEFAULT_SEGMENT_SIZE,
    is_segment_name,
    parse_segment_name,
    segment_name,
    segment_start_lsn,
)
from drkit.errors import EngineError, WalGapError


@dataclass(frozen=True)
class Anchor:
    """Where the log chain must continue from."""

    timeline: int
    next_segno: int  # the first segment the next batch must contain
    after: str  # what it continues, for messages ("log backup X", "full backup Y")


@dataclass(frozen=True)
class WalBatch:
    timeline: int
    segments: tuple[str, ...]
    history_files: tuple[str, ...]
    start_lsn: int
    end_lsn: int

    @property
    def start_wal(self) -> str:
        return self.segments[0]

    @property
    def end_wal(self) -> str:
        return self.segments[-1]


STALE_PART_SECONDS = 15 * 60
"""Age after which an archive-script temp file is removed even if a process with its PID is alive."""

_PART_RE = re.compile(r"^\..+\.part-(\d+)$")  # the archive script's temp files: .<name>.part-<pid>


def _is_history_name(name: str) -> bool:
    return name.endswith(".history") and len(name) == 16 and all(c in "0123456789ABCDEF" for c in name[:8])


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _refused(spool: Path, name: str, what: str) -> EngineError:
    return EngineError(
        f"refusing WAL spool entry {spool / name}: it is {what}, not a regular file written by archive_command "
        "(drkit reads the spool with its own privileges); inspect and remove it, then run the log backup again")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def _scan(spool: Path) -> tuple[list[str], list[str], list[tuple[str, str]], list[str]]:
    """(segments, histories, (refused name, why), archive-script temp files) in the spool, unsorted."""
    segments: list[str] = []
    histories: list[str] = []
    refused: list[tuple[str, str]] = []
    parts: list[str] = []
    try:
        entries = os.scandir(spool)
    except FileNotFoundError:
        return [], [], [], []
    with entries:
        for entry in entries:
            name = entry.name
            if is_segment_name(name) or _is_history_name(name):
                if entry.is_file(follow_symlinks=False):  # d_type, else lstat: links are not followed
                    (segments if is_segment_name(name) else histories).append(name)
                else:
                    try:
                        why = _kind(entry.stat(follow_symlinks=False).st_mode)
                    except FileNotFoundError:
                        continue
                    refused.append((name, why))
            elif _PART_RE.match(name):
                parts.append(name)
    return segments, histories, refused, parts


def remove_stale_parts(spool: Path, names: list[str] | None = None, *,
                       older_than: float = STALE_PART_SECONDS) -> list[str]:
    """Remove the archive script's temp files (``.<segment>.part-<pid>``) that a killed run left behind.

    A temp file is stale when no process has its PID, or when it is older than ``older_than`` seconds
    (PIDs are reused). Removing one that is still being written is harmless: the script's rename then
    fails, it exits 2, and PostgreSQL archives the segment again. Returns the names removed.
    """
    if names is None:
        names = _scan(spool)[3]
    removed: list[str] = []
    now = time.time()
    for name in names:
        m = _PART_RE.match(name)
        if m is None:
            continue
        try:
            st = os.lstat(spool / name)
        except FileNotFoundError:
            continue
        if _pid_alive(int(m.group(1))) and now - st.st_mtime < older_than:
            continue
        try:
            os.unlink(spool / name)  # unlink never follows a link
        except FileNotFoundError:
            continue
        removed.append(name)
    return removed


def list_spool(spool: Path) -> tuple[list[str], list[str]]:
    """(segment names, timeline history file names) currently in the spool, sorted.

    Raises EngineError naming an entry that has a WAL file's name but is not a regular file. The archive
    script's stale temp files are removed on the way (:func:`remove_stale_parts`).
    """
    segments, histories, refused, parts = _scan(spool)
    if refused:
        name, why = sorted(refused)[0]
        more = f" ({len(refused) - 1} more such entries)" if len(refused) > 1 else ""
        raise EngineError(str(_refused(spool, name, why)) + more)
    if parts:
        remove_stale_parts(spool, parts)
    return sorted(segments), sorted(histories)


def open_spool_file(spool: Path, name: str) -> BinaryIO | None:
    """Open the spool entry ``name`` for reading, never following a link; None when it is gone.

    Checked before and after opening (so an entry swapped in between is caught too): it must be a
    regular file, and a file with several names must belong to the spool's owner (a hard link to
    someone else's file is refused). Anything else raises EngineError naming it.
    """
    if not name or "/" in name or name in (".", ".."):
        raise EngineError(f"not a WAL spool entry name: {name!r}")
    dir_fd = os.open(spool, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            before = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(before.st_mode):
            raise _refused(spool, name, _kind(before.st_mode))
        try:
            # O_NONBLOCK: a FIFO swapped in after the lstat must not block the open (it is refused below).
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refused(spool, name, "a symbolic link") from None
            raise
        owner = os.fstat(dir_fd).st_uid
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refused(spool, name, _kind(st.st_mode))
        if st.st_nlink > 1 and st.st_uid != owner:
            raise _refused(spool, name, f"a hard link to a file of uid {st.st_uid} ({st.st_nlink} names)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def plan_batch(
    segments: list[str],
    histories: list[str],
    anchor: Anchor,
    *,
    upto_segno: int,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> WalBatch | None:
    """The unbroken run of segments from ``anchor.next_segno`` through ``upto_segno`` on the anchor's timeline.

    Returns None when there is nothing new. Raises WalGapError when a segment
    is missing or the server switched timeline: the chain cannot continue
    until a new full backup is taken.
    """
    if upto_segno < anchor.next_segno:
        return None
    on_tli: dict[int, str] = {}
    for name in segments:
        tli, segno = parse_segment_name(name, segment_size)
        if tli > anchor.timeline and segno <= upto_segno:
            raise WalGapError(
                f"timeline switch: the spool holds {name} on timeline {tli}, but the log chain after "
                f"{anchor.after} is on timeline {anchor.timeline} (a promotion or PITR happened); "
                "take a new full backup (drkit backup full DB) to start a chain on the new timeline"
            )
        if tli == anchor.timeline:
            on_tli[segno] = name
    wanted = range(anchor.next_segno, upto_segno + 1)
    missing = [s for s in wanted if s not in on_tli]
    if missing:
        first_missing = segment_name(anchor.timeline, missing[0], segment_size)
        present = [on_tli[s] for s in wanted if s in on_tli]
        around = f"; the spool has {present[0]} .. {present[-1]}" if present else "; the spool has none of them"
        raise WalGapError(
            f"WAL gap after {anchor.after}: segment {first_missing} is missing ({len(missing)} missing)"
            f"{around}. Point-in-time restore past this gap is impossible; take a new full backup "
            "(drkit backup full DB) and check archive_command / pg_stat_archiver"
        )
    names = tuple(on_tli[s] for s in wanted)
    hist = tuple(h for h in histories if int(h[:8], 16) <= anchor.timeline)
    return WalBatch(
        timeline=anchor.timeline,
        segments=names,
        history_files=hist,
        start_lsn=segment_start_lsn(anchor.next_segno, segment_size),
        end_lsn=segment_start_lsn(upto_segno + 1, segment_size),
    )


def prune_spool(spool: Path, upto: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Remove shipped segments (same or older timeline, segno ≤ upto's); returns how many."""
    up_tli, up_segno = parse_segment_name(upto, segment_size)
    removed = 0
    for name in _scan(spool)[0]:  # not list_spool: pruning after a backup never fails on a bad entry
        tli, segno = parse_segment_name(name, segment_size)
        if tli <= up_tli and segno <= up_segno:
            try:
                os.unlink(spool / name)
                removed += 1
            except FileNotFoundError:
                pass
    return removed
