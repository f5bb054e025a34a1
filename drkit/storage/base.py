"""The Store protocol: what drkit needs from a storage tier (local disk, offsite, object storage).

Backups, WAL archives and the catalog's copy bookkeeping talk to this protocol
only, so adding a tier never touches the backup or restore code. The one hard
promise every implementation keeps: an object is either completely written and
visible under its key, or absent. A writer that fails leaves nothing a reader,
``list()`` or retention could mistake for a backup.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol, runtime_checkable

from drkit.errors import StoreError

__all__ = ["Store", "validate_key"]


@runtime_checkable
class Store(Protocol):
    """One storage tier. Keys are "/"-separated relative paths (see :func:`validate_key`)."""

    name: str  # the tier this store serves, e.g. "local" or "offsite"

    def writer(
        self,
        key: str,
        *,
        metadata: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        access_tier: str | None = None,
    ) -> AbstractContextManager[BinaryIO]:
        """Yield a writable file for ``key``.

        ``metadata``, ``tags`` and ``access_tier`` label the object where the store
        supports it (Azure: blob metadata, index tags, access tier); others ignore them.

        The object becomes visible atomically, and only when the with-block exits
        cleanly; on an exception it is discarded (no object at ``key``, no
        visible leftovers). An existing object at ``key`` is replaced atomically.
        """
        ...

    def reader(self, key: str) -> AbstractContextManager[BinaryIO]:
        """Yield a readable file for ``key``; ObjectNotFoundError if there is none."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """Size in bytes of the object; ObjectNotFoundError if there is none."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object. Deleting a missing object is not an error."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Committed keys starting with ``prefix``, sorted. In-progress writes are never listed."""
        ...

    def describe(self) -> str:
        """Human-readable location for messages and logs; never contains secrets."""
        ...


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise StoreError naming it.

    A key is one or more "/"-separated segments. Refused: empty keys, absolute
    keys, empty, "." or ".." segments (so "a//b" and "a/" too), backslashes and
    NUL bytes. These rules keep every key inside the store's root on any backend.
    """
    if not isinstance(key, str) or not key:
        raise StoreError(f"invalid object key {key!r}: it must be a non-empty string")
    if "\x00" in key:
        raise StoreError(f"invalid object key {key!r}: it contains a NUL byte")
    if "\\" in key:
        raise StoreError(f"invalid object key {key!r}: use '/' as the separator, not backslash")
    if key.startswith("/"):
        raise StoreError(f"invalid object key {key!r}: it must be relative, not start with '/'")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise StoreError(
                f"invalid object key {key!r}: empty, '.' and '..' path segments are not allowed"
            )
    return key
