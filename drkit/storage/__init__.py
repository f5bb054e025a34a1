"""Storage tiers: where backup bytes are kept (local filesystem now; offsite tiers plug in via Store)."""

from drkit.storage.base import Store, validate_key
from drkit.storage.filesystem import FilesystemStore

__all__ = ["FilesystemStore", "Store", "validate_key"]
