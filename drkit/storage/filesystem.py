"""A storage tier on a local or mounted filesystem, with crash-safe atomic writes.

Why this exists: the first copy of every backup lands on a filesystem, and a
crash, full disk or killed process mid-write must never leave something that
looks like a complete backup. Objects are therefore written to a hidden
temporary file in the destination directory, fsynced, renamed over the final
name (atomic on POSIX) and the directory fsynced, so after a crash a key holds
either the old complete object, the new complete object, or nothing.

Layout: key ``a/b/c`` is the file ``<root>/a/b/c``. In-progress writes are
``<root>/a/b/.c.part-<32 hex>``; they are never listed, and
:meth:`FilesystemStore.cleanup_partials` removes ones left behind by crashes.
Files are created 0o640 and directories 0o750.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO

from drkit.errors import ObjectNotFoundError, StoreError
from drkit.storage.base import NO_FEATURES, AccessTiers, ObjectLabels, StoreFeatures, validate_key

if TYPE_CHECKING:
    from drkit.storage.base import Store

__all__ = ["FILE_MODE", "DIR_MODE", "FilesystemStore", "StoredFile"]

FILE_MODE = 0o640
DIR_MODE = 0o750
_PARTIAL_RE = re.compile(r"^\..*\.part-[0-9a-f]{32}$")


@dataclass(frozen=True)
class StoredFile:
    """One file under a filesystem store's root (see :meth:`FilesystemStore.files`)."""

    key: str
    size: int
    modified: float  # POSIX mtime
    partial: bool  # an in-progress (or abandoned) write, not an object


def is_partial_name(name: str) -> bool:
    """True for the temporary file names used by in-progress writes."""
    return _PARTIAL_RE.match(name) is not None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def _close_quietly(f: IO[bytes]) -> None:
    with suppress(OSError):
        f.close()


