"""Taking backups: engine stream → pipeline → store, recorded in the catalog as one fact.

Order of events for every kind, each step a fault point (:mod:`drkit.faults`):

1. check inputs (database, key, server prerequisites) before anything is written;
2. open a ``running`` catalog row naming this process (:mod:`drkit.liveness`);
3. stream the data into the store under an uncommitted name, commit it (``backup.stream``);
4. write the manifest beside it (``backup.manifest``);
5. write ``backup.json``, already describing the *completed* backup (``backup.descriptor``);
6. label the data object (blob metadata and index tags, ``backup.label``);
7. last, in one catalog transaction, mark the backup completed with its copy (``backup.complete``).

So the catalog calls a backup complete only once every object it points at exists. A failure before
step 7 removes the objects and marks the row ``failed`` with the real error; a failure after it (or
while the catalog cannot say which side of step 7 we are on) never deletes anything: the objects stay,
and ``drkit catalog check`` reconciles. A labelling failure (e.g. a SAS token without the tag
permission) therefore fails the backup with Azure's own error, before it is recorded.

``backup.json`` is written before the record completes on purpose: a store must describe every
complete backup even if the catalog is lost right after. A crash between steps 5 and 7 leaves a
``backup.json`` whose catalog row is still ``running``: the next backup of that database (which holds
its lock, so no other backup of it can be running) or ``drkit catalog check --repair`` fails the row
("interrupted: process … gone") and removes its objects; a catalog rebuilt from that store alone would
import it, and rightly so, since every object it names was complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, BinaryIO

from drkit.binding import require_key, stream_context
from drkit.catalog.records import BackupRecord
from drkit.copies import complete_copies, damage_of, record_damage
from drkit.errors import (
    CatalogError,
    DrkitError,
    IntegrityError,
    StoreError,
)
from drkit.faults import fault_point
from drkit.liveness import describe as describe_process
from drkit.liveness import me as this_process
from drkit.pipeline import DecryptingReader, EncryptingWriter
from drkit.runtime import Runtime
from drkit.storage import FilesystemStore
from drkit.tiers.naming import DATA_OBJECT as DATA_OBJECT
from drkit.tiers.naming import DESCRIPTOR_OBJECT as DESCRIPTOR_OBJECT
from drkit.tiers.naming import MANIFEST_OBJECT as MANIFEST_OBJECT
from drkit.tiers.naming import label_copy
from drkit.tiers.naming import object_key as object_key
from drkit.tiers.rebuild import descriptor_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Written:
    sha256: str
    raw_bytes: int
    stored_bytes: int


def write_encrypted(
    rt: Runtime, tier: str, key: str, produce: Callable[[EncryptingWriter], Any]
) -> tuple[Any, _Written]:
    store = rt.store(tier)
    with store.writer(key) as stored:
        sink = _FaultAfterFirstWrite(stored, "backup.stream") if key.endswith("/" + DATA_OBJECT) else stored
        writer = EncryptingWriter(sink, rt.key, context=key)  # an object's key is its stream context
        result = produce(writer)
        writer.close()
    stats = writer.stats
    return result, _Written(stats.sha256, stats.raw_bytes, stats.stored_bytes)


class _FaultAfterFirstWrite:
    """A sink that passes writes through and reaches fault point ``name`` once its first bytes are in the store."""

    def __init__(self, sink: BinaryIO, name: str) -> None:
        self._sink, self._name, self._armed = sink, name, True

    def write(self, data: memoryview, /) -> int:
        n = self._sink.write(data)
        if self._armed:
            self._armed = False
            self._sink.flush()
            fault_point(self._name)
        return n


def begin(rt: Runtime, db: str, kind: str, *, base_id: str | None = None,
          meta: Mapping[str, Any] | None = None) -> BackupRecord:
    """Open the ``running`` row of a backup, naming this process so a leftover can be told from a live run."""
    return rt.catalog.begin_backup(db, kind, base_id=base_id, meta={**(meta or {}), "process": this_process()})


def read_manifest(rt: Runtime, backup: BackupRecord, tier: str | None = None) -> dict[str, Any]:
    """A backup's manifest, from ``tier`` or the cheapest tier holding a complete copy (the engine checks it
    against the record).

    A complete copy whose manifest is gone or damaged is recorded ``missing`` / ``corrupt``
    (:mod:`drkit.copies`) and the next copy is read; the error names every copy tried.
    """
    require_key(rt, [backup])
    held = [c.tier for c in complete_copies(rt, backup.id)]
    tiers = [tier] if tier else held or [rt.policy.backup_tier]
    tried: list[str] = []
    error: DrkitError | None = None
    for t in tiers:
        try:
            with rt.store(t).reader(object_key(backup, MANIFEST_OBJECT)) as src:
                data = DecryptingReader(
                    src, rt.key, expected_context=stream_context(backup, MANIFEST_OBJECT)).read()
        except (IntegrityError, StoreError) as exc:  # the copy's fault; a key error is raised as it is
            status = damage_of(exc)
            if status is not None and t in held:
                with contextlib.suppress(CatalogError):
                    record_damage(rt, backup, t, status, str(exc), actor="drkit-backup",
                                  found_by=f"reading the manifest of {backup.id}")
            tried.append(f"{t}: {status or 'unreadable'} ({exc})")
            error = exc
            continue
        result: dict[str, Any] = json.loads(data)
        return result
    assert error is not None
    if len(tried) == 1:
        raise error
    raise type(error)(f"cannot read the manifest of backup {backup.id} from any copy: " + "; ".join(tried))


def _cleanup(rt: Runtime, tier: str, backup: BackupRecord) -> None:
    store = rt.store(tier)
    for name in (DATA_OBJECT, MANIFEST_OBJECT, DESCRIPTOR_OBJECT):
        with contextlib.suppress(DrkitError):
            store.delete(object_key(backup, name))


def remove_leftovers(rt: Runtime, tier: str, backup: BackupRecord) -> int:
    """Remove every object under a dead backup's ``<db>/<id>/`` in ``tier``, and its partial writes.

    Only for a backup whose writer is known to be gone (the lock is ours, or the row is failed):
    partial writes are removed whatever their age. Returns the number of files removed.
    """
    store = rt.store(tier)
    prefix = object_key(backup, "")
    keys = list(store.list(prefix))
    for key in keys:
        store.delete(key)
    partials = store.cleanup_partials(0, prefix=prefix) if isinstance(store, FilesystemStore) else 0
    return len(keys) + partials


def _as_completed(rec: BackupRecord, data: _Written, fmt: str, key_id: str, fields: Mapping[str, Any]) -> BackupRecord:
    """The record as ``complete_backup`` will store it, so ``backup.json`` and labels can be written first."""
    values: dict[str, Any] = {k: (v.astimezone(UTC) if isinstance(v, datetime) else v)
                              for k, v in fields.items() if k != "meta"}
    return replace(rec, **values, status="completed", finished_at=datetime.now(UTC), raw_bytes=data.raw_bytes,
                   stored_bytes=data.stored_bytes, sha256=data.sha256, format=fmt, key_id=key_id,
                   meta={**rec.meta, **(fields.get("meta") or {})})


def finish_backup(
    rt: Runtime, tier: str, rec: BackupRecord, data: _Written, manifest: dict[str, Any], **fields: Any
) -> BackupRecord:
    """Manifest, ``backup.json`` and labels beside the committed data object; the catalog record last."""
    fault_point("backup.manifest")
    write_encrypted(rt, tier, object_key(rec, MANIFEST_OBJECT),
                     lambda w: w.write(json.dumps(manifest, sort_keys=True).encode()))
    fault_point("backup.manifest", "after")
    done = _as_completed(rec, data, str(manifest.get("format")), rt.key.key_id, fields)
    fault_point("backup.descriptor")
    with rt.store(tier).writer(object_key(done, DESCRIPTOR_OBJECT)) as fh:
        fh.write(descriptor_bytes(done, rt.key))
    fault_point("backup.descriptor", "after")
    fault_point("backup.label")
    label_copy(rt, tier, done)
    fault_point("backup.label", "after")
    fault_point("backup.complete")
    recorded = rt.catalog.complete_backup(
        rec.id, raw_bytes=data.raw_bytes, stored_bytes=data.stored_bytes, sha256=data.sha256,
        format=done.format, key_id=done.key_id, finished_at=done.finished_at,
        copies=[(tier, object_key(rec, DATA_OBJECT), data.stored_bytes, data.sha256)], **fields)
    fault_point("backup.complete", "after")
    return recorded


def guarded(rt: Runtime, tier: str, rec: BackupRecord, body: Callable[[], BackupRecord]) -> BackupRecord:
    """Run ``body``; if it fails, clean up without hiding why, then re-raise its error as it was.

    While the row is still ``running`` (or already ``failed``) its objects are removed and the row is
    failed with the error. Once the row is completed, or when the catalog cannot tell, nothing is
    deleted: the catalog may point at those objects, and ``drkit catalog check`` reconciles later.
    """
    try:
        return body()
    except BaseException as exc:
        message = str(exc) if isinstance(exc, DrkitError) else f"{type(exc).__name__}: {exc}"
        _after_failure(rt, tier, rec, message)
        raise


def _after_failure(rt: Runtime, tier: str, rec: BackupRecord, message: str) -> None:
    try:
        status = rt.catalog.get(rec.id).status
    except Exception as why:  # the real error is being raised; this one is only reported
        log.warning("backup %s failed (%s); its objects are kept, since the catalog cannot say whether it "
                    "completed (%s); `drkit catalog check --repair` tidies up", rec.id, message, why)
        return
    if status not in ("running", "failed"):
        log.warning("backup %s is recorded %s although a later step failed (%s); its objects are kept",
                    rec.id, status, message)
        return
    _cleanup(rt, tier, rec)
    if status == "running":
        try:
            rt.catalog.fail_backup(rec.id, message[:2000])
        except Exception as why:
            log.warning("backup %s failed (%s) and could not be marked failed (%s); the next backup of %s "
                        "or `drkit catalog check --repair` will", rec.id, message, why, rec.database)


def fail_interrupted(rt: Runtime, db: str, *, actor: str = "drkit-backup") -> list[BackupRecord]:
    """Fail every ``running`` backup of ``db`` and remove what it left in the backup tier.

    Call only while holding ``db``'s backup lock: then no backup of ``db`` can be running, so every
    such row is a leftover of a process that was killed. Each change is audited (``backup.status``).
    """
    failed = []
    for b in rt.catalog.list_backups(db, statuses=["running"]):
        reason = (f"interrupted: {describe_process(b.meta.get('process'))} gone (found by the next backup of "
                  f"{db}, which holds its lock)")
        failed.append(abandon(rt, b, reason, actor=actor))
    return failed


def abandon(rt: Runtime, backup: BackupRecord, reason: str, *, actor: str) -> BackupRecord:
    """Mark a running backup whose process is gone failed (audited), then remove its objects."""
    done = rt.catalog.set_status(backup.id, "failed", actor=actor, reason=reason)
    if backup.meta.get("target") != "url":  # SQL Server's own URL backups are not in drkit's tiers
        remove_leftovers(rt, rt.policy.backup_tier, backup)
    return done
