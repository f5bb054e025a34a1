"""Moving backups between tiers: copy, move (or re-tier in place), delete — each idempotent.

The retention planner (``drkit.retention``) decides; this module does, one
backup and one tier at a time, and records every change in the catalog only
after the store has it. A copy streams the stored bytes as they are (no key
needed), checks their SHA-256 on the way, and is committed under its final
name only when complete; a crash half-way leaves a 'pending' copy row and no
object, and the next run starts that copy again. Re-running any step after it
completed changes nothing.

Access tiers (Azure's Hot/Cool/Archive) are used only where the tier's store
declares them (:meth:`drkit.storage.Store.access_tiers`): on any other store
nothing is ever archived, so there is nothing to rehydrate or re-archive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime

from drkit import retention
from drkit.catalog.records import BackupRecord, CopyRecord
from drkit.engines.base import ChainModel
from drkit.errors import IntegrityError, StoreError
from drkit.faults import fault_point
from drkit.retention import Action
from drkit.runtime import Runtime
from drkit.storage import Store
from drkit.tiers.naming import (
    DATA_OBJECT,
    DESCRIPTOR_OBJECT,
    MANIFEST_OBJECT,
    OBJECTS,
    object_key,
    open_writer,
    same_location,
)
from drkit.tiers.rebuild import write_descriptor

__all__ = ["VERIFIED_KINDS", "apply_action", "archived_keys", "copy_backup", "delete_copy", "move_backup",
           "plan_retention", "rearchive", "rehydrated", "start_rehydration"]

_BUF = 1 << 20


def _stream_copy(src: Store, dst: Store, key: str, backup: BackupRecord, expect_sha: str | None) -> tuple[int, str]:
    digest = hashlib.sha256()
    n = 0
    with src.reader(key) as fin, open_writer(dst, key, backup) as fout:
        while True:
            block = fin.read(_BUF)
            if not block:
                break
            digest.update(block)
            fout.write(block)
            n += len(block)
        if expect_sha is not None and digest.hexdigest() != expect_sha:
            # raising inside the writer block discards the half-copied object
            raise IntegrityError(f"copy of {key} from {src.name} does not match its SHA-256 "
                                 f"({digest.hexdigest()[:16]}… ≠ {expect_sha[:16]}…); the source copy is damaged")
    return n, digest.hexdigest()


def _copy_row(rt: Runtime, backup: BackupRecord, tier: str) -> CopyRecord | None:
    return next((c for c in rt.catalog.copies(backup.id) if c.tier == tier), None)


def copy_backup(rt: Runtime, backup_id: str, from_tier: str, to_tier: str) -> CopyRecord:
    """Put a complete copy of a backup into ``to_tier``, reading ``from_tier``. Idempotent."""
    backup = rt.catalog.get(backup_id)
    existing = _copy_row(rt, backup, to_tier)
    if existing is not None and existing.status == "complete":
        return existing
    src, dst = rt.store(from_tier), rt.store(to_tier)
    data_key = object_key(backup, DATA_OBJECT)
    if existing is None:
        rt.catalog.add_copy(backup.id, to_tier, data_key, status="pending")
    elif existing.status == "deleted":
        rt.catalog.set_copy_status(backup.id, to_tier, "pending")
    fault_point("tiers.copy")
    if same_location(rt.policy, from_tier, to_tier):
        # One container, two access tiers: the object is already there; set the tier.
        tier, access = rt.policy.tiers[to_tier].access_tier, dst.access_tiers()
        if tier and access is not None:
            access.set_tier(data_key, tier)
        size, sha = src.size(data_key), backup.sha256 or ""
    else:
        size, sha = _stream_copy(src, dst, data_key, backup, backup.sha256)
        for name in (MANIFEST_OBJECT, DESCRIPTOR_OBJECT):
            _stream_copy(src, dst, object_key(backup, name), backup, None)
    fault_point("tiers.copy", "after")
    return rt.catalog.set_copy_status(backup.id, to_tier, "complete", stored_bytes=size, sha256=sha)


def delete_copy(rt: Runtime, backup_id: str, tier: str) -> CopyRecord | None:
    """Remove a backup's copy from ``tier``: catalog first marked, then the objects. Idempotent."""
    backup = rt.catalog.get(backup_id)
    row = _copy_row(rt, backup, tier)
    if row is None or row.status == "deleted":
        return row
    store = rt.store(tier)
    others = [c for c in rt.catalog.copies(backup.id) if c.tier != tier and c.status == "complete"]
    shared = [c for c in others if same_location(rt.policy, tier, c.tier)]
    row = rt.catalog.set_copy_status(backup.id, tier, "deleted")
    fault_point("tiers.delete")
    if not shared:  # the same objects may serve another tier of the same container (blob → archive)
        for name in OBJECTS:
            store.delete(object_key(backup, name))
    fault_point("tiers.delete", "after")
    return row