class FilesystemStore:
    """Store objects as files under ``root`` (created on first write)."""

    def __init__(self, root: Path, name: str = "local") -> None:
        self.root = Path(root)
        self.name = name

    def __repr__(self) -> str:
        return f"FilesystemStore(root={str(self.root)!r}, name={self.name!r})"

    def describe(self) -> str:
        return f"filesystem store {self.name!r} at {self.root}"

    # -- declared features: none beyond the core (no access tiers, no labels)

    @property
    def features(self) -> StoreFeatures:
        return NO_FEATURES

    def access_tiers(self) -> AccessTiers | None:
        return None

    def labels(self) -> ObjectLabels | None:
        return None

    # -- paths

    def _path(self, key: str) -> Path:
        validate_key(key)
        segments = key.split("/")
        if is_partial_name(segments[-1]):
            raise StoreError(
                f"invalid object key {key!r}: names like '.<name>.part-<hex>' are reserved "
                "for in-progress writes"
            )
        return self.root.joinpath(*segments)

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and missing parents with DIR_MODE, making the new entries durable."""
        missing: list[Path] = []
        probe = directory
        while not probe.is_dir():
            missing.append(probe)
            if probe.parent == probe:
                break
            probe = probe.parent
        for path in reversed(missing):
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                if not path.is_dir():
                    raise
                continue
            os.chmod(path, DIR_MODE)
            _fsync_dir(path.parent)

    # -- Store protocol

    @contextmanager
    def writer(
        self,
        key: str,
        *,
        metadata: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        access_tier: str | None = None,
    ) -> Iterator[BinaryIO]:
        """See Store.writer; labels (metadata, tags, access tier) do not apply to files and are ignored."""
        final = self._path(key)
        parent = final.parent
        tmp = parent / f".{final.name}.part-{uuid.uuid4().hex}"
        try:
            self._make_dirs(parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise StoreError(f"cannot create {key!r} in {self.describe()}: {exc.strerror or exc}") from exc
        try:
            os.fchmod(fd, FILE_MODE)
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        try:
            yield f
        except BaseException:
            _close_quietly(f)
            _unlink_quietly(tmp)
            raise
        try:
            if f.closed:  # the caller closed it: data is flushed, make it durable by path
                sync_fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(sync_fd)
                finally:
                    os.close(sync_fd)
            else:
                f.flush()
                os.fsync(f.fileno())
                f.close()
            os.replace(tmp, final)
        except BaseException as exc:
            _close_quietly(f)
            _unlink_quietly(tmp)
            if isinstance(exc, OSError):
                raise StoreError(
                    f"cannot commit {key!r} to {self.describe()}: {exc.strerror or exc}"
                ) from exc
            raise
        try:
            _fsync_dir(parent)
        except OSError as exc:
            raise StoreError(
                f"wrote {key!r} to {self.describe()} but could not make it durable "
                f"(directory fsync failed: {exc.strerror or exc})"
            ) from exc

    @contextmanager
    def reader(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the with-block below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object {key!r} in {self.describe()}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {key!r} from {self.describe()}: {exc.strerror or exc}") from exc
        with f:
            yield f

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object {key!r} in {self.describe()}") from None
        except OSError as exc:
            raise StoreError(f"cannot stat {key!r} in {self.describe()}: {exc.strerror or exc}") from exc
        if not path.is_file():
            raise ObjectNotFoundError(f"no object {key!r} in {self.describe()}")
        return st.st_size

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            raise StoreError(f"cannot delete {key!r} from {self.describe()}: {exc.strerror or exc}") from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        if "\x00" in prefix or "\\" in prefix or prefix.startswith("/"):
            raise StoreError(f"invalid key prefix {prefix!r}")
        head = prefix.rpartition("/")[0]
        start = self.root
        if head:
            validate_key(head)
            start = self.root.joinpath(*head.split("/"))
        keys = [key for key in self._walk(start) if key.startswith(prefix)]
        keys.sort()
        return iter(keys)

    def _walk(self, start: Path) -> Iterator[str]:
        """Keys of committed objects under ``start`` (unsorted)."""
        if not start.is_dir():
            return
        root = str(self.root)
        for dirpath, _dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, root)
            base = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            for filename in filenames:
                if not is_partial_name(filename):
                    yield base + filename

    def files(self, prefix: str = "") -> tuple[StoredFile, ...]:
        """Committed objects and in-progress (or abandoned) writes whose path starts with ``prefix``, sorted.

        For a catalog check: sizes and modification times in one walk. A partial's ``key`` is the path of
        its temporary file (``a/b/.c.part-<hex>``), which no reader, ``list()`` or ``delete()`` accepts.
        """
        if "\x00" in prefix or "\\" in prefix or prefix.startswith("/"):
            raise StoreError(f"invalid key prefix {prefix!r}")
        head = prefix.rpartition("/")[0]
        start = self.root.joinpath(*validate_key(head).split("/")) if head else self.root
        found: list[StoredFile] = []
        if not start.is_dir():
            return ()
        for dirpath, _dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, self.root)
            base = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            for filename in filenames:
                key = base + filename
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.lstat(os.path.join(dirpath, filename))
                except FileNotFoundError:
                    continue  # finished or removed meanwhile
                found.append(StoredFile(key, st.st_size, st.st_mtime, is_partial_name(filename)))
        return tuple(sorted(found, key=lambda f: f.key))

    def cleanup_partials(self, older_than_seconds: float = 3600, prefix: str = "") -> int:
        """Remove temporary files of writes that stopped more than ``older_than_seconds`` ago.

        Age is judged by modification time, so a write still in progress (its
        file keeps changing) is not touched. ``prefix`` limits it to one directory
        (e.g. ``db/backup-id/``, whose writer is known to be dead: age 0). Returns
        the number of files removed.
        """
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than_seconds
        removed = 0
        for f in self.files(prefix):
            if not f.partial:
                continue
            path = self.root.joinpath(*f.key.split("/"))
            try:
                if path.lstat().st_mtime >= cutoff:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue  # finished or cleaned up concurrently
            except OSError as exc:
                raise StoreError(
                    f"cannot remove stale partial file {path} in {self.describe()}: {exc.strerror or exc}"
                ) from exc
            removed += 1
        return removed


if TYPE_CHECKING:

    def _conforms_to_store(store: FilesystemStore) -> Store:
        return store
