"""File operations that never follow a link someone else planted.

drkit runs as root and lays restored data directories down for the database's OS user, in places
that user may be able to write (the parent directory of ``--into``, the log file and the WAL
directory beside it). A database superuser can act as that OS user (``COPY … TO PROGRAM``), so a
symbolic link it plants must never redirect one of root's writes, reads or chowns.

:class:`SafeDir` is an open directory; everything below it is reached component by component with
``O_NOFOLLOW`` relative to directory descriptors, so no link inside is ever followed. Top-level
paths (a policy's directories, ``--into``) may go through links root or drkit's own user made (an
administrator's choice), never through one another user owns (:func:`trusted_path`,
:func:`open_leaf`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path
from types import TracebackType

from drkit.errors import EngineError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LINK_ERRNOS = (errno.ELOOP, errno.ENOTDIR)


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def rel_parts(rel: str) -> list[str]:
    """``a/b/c`` → its components; refuses empty, ``.``/``..`` and NUL components and absolute paths."""
    parts = rel.split("/")
    if "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        raise EngineError(f"unsafe relative path {rel!r}; refusing to use it")
    return parts


def trusted_path(path: Path) -> Path:
    """``path`` absolute with its links resolved, refusing a link that neither root nor drkit's user owns."""
    path = Path(os.path.abspath(path))
    current = Path("/")
    for part in path.parts[1:]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            break
        if stat.S_ISLNK(st.st_mode) and not _trusted_owner(st.st_uid):
            raise EngineError(f"{current} is a symbolic link owned by uid {st.st_uid}; refusing to follow it")
    return path.resolve()