def move_backup(rt: Runtime, backup_id: str, from_tier: str, to_tier: str) -> CopyRecord:
    """Copy (or re-tier in place) into ``to_tier``, then drop the ``from_tier`` copy. Idempotent."""
    row = copy_backup(rt, backup_id, from_tier, to_tier)
    delete_copy(rt, backup_id, from_tier)
    return row


# -- Archive tier: rehydration before a restore reads ---------------------------------------------------


def archived_keys(rt: Runtime, tier: str, keys: list[str]) -> list[str]:
    """Those of ``keys`` that sit in an offline access tier (Archive) and need rehydrating before a read.

    Empty for a tier whose store declares no rehydration (a filesystem): its objects are always readable.
    """
    store = rt.store(tier)
    access = store.access_tiers()
    if access is None or not store.features.rehydration:
        return []
    return [k for k in keys if access.get_tier(k).archived]


def start_rehydration(rt: Runtime, tier: str, key: str) -> str:
    """Ask the store to bring ``key`` back online (idempotent); returns what the store says it may take.

    StoreError if the tier's store has no access tiers (:func:`archived_keys` never names such a key).
    """
    cfg = rt.policy.tiers[tier]
    store = rt.store(tier)
    access = store.access_tiers()
    if access is None or not store.features.rehydration:
        raise StoreError(f"tier {tier!r} ({store.describe()}) has no access tiers: its objects are always "
                         f"readable, there is nothing to rehydrate ({key})")
    state = access.get_tier(key)
    if state.archived and not state.rehydrating:
        access.start_rehydrate(key, to_tier=cfg.rehydrate_to, priority=cfg.rehydrate_priority)
    return f"{key}: rehydrating to {cfg.rehydrate_to} ({access.rehydration_time(cfg.rehydrate_priority)})"


def rehydrated(rt: Runtime, tier: str, key: str) -> bool:
    """True once ``key`` can be read (always, on a store without access tiers)."""
    access = rt.store(tier).access_tiers()
    return access is None or not access.get_tier(key).archived


def rearchive(rt: Runtime, tier: str, key: str) -> None:
    """Put a rehydrated object back into the tier's access tier (Archive) after the restore read it.

    Nothing to do for a tier without a configured access tier, or whose store has none.
    """
    tier_name = rt.policy.tiers[tier].access_tier
    access = rt.store(tier).access_tiers()
    if tier_name and access is not None:
        access.set_tier(key, tier_name)


# -- retention: plan and apply --------------------------------------------------------------------------


VERIFIED_KINDS = frozenset({"full"})
"""Kinds gated on verification before leaving the first tier. Logs and diffs go offsite at once (RPO): their
bytes are checksummed, and the daily chain verification replays them."""


def plan_retention(rt: Runtime, now: datetime, *, chains: Callable[[str], ChainModel],
                   routine_keeps: bool = False) -> list[Action]:
    """The retention actions for every database of the policy at ``now`` (pure planning over the catalog);
    ``chains`` gives each database's chain rules (``drkit.engines.chain_for``)."""
    backups = [b for b in rt.catalog.list_backups() if b.database in rt.policy.databases]
    return retention.plan(backups, rt.catalog.all_copies(), rt.catalog.active_holds(), rt.policy.tiers, now,
                          verified_only_to=rt.policy.verified_only_tiers(), move_into=rt.policy.move_tiers(),
                          verified_kinds=VERIFIED_KINDS, routine_keeps=routine_keeps, chains=chains)


def apply_action(rt: Runtime, action: Action) -> str:
    """Carry out one action (idempotent); returns what was done, for the sweep's report."""
    if action.kind == "copy":
        assert action.tier_to is not None
        copy_backup(rt, action.backup_id, action.tier_from, action.tier_to)
        done = f"copied to {action.tier_to}"
    elif action.kind == "move":
        assert action.tier_to is not None
        move_backup(rt, action.backup_id, action.tier_from, action.tier_to)
        done = f"moved to {action.tier_to}"
    elif action.kind == "delete":
        delete_copy(rt, action.backup_id, action.tier_from)
        done = f"deleted from {action.tier_from}"
    else:
        return "kept"
    rt.catalog.audit(actor="drkit-retention", action=f"retention.{action.kind}", database=action.database,
                     subject=action.backup_id, detail={"from": action.tier_from, "to": action.tier_to,
                                                       "reason": action.reason})
    write_descriptor(rt, rt.catalog.get(action.backup_id))
    return done
