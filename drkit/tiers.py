"""Moving backups between tiers: copy, move (or re-tier in place), delete — each idempotent.

The retention planner (``drkit.retention``) decides; this module does, one
backup and one tier at a time, and records every change in the catalog only
after the store has it. A copy streams the stored bytes as they are (no key
needed), checks their SHA-256 on the way, and is committed under its final
name only when complete; a crash half-way leaves a 'pending' copy row and no
object, and the next run starts that copy again. Re-running any step after it
completed changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, BinaryIO

from drkit import retention
from drkit.binding import open_descriptor, seal_descriptor, stream_context
from drkit.catalog.records import BackupRecord, CopyRecord
from drkit.config import Policy
from drkit.engines.postgres.lsn import format_lsn
from drkit.errors import BackupNotFoundError, DrkitError, EncryptionKeyError, IntegrityError, StoreError
from drkit.faults import fault_point
from drkit.pipeline import EncryptionKey
from drkit.retention import Action
from drkit.runtime import Runtime
from drkit.storage import Store

DATA_OBJECT = "data.drk"
MANIFEST_OBJECT = "manifest.drk"
DESCRIPTOR_OBJECT = "backup.json"
OBJECTS = (DATA_OBJECT, MANIFEST_OBJECT, DESCRIPTOR_OBJECT)
_BUF = 1 << 20


def object_key(backup: BackupRecord, name: str) -> str:
    """Where a backup's object lives in a store: ``<database>/<backup id>/<name>``, also its stream context."""
    return stream_context(backup, name)


def blob_labels(backup: BackupRecord) -> tuple[dict[str, str], dict[str, str]]:
    """Blob metadata and index tags that let a store describe a backup without the catalog."""
    lsn = (f"{format_lsn(backup.start_lsn)}-{format_lsn(backup.end_lsn)}"
           if backup.start_lsn is not None and backup.end_lsn is not None else "")
    meta = {"drkit_database": backup.database, "drkit_kind": backup.kind, "drkit_backup": backup.id,
            "drkit_lsn_range": lsn, "drkit_timeline": str(backup.timeline or ""),
            "drkit_base": backup.base_id or "", "drkit_sha256": backup.sha256 or "",
            "drkit_key_id": backup.key_id or "", "drkit_format": backup.format or ""}
    tags = {"database": backup.database, "kind": backup.kind, "backup": backup.id[:256]}
    return {k: v for k, v in meta.items() if v}, tags


def open_writer(store: Store, key: str, backup: BackupRecord | None = None,
                access_tier: str | None = None) -> AbstractContextManager[BinaryIO]:
    """``store.writer(key)``, with blob metadata, tags and access tier where the store takes them."""
    if backup is None:
        return store.writer(key, access_tier=access_tier)
    meta, tags = blob_labels(backup)
    return store.writer(key, metadata=meta, tags=tags, access_tier=access_tier)


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


def tier_location(policy: Policy, tier: str) -> str:
    """Where a tier keeps its objects, from the policy alone (two tiers of one container are one place)."""
    cfg = policy.tiers[tier]
    if cfg.store == "filesystem":
        return f"fs:{policy.tier_path(tier)}"
    account = cfg.account_url or cfg.connection_string_env or cfg.secret_block
    return f"azure:{account}/{cfg.container}/{cfg.prefix}"


def _same_location(rt: Runtime, a: str, b: str) -> bool:
    """Tiers ``a`` and ``b`` share their objects (Azure: one container, two access tiers)."""
    return rt.policy.tiers[a].store == "azure" and tier_location(rt.policy, a) == tier_location(rt.policy, b)


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
    if _same_location(rt, from_tier, to_tier):
        # One container, two access tiers: the object is already there; set the tier.
        tier = rt.policy.tiers[to_tier].access_tier
        if tier:
            dst.set_tier(data_key, tier)  # type: ignore[attr-defined]
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
    shared = [c for c in others if _same_location(rt, tier, c.tier)]
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


def write_descriptor(rt: Runtime, backup: BackupRecord, tiers: list[str] | None = None) -> list[str]:
    """(Re)write ``backup.json`` beside each complete copy, so a store alone knows the backup's state.

    Returns the tiers written. Sealing it needs the backup's key. Without a key (retention copies
    objects keyless), or with another key than the backup's, nothing is written: the descriptors already
    stored, copied along with the objects and still authentic, are left as they are, and the next
    rewrite with the key brings their status up to date.
    """
    try:
        body = descriptor_bytes(backup, rt.key)
    except EncryptionKeyError:
        return []
    tiers = tiers or [c.tier for c in rt.catalog.copies(backup.id) if c.status == "complete"]
    written: list[str] = []
    for tier in tiers:
        try:
            with rt.store(tier).writer(object_key(backup, DESCRIPTOR_OBJECT)) as fh:
                fh.write(body)
        except (DrkitError, StoreError):
            continue  # a tier that cannot take it now gets it at the next change
        written.append(tier)
    return written