def open_leaf(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open ``path``; its last component may be a link only if root or drkit's own user made it."""
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            return os.open(path.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in _LINK_ERRNOS:
                raise
            st = os.lstat(path.name, dir_fd=parent)
            if not stat.S_ISLNK(st.st_mode):
                raise
            if not _trusted_owner(st.st_uid):
                raise EngineError(f"{path} is a symbolic link owned by uid {st.st_uid}; "
                                  "refusing to follow it") from None
            return os.open(path.name, flags | os.O_CLOEXEC, mode, dir_fd=parent)
    finally:
        os.close(parent)


def chown_fd_tree(fd: int, uid: int, gid: int) -> None:
    """chown the directory open as ``fd`` and everything below it; links are changed, never followed."""
    os.fchown(fd, uid, gid)
    for _root, dirs, files, root_fd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
        for name in (*dirs, *files):
            os.chown(name, uid, gid, dir_fd=root_fd, follow_symlinks=False)


class SafeDir:
    """An open directory: every path below it is walked without following links."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def open(cls, path: Path, *, create: bool = False, mode: int = 0o755, mine: bool = False) -> SafeDir:
        """Open the absolute, link-free ``path`` from ``/``; a link anywhere on it is refused.

        ``create`` makes missing components (``mode``); ``mine`` requires the directory to be owned by
        this process's user (one drkit made and nobody swapped).
        """
        if not path.is_absolute():
            raise EngineError(f"{path} is not an absolute path")
        fd = os.open("/", _DIR_FLAGS)
        try:
            for i, part in enumerate(path.parts[1:], start=2):
                child = _open_dir_at(fd, part, Path(*path.parts[:i]), create=create, mode=mode)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        out = cls(fd, path)
        if mine:
            out.require_mine()
        return out

    def __enter__(self) -> SafeDir:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def require_mine(self) -> None:
        st = os.fstat(self.fd)
        if st.st_uid != os.geteuid():
            raise EngineError(f"{self.path} is owned by uid {st.st_uid}, not by drkit; it was replaced "
                              "while drkit was using it, refusing to write into it")

    def subdir(self, rel: str, *, create: bool = False, mode: int = 0o700) -> SafeDir:
        """The directory ``rel`` below this one (``create``: make missing components with ``mode``)."""
        fd = os.dup(self.fd)
        path = self.path
        try:
            for part in rel_parts(rel):
                path = path / part
                child = _open_dir_at(fd, part, path, create=create, mode=mode)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return SafeDir(fd, path)

    def _split(self, rel: str) -> tuple[SafeDir, str]:
        parts = rel_parts(rel)
        parent = self.subdir("/".join(parts[:-1])) if len(parts) > 1 else SafeDir(os.dup(self.fd), self.path)
        return parent, parts[-1]

    def open_file(self, rel: str, flags: int, mode: int = 0o600) -> int:
        """``os.open`` of ``rel`` with ``O_NOFOLLOW``: a link there is an error, never followed."""
        parent, name = self._split(rel)
        with parent:
            try:
                return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent.fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise EngineError(f"{self.path / rel} is a symbolic link; refusing to follow it") from None
                raise

    def lstat(self, rel: str) -> os.stat_result | None:
        parent, name = self._split(rel)
        with parent:
            try:
                return os.lstat(name, dir_fd=parent.fd)
            except FileNotFoundError:
                return None

    def exists(self, rel: str) -> bool:
        """Whether anything (a link included) is at ``rel``."""
        try:
            return self.lstat(rel) is not None
        except (FileNotFoundError, NotADirectoryError):
            return False

    def write(self, rel: str, data: bytes, *, append: bool = False) -> None:
        """Write ``data`` to ``rel`` (created 0600; truncated, or appended to) without following a link."""
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        fd = self.open_file(rel, flags)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise EngineError(f"{self.path / rel} is not a regular file; refusing to write it")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def read(self, rel: str, *, limit: int = 1 << 24) -> bytes | None:
        """The content of the regular file ``rel`` (None when missing), read without following a link."""
        try:
            fd = self.open_file(rel, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise EngineError(f"{self.path / rel} is not a regular file; refusing to read it")
            if st.st_size > limit:
                raise EngineError(f"{self.path / rel} is {st.st_size} bytes, over the {limit} drkit reads")
            parts = []
            while chunk := os.read(fd, 1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        finally:
            os.close(fd)

    def replace(self, rel: str, data: bytes, *, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
        """Atomically make ``rel`` a new regular file holding ``data`` (``mode``, ``owner`` uid/gid).

        Written to a fresh temporary name (a link or file found there is removed, never followed), synced,
        then renamed over ``rel``: whatever was at ``rel`` (a link included) is replaced, never written through.
        """
        parent, name = self._split(rel)
        tmp = f".{name}.drkit-tmp"
        with parent:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=parent.fd)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=parent.fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if owner is not None:
                    os.fchown(fd, *owner)
                os.fchmod(fd, mode)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                os.unlink(tmp, dir_fd=parent.fd)
                raise
            os.close(fd)
            os.rename(tmp, name, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
            os.fsync(parent.fd)

    def truncate(self, rel: str, size: int) -> None:
        fd = self.open_file(rel, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def unlink(self, rel: str, *, missing_ok: bool = True) -> None:
        parent, name = self._split(rel)
        with parent:
            try:
                os.unlink(name, dir_fd=parent.fd)
            except FileNotFoundError:
                if not missing_ok:
                    raise

    def remove(self, rel: str) -> None:
        """Remove whatever is at ``rel`` (a tree, a file or a link; never what a link points to)."""
        parent, name = self._split(rel)
        with parent:
            try:
                st = os.lstat(name, dir_fd=parent.fd)
            except FileNotFoundError:
                return
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=parent.fd)
            else:
                os.unlink(name, dir_fd=parent.fd)

    def listdir(self) -> list[str]:
        return os.listdir(self.fd)

    def chown_tree(self, uid: int, gid: int) -> None:
        chown_fd_tree(self.fd, uid, gid)


def _open_dir_at(parent_fd: int, name: str, path: Path, *, create: bool, mode: int) -> int:
    for attempt in (0, 1):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create or attempt:
                raise
            with contextlib.suppress(FileExistsError):  # made meanwhile: opened (and checked) next attempt
                os.mkdir(name, mode, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno not in _LINK_ERRNOS:
                raise
            st = os.lstat(name, dir_fd=parent_fd)
            if stat.S_ISLNK(st.st_mode):
                raise EngineError(f"{path} is a symbolic link; refusing to follow it") from None
            raise EngineError(f"{path} is not a directory") from None
    raise AssertionError("unreachable")


def claim_empty_dir(path: Path) -> bool:
    """Make ``path`` a directory only this process's user can use (0700, its owner), creating it if missing.

    False, and nothing changed, when it exists with something in it. Missing parents are made 0755.
    """
    with SafeDir.open(path.parent, create=True) as parent:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path.name, 0o700, dir_fd=parent.fd)
        with parent.subdir(path.name) as target:
            if target.listdir():
                return False
            os.fchown(target.fd, os.geteuid(), os.getegid())
            os.fchmod(target.fd, 0o700)
            if target.listdir():
                raise EngineError(f"{path} was written to while drkit was taking it over; refusing to use it")
    return True


def fresh_private_dir(path: Path) -> None:
    """Replace whatever is at ``path`` (a link is removed, never followed) with a new empty 0700 directory."""
    with SafeDir.open(path.parent) as parent:
        parent.remove(path.name)
        os.mkdir(path.name, 0o700, dir_fd=parent.fd)
        with parent.subdir(path.name) as made:
            made.require_mine()


def clear_file_name(path: Path) -> None:
    """Remove a file or link at ``path`` (not what a link points to), so it can be made afresh."""
    with SafeDir.open(path.parent) as parent:
        st = parent.lstat(path.name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise EngineError(f"{path} is a directory; drkit needs that name for a file")
        parent.unlink(path.name)


def empty_dir(path: Path) -> None:
    """Remove everything inside ``path`` (a directory of ours), never following a link; ``path`` stays."""
    with SafeDir.open(trusted_path(path), mine=True) as target:
        for name in target.listdir():
            target.remove(name)
