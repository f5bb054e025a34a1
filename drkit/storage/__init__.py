"""Storage tiers: where backup bytes are kept (a filesystem; Azure Blob Storage in drkit.storage.azure)."""

from drkit.storage.base import NO_FEATURES, AccessTiers, ObjectLabels, Store, StoreFeatures, TierState, validate_key
from drkit.storage.filesystem import FilesystemStore

__all__ = [
    "NO_FEATURES",
    "AccessTiers",
    "FilesystemStore",
    "ObjectLabels",
    "Store",
    "StoreFeatures",
    "TierState",
    "validate_key",
]