def descriptor_bytes(backup: BackupRecord, key: EncryptionKey) -> bytes:
    """What a store alone must say about a backup so a catalog can be rebuilt from it (no secrets).

    Sealed with a MAC under a subkey of ``key`` (:func:`drkit.binding.seal_descriptor`); EncryptionKeyError
    if the backup was written with another key.
    """
    fields: dict[str, Any] = {}
    for k in ("id", "database", "kind", "status", "base_id", "timeline", "start_lsn", "end_lsn", "start_wal",
              "end_wal", "start_time", "end_time", "started_at", "finished_at", "verified_at", "raw_bytes",
              "stored_bytes", "sha256", "format", "key_id"):
        v = getattr(backup, k)
        fields[k] = v.isoformat() if isinstance(v, datetime) else v
    fields["meta"] = dict(backup.meta)
    return seal_descriptor(fields, key)


def iter_descriptors(store: Store, key: EncryptionKey, *, key_env: str | None = None
                     ) -> Iterator[tuple[str, dict[str, Any] | DrkitError]]:
    """Every ``backup.json`` in ``store``: its store key and its authenticated fields, or why it is refused."""
    for skey in store.list():
        if skey.endswith("/" + DESCRIPTOR_OBJECT):
            with store.reader(skey) as fh:
                raw = fh.read()
            try:
                yield skey, open_descriptor(raw, key, skey, key_env=key_env)
            except (EncryptionKeyError, IntegrityError) as exc:
                yield skey, exc


# -- Archive tier: rehydration before a restore reads ---------------------------------------------------


def archived_keys(rt: Runtime, tier: str, keys: list[str]) -> list[str]:
    """Those of ``keys`` that sit in the Archive access tier (unreadable until rehydrated)."""
    store = rt.store(tier)
    if not hasattr(store, "get_tier"):
        return []
    return [k for k in keys if store.get_tier(k).archived]


def start_rehydration(rt: Runtime, tier: str, key: str) -> str:
    """Ask Azure to bring ``key`` back online (idempotent); returns what Azure says it may take."""
    from drkit.storage.azure import rehydration_hint

    cfg = rt.policy.tiers[tier]
    store = rt.store(tier)
    state = store.get_tier(key)  # type: ignore[attr-defined]
    if state.archived and not state.rehydrating:
        store.start_rehydrate(key, to_tier=cfg.rehydrate_to, priority=cfg.rehydrate_priority)  # type: ignore[attr-defined]
    return f"{key}: rehydrating to {cfg.rehydrate_to} ({rehydration_hint(cfg.rehydrate_priority)})"


def rehydrated(rt: Runtime, tier: str, key: str) -> bool:
    store = rt.store(tier)
    return not store.get_tier(key).archived  # type: ignore[attr-defined]


def rearchive(rt: Runtime, tier: str, key: str) -> None:
    """Put a rehydrated object back into the tier's access tier (Archive) after the restore read it."""
    access = rt.policy.tiers[tier].access_tier
    store = rt.store(tier)
    if access and hasattr(store, "set_tier"):
        store.set_tier(key, access)


# -- retention: plan and apply --------------------------------------------------------------------------


VERIFIED_KINDS = frozenset({"full"})
"""Kinds gated on verification before leaving the first tier. Logs and diffs go offsite at once (RPO): their
bytes are checksummed, and the daily chain verification replays them."""


def plan_retention(rt: Runtime, now: datetime, *, routine_keeps: bool = False) -> list[Action]:
    """The retention actions for every database of the policy at ``now`` (pure planning over the catalog)."""
    backups = [b for b in rt.catalog.list_backups() if b.database in rt.policy.databases]
    return retention.plan(backups, rt.catalog.all_copies(), rt.catalog.active_holds(), rt.policy.tiers, now,
                          verified_only_to=rt.policy.verified_only_tiers(), move_into=rt.policy.move_tiers(),
                          verified_kinds=VERIFIED_KINDS, routine_keeps=routine_keeps)


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


# -- catalog rebuild from a store alone -----------------------------------------------------------------


def _record_from_descriptor(d: dict[str, Any]) -> BackupRecord:
    def when(key: str) -> datetime | None:
        return datetime.fromisoformat(d[key]) if d.get(key) else None

    status = d.get("status") or "completed"
    return BackupRecord(
        id=d["id"], database=d["database"], kind=d["kind"], status=status if status != "running" else "failed",
        base_id=d.get("base_id"), timeline=d.get("timeline"), start_lsn=d.get("start_lsn"),
        end_lsn=d.get("end_lsn"), start_wal=d.get("start_wal"), end_wal=d.get("end_wal"),
        started_at=when("started_at") or datetime.fromisoformat(d["end_time"]), finished_at=when("finished_at"),
        start_time=when("start_time"), end_time=when("end_time"), raw_bytes=int(d.get("raw_bytes") or 0),
        stored_bytes=int(d.get("stored_bytes") or 0), sha256=d.get("sha256"), format=d.get("format"),
        key_id=d.get("key_id"), error=None, verified_at=when("verified_at"), meta=d.get("meta") or {})


