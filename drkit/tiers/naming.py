"""What a backup's objects are called in a store, the labels a store keeps about them, where a tier is.

Every backup is three objects under ``<database>/<backup id>/`` (data, manifest, sealed descriptor). A
store that keeps labels (:attr:`drkit.storage.StoreFeatures.metadata` / ``index_tags``) also describes
the data object without the catalog: database, kind, id, position range, lineage, hash. Labels are
engine-neutral: positions are plain decimal numbers, whatever notation the engine shows them in.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, BinaryIO

from drkit.catalog.records import BackupRecord

if TYPE_CHECKING:  # `drkit status` imports tier_location: no cryptography, stores or runtime for it
    from drkit.config import Policy
    from drkit.runtime import Runtime
    from drkit.storage import Store

__all__ = ["DATA_OBJECT", "DESCRIPTOR_OBJECT", "MANIFEST_OBJECT", "OBJECTS", "blob_labels", "label_copy",
           "object_key", "open_writer", "same_location", "tier_location"]

DATA_OBJECT = "data.drk"
MANIFEST_OBJECT = "manifest.drk"
DESCRIPTOR_OBJECT = "backup.json"
OBJECTS = (DATA_OBJECT, MANIFEST_OBJECT, DESCRIPTOR_OBJECT)


def object_key(backup: BackupRecord, name: str) -> str:
    """Where a backup's object lives in a store: ``<database>/<backup id>/<name>``, also its stream context."""
    from drkit.binding import stream_context

    return stream_context(backup, name)


def position_range(backup: BackupRecord) -> str:
    """The backup's positions as ``<start>-<end>`` in plain decimal (empty if it has none); any engine."""
    if backup.start_lsn is None or backup.end_lsn is None:
        return ""
    return f"{backup.start_lsn}-{backup.end_lsn}"


def blob_labels(backup: BackupRecord) -> tuple[dict[str, str], dict[str, str]]:
    """Blob metadata and index tags that let a store describe a backup without the catalog."""
    meta = {"drkit_database": backup.database, "drkit_kind": backup.kind, "drkit_backup": backup.id,
            "drkit_lsn_range": position_range(backup), "drkit_lineage": backup.lineage or "",
            "drkit_base": backup.base_id or "", "drkit_sha256": backup.sha256 or "",
            "drkit_key_id": backup.key_id or "", "drkit_format": backup.format or ""}
    tags = {"database": backup.database, "kind": backup.kind, "backup": backup.id[:256]}
    return {k: v for k, v in meta.items() if v}, tags


def open_writer(store: Store, key: str, backup: BackupRecord | None = None,
                access_tier: str | None = None) -> AbstractContextManager[BinaryIO]:
    """``store.writer(key)``, with blob metadata, tags and access tier (a store keeps those it declares)."""
    if backup is None:
        return store.writer(key, access_tier=access_tier)
    meta, tags = blob_labels(backup)
    return store.writer(key, metadata=meta, tags=tags, access_tier=access_tier)


def label_copy(rt: Runtime, tier: str, backup: BackupRecord) -> None:
    """Label a backup's data object once its positions and hash are known, as far as the store keeps labels.

    Metadata and index tags are replaced where the tier's store declares them; a store without labels
    (a filesystem) is left alone: the catalog and ``backup.json`` say the same.
    """
    store = rt.store(tier)
    labels = store.labels()
    if labels is None:
        return
    meta, tags = blob_labels(backup)
    key = object_key(backup, DATA_OBJECT)
    if store.features.metadata:
        labels.set_metadata(key, meta)
    if store.features.index_tags:
        labels.set_tags(key, tags)


def tier_location(policy: Policy, tier: str) -> str:
    """Where a tier keeps its objects, from the policy alone (two tiers of one container are one place)."""
    cfg = policy.tiers[tier]
    if cfg.store == "filesystem":
        return f"fs:{policy.tier_path(tier)}"
    account = cfg.account_url or cfg.connection_string_env or cfg.secret_block
    return f"azure:{account}/{cfg.container}/{cfg.prefix}"


def same_location(policy: Policy, a: str, b: str) -> bool:
    """Tiers ``a`` and ``b`` share their objects (Azure: one container, two access tiers)."""
    return policy.tiers[a].store == "azure" and tier_location(policy, a) == tier_location(policy, b)
