"""The Store protocol: what drkit needs from a storage tier (local disk, offsite, object storage).

Backups, WAL archives and the catalog's copy bookkeeping talk to this protocol
only, so adding a tier never touches the backup or restore code. The one hard
promise every implementation keeps: an object is either completely written and
visible under its key, or absent. A writer that fails leaves nothing a reader,
``list()`` or retention could mistake for a backup.

Optional features are declared, not probed (as pgBackRest's storage drivers
declare feature bits): every store says in :attr:`Store.features` what it can do
beyond the core operations, and hands out the typed interface for it —
:meth:`Store.access_tiers` (Hot/Cool/Archive, rehydration) and
:meth:`Store.labels` (metadata and index tags set after a write) — or ``None``.
Callers branch on that, never on the store's class or attributes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable

from drkit.errors import StoreError

__all__ = ["NO_FEATURES", "AccessTiers", "ObjectLabels", "Store", "StoreFeatures", "TierState", "validate_key"]


@dataclass(frozen=True)
class StoreFeatures:
    """What a store can do beyond the core :class:`Store` operations; every field defaults to "no".

    ``access_tiers``: each object has an access tier (e.g. Hot/Cool/Archive) that can be read and changed
    in place (:meth:`Store.access_tiers`). ``rehydration``: an object can sit in a tier it cannot be read
    from (Archive) and must be brought back online first. ``metadata`` / ``index_tags``: objects carry
    key/value metadata / searchable index tags, settable after the write (:meth:`Store.labels`).
    """

    access_tiers: bool = False
    rehydration: bool = False
    metadata: bool = False
    index_tags: bool = False


NO_FEATURES = StoreFeatures()
"""A store with the core operations only (a filesystem)."""


@dataclass(frozen=True)
class TierState:
    """An object's access tier as its store reports it.

    ``archive_status`` is e.g. ``"rehydrate-pending-to-hot"`` while a rehydration runs
    (the tier stays ``"Archive"`` until it completes); Azurite never reports one.
    """

    tier: str | None
    archive_status: str | None = None
    rehydrate_priority: str | None = None
    changed_at: datetime | None = None

    @property
    def archived(self) -> bool:
        """True while the object cannot be read (in Archive, rehydrating or not)."""
        return self.tier == "Archive"

    @property
    def rehydrating(self) -> bool:
        return bool(self.archive_status and self.archive_status.startswith("rehydrate-pending-"))


class AccessTiers(Protocol):
    """Access tiers of a store's objects: read, change, and bring archived objects back online."""

    def get_tier(self, key: str) -> TierState:
        """The object's current tier; ObjectNotFoundError if there is none."""
        ...

    def set_tier(self, key: str, tier: str) -> None:
        """Move the object to ``tier``; leaving an offline tier needs :meth:`start_rehydrate`."""
        ...

    def start_rehydrate(self, key: str, to_tier: str = "Hot", priority: str = "Standard") -> TierState:
        """Start bringing an archived object back online (idempotent); the state right after."""
        ...

    def rehydration_time(self, priority: str | None = None) -> str:
        """What the service says a rehydration at ``priority`` takes, for messages and flow logs."""
        ...


class ObjectLabels(Protocol):
    """Metadata and index tags of a store's objects, read and replaced after the write.

    A store may keep only one of the two: use the kinds its ``features`` declare.
    """

    def metadata(self, key: str) -> dict[str, str]: ...

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> None:
        """Replace the object's metadata."""
        ...

    def tags(self, key: str) -> dict[str, str]: ...

    def set_tags(self, key: str, tags: Mapping[str, str]) -> None:
        """Replace the object's index tags."""
        ...


@runtime_checkable
class Store(Protocol):
    """One storage tier. Keys are "/"-separated relative paths (see :func:`validate_key`)."""

    name: str  # the tier this store serves, e.g. "local" or "offsite"

    @property
    def features(self) -> StoreFeatures:
        """What this store can do beyond the core operations (fixed for the store's lifetime)."""
        ...

    def access_tiers(self) -> AccessTiers | None:
        """The object access tiers, or None if ``features.access_tiers`` is False."""
        ...

    def labels(self) -> ObjectLabels | None:
        """Object metadata and index tags, or None if the store keeps neither (see ``features``)."""
        ...

    def writer(
        self,
        key: str,
        *,
        metadata: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        access_tier: str | None = None,
    ) -> AbstractContextManager[BinaryIO]:
        """Yield a writable file for ``key``.

        ``metadata``, ``tags`` and ``access_tier`` label the object where the store's
        ``features`` say it keeps them (Azure: blob metadata, index tags, access tier);
        others ignore them.

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
