"""The sealed ``backup.json`` beside every copy, and rebuilding the catalog from a tier's descriptors alone.

A store alone must say enough about each backup to re-create the catalog after its loss: the descriptor
holds the backup's record (no secrets), sealed with a MAC under a subkey of the backup key
(:mod:`drkit.binding`), so only authentic descriptors, sitting where their backup belongs, are imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from drkit.binding import open_descriptor, seal_descriptor
from drkit.catalog.records import BackupRecord
from drkit.errors import BackupNotFoundError, DrkitError, EncryptionKeyError, IntegrityError, StoreError
from drkit.pipeline import EncryptionKey
from drkit.runtime import Runtime
from drkit.storage import Store
from drkit.tiers.naming import DATA_OBJECT, DESCRIPTOR_OBJECT, object_key

__all__ = ["descriptor_bytes", "iter_descriptors", "rebuild_catalog", "write_descriptor"]


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
    for k in ("id", "database", "kind", "status", "base_id", "lineage", "timeline", "start_lsn", "end_lsn",
              "start_wal", "end_wal", "start_time", "end_time", "started_at", "finished_at", "verified_at",
              "raw_bytes", "stored_bytes", "sha256", "format", "key_id"):
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


def _record_from_descriptor(d: dict[str, Any]) -> BackupRecord:
    def when(key: str) -> datetime | None:
        return datetime.fromisoformat(d[key]) if d.get(key) else None

    status = d.get("status") or "completed"
    timeline = d.get("timeline")
    # descriptors written before records had a lineage: a PostgreSQL timeline is its lineage
    lineage = d.get("lineage") or (str(timeline) if timeline is not None else None)
    return BackupRecord(
        id=d["id"], database=d["database"], kind=d["kind"], status=status if status != "running" else "failed",
        base_id=d.get("base_id"), timeline=timeline, start_lsn=d.get("start_lsn"),
        end_lsn=d.get("end_lsn"), start_wal=d.get("start_wal"), end_wal=d.get("end_wal"),
        started_at=when("started_at") or datetime.fromisoformat(d["end_time"]), finished_at=when("finished_at"),
        start_time=when("start_time"), end_time=when("end_time"), raw_bytes=int(d.get("raw_bytes") or 0),
        stored_bytes=int(d.get("stored_bytes") or 0), sha256=d.get("sha256"), format=d.get("format"),
        key_id=d.get("key_id"), error=None, verified_at=when("verified_at"), meta=d.get("meta") or {},
        lineage=lineage)


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