def rebuild_catalog(rt: Runtime, tier: str, *, report: Callable[[str], object] | None = None) -> dict[str, int]:
    """Re-create the catalog's backups and this tier's copies from the store's ``backup.json`` descriptors.

    Only authentic descriptors are imported: each must carry a valid MAC under the configured key
    (:mod:`drkit.binding`), sit where the backup it describes belongs, and agree with its data object's
    size. Each one refused is counted under ``refused``, audited, and described in one line to
    ``report``. If no descriptor is readable with the configured key and some were written with another
    key, nothing is imported: EncryptionKeyError naming a backup and both key ids.

    Idempotent: backups already in the catalog are left as they are. A descriptor whose data object is
    missing (a half-deleted copy) is skipped. Fulls are imported before the diffs based on them.
    """
    store = rt.store(tier)
    key = rt.key
    key_env = rt.policy.encryption.key_env
    found: list[BackupRecord] = []
    refused: list[tuple[str, str | None, DrkitError]] = []
    for skey, d in iter_descriptors(store, key, key_env=key_env):
        if isinstance(d, DrkitError):
            refused.append((skey, None, d))
            continue
        try:
            rec = _record_from_descriptor(d)
        except (KeyError, TypeError, ValueError) as exc:
            refused.append((skey, None, IntegrityError(f"{skey} is not a complete backup descriptor ({exc})")))
            continue
        if skey != object_key(rec, DESCRIPTOR_OBJECT):
            refused.append((skey, rec.database, IntegrityError(
                f"{skey} describes backup {rec.id}, whose descriptor belongs at "
                f"{object_key(rec, DESCRIPTOR_OBJECT)}: it was copied to the wrong place")))
            continue
        found.append(rec)
    wrong_key = [e for _, _, e in refused if isinstance(e, EncryptionKeyError)]
    if not found and wrong_key:
        raise EncryptionKeyError(
            f"{wrong_key[0]}: no backup.json in tier {tier!r} is readable with this key "
            f"({len(wrong_key)} written with another key); nothing was imported")
    order = {"full": 0, "diff": 1, "log": 2}
    counts = {"imported": 0, "present": 0, "skipped": 0, "refused": 0}
    for rec in sorted(found, key=lambda r: (order.get(r.kind, 3), r.started_at)):
        key_name = object_key(rec, DATA_OBJECT)
        if not store.exists(key_name):
            counts["skipped"] += 1
            continue
        size = store.size(key_name)
        problem: DrkitError | None = None
        if rec.stored_bytes and size != rec.stored_bytes:
            problem = IntegrityError(f"{key_name} is {size} bytes but its backup.json records "
                                     f"{rec.stored_bytes}: the object was replaced or damaged")
        elif rec.base_id is not None and not _in_catalog(rt, rec.base_id):
            problem = IntegrityError(f"{object_key(rec, DESCRIPTOR_OBJECT)}: its base backup {rec.base_id} "
                                     "is not in the catalog (refused or missing)")
        if problem is not None:
            refused.append((object_key(rec, DESCRIPTOR_OBJECT), rec.database, problem))
            continue
        added = rt.catalog.import_backup(rec, [(tier, key_name, size, rec.sha256 or "")])
        counts["imported" if added else "present"] += 1
        if added:
            rt.catalog.audit(actor="drkit-rebuild", action="catalog.rebuild", database=rec.database,
                             subject=rec.id, detail={"tier": tier})
    for skey, database, why in refused:
        counts["refused"] += 1
        rt.catalog.audit(actor="drkit-rebuild", action="catalog.rebuild.refused", database=database,
                         subject=skey, detail={"tier": tier, "reason": str(why)[:500]})
        if report is not None:
            report(str(why))
    return counts


def _in_catalog(rt: Runtime, backup_id: str) -> bool:
    try:
        rt.catalog.get(backup_id)
    except BackupNotFoundError:
        return False
    return True


def label_copy(rt: Runtime, tier: str, backup: BackupRecord) -> None:
    """Blob metadata and index tags on a backup's data object, once its LSN range and hash are known."""
    store = rt.store(tier)
    if hasattr(store, "set_tags"):
        meta, tags = blob_labels(backup)
        key = object_key(backup, DATA_OBJECT)
        store.set_metadata(key, meta)  # type: ignore[attr-defined]
        store.set_tags(key, tags)
