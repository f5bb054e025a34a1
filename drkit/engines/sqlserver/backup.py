"""SQL Server backups recorded in the catalog: the row opens before a backup and closes after it
(completed, or failed with the reason), with the backup's ``msdb.dbo.backupset`` row in its ``meta``.

Two backup targets:

* ``disk``: ``BACKUP … TO DISK`` into a staging directory that both the server and drkit see, then
  drkit's pipeline (zstd, AES-256-GCM, SHA-256) into the backup tier, exactly like a PostgreSQL
  backup; the staged file is deleted;
* ``url``: ``BACKUP … TO URL`` straight into an Azure Blob container with a SAS credential, striped so
  each blob stays under ``max_stripe_gib``, with unique blob names per backup. A failed URL backup
  names the blobs it may have left behind (SQL Server leaves them leased) so they can be removed.

Either way the msdb row is read back by the backup's name (the catalog id); no secret (SAS token, DSN
password) ever reaches the catalog, a log or an exception.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from drkit.backup import DATA_OBJECT, begin, finish_backup, guarded, object_key, write_encrypted
from drkit.catalog.records import RESTORABLE_STATUSES, BackupRecord
from drkit.engines.base import Progress
from drkit.engines.sqlserver.engine import SqlServerEngine, sqlserver_engine
from drkit.engines.sqlserver.errors import LogChainError, scrub
from drkit.engines.sqlserver.msdb import FORMAT_PIPELINE, FORMAT_URL, BackupSet
from drkit.engines.sqlserver.settings import SqlServerSettings, split_container_url
from drkit.engines.sqlserver.tsql import BackupKind
from drkit.errors import BackupSkipped, CatalogError, DrkitError
from drkit.runtime import Runtime

log = logging.getLogger(__name__)

BlobCleanup = Callable[[Sequence[str]], None]
"""Deletes (breaking leases first) the blobs a failed URL backup left; wired to an Azure store by the caller."""


def url_tier_key(settings: SqlServerSettings, url: str) -> str | None:
    """The object key of ``url`` inside the ``url_tier`` container, or None if it lies elsewhere."""
    if not settings.url or not settings.url_tier:
        return None
    container, _ = split_container_url(settings.url)
    return url[len(container) + 1:] if url.startswith(container + "/") else None


def _fail(rt: Runtime, rec: BackupRecord, exc: BaseException, secrets: Sequence[str], note: str = "") -> None:
    message = str(exc) if isinstance(exc, DrkitError) else f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(CatalogError):
        rt.catalog.fail_backup(rec.id, scrub(message + note, secrets)[:2000])


def take_backup(
    rt: Runtime,
    db: str,
    kind: BackupKind,
    *,
    engine: SqlServerEngine | None = None,
    progress: Progress | None = None,
    cleanup: BlobCleanup | None = None,
) -> BackupRecord:
    """A full, differential or log backup of ``db``, recorded in the catalog with its msdb row.

    Raises ``BackupSkipped`` (after recording it) where ``backup_replica: preferred`` says another replica
    takes it; a backup that runs despite a warning (no ``PAGE_VERIFY CHECKSUM``) keeps it in ``meta.warnings``.
    """
    if kind not in ("full", "diff", "log"):
        raise ValueError(f"not a backup kind: {kind}")
    engine = engine or sqlserver_engine(rt, db)
    if engine.settings.target == "disk":
        _ = rt.key  # a missing key fails here, before anything is written
    ready = engine.require_ready(kind)
    if ready.skip:
        rt.catalog.audit(actor="drkit-backup", action="backup.skipped", database=db, subject=kind,
                         detail={"reason": ready.skip, "server": engine.endpoint})
        log.warning("%s backup of %s skipped: %s", kind, db, ready.skip)
        raise BackupSkipped(f"{kind} backup of {db} skipped: {ready.skip}")
    for warning in ready.warnings:
        log.warning("%s backup of %s: %s", kind, db, warning)
    notes = {"warnings": list(ready.warnings)} if ready.warnings else {}
    base_id = _differential_base_id(rt, db, engine) if kind == "diff" else None
    if engine.settings.target == "url":
        done = _backup_to_url(rt, db, kind, engine, base_id, progress, cleanup, notes)
    else:
        done = _backup_through_pipeline(rt, db, kind, engine, base_id, progress, notes)
    if kind == "log":
        check_log_join(rt, db, done)
    return done


def _differential_base_id(rt: Runtime, db: str, engine: SqlServerEngine) -> str:
    """The catalog id of the full the server will base the next differential on; refuse if unknown."""
    with engine.session() as session:
        lsn, guid = engine.differential_base(session)
    fulls = rt.catalog.list_backups(db, kinds=["full"], statuses=list(RESTORABLE_STATUSES))
    for full in fulls:
        meta = full.meta
        if lsn is not None and str(meta.get("checkpoint_lsn")) == lsn and not meta.get("is_copy_only") and (
                guid is None or not meta.get("backup_set_uuid") or str(meta["backup_set_uuid"]).lower() == guid):
            return full.id
    raise LogChainError(
        f"the server's differential base for {db!r} is a full backup drkit does not know (checkpoint LSN "
        f"{lsn or 'none'}, backup set {guid or 'none'}): a full was taken outside drkit, or none yet. A "
        f"differential on it could not be restored from drkit's catalog; run `drkit import-history {db}` "
        f"to import it, or take `drkit backup full {db}`")


def _backup_to_url(
    rt: Runtime, db: str, kind: BackupKind, engine: SqlServerEngine, base_id: str | None,
    progress: Progress | None, cleanup: BlobCleanup | None, notes: Mapping[str, Any],
) -> BackupRecord:
    s = engine.settings
    rec = begin(rt, db, kind, base_id=base_id, meta={"engine": "sqlserver", "target": "url", **notes})
    devices: list[str] = []
    try:
        with engine.session() as session:
            engine.ensure_credential(session)
            size = engine.size_bytes(session, kind)
            devices = engine.url_devices(rec.id, kind, size)
            info = engine.run_backup(session, kind, device_type="URL", devices=devices, name=rec.id,
                                     progress=progress, expected_bytes=size)
    except BaseException as exc:
        note = ""
        if devices:
            note = _leftover_note(devices, cleanup)
            if isinstance(exc, DrkitError):
                exc.args = (scrub(f"{exc}{note}", engine.secrets),)
        _fail(rt, rec, exc, engine.secrets, "" if isinstance(exc, DrkitError) else note)
        raise
    meta = {**info.meta(), "target": "url", "stripes": len(devices)}
    key = url_tier_key(s, devices[0])
    copies = ([(str(s.url_tier), key, info.compressed_backup_size, None)]
              if key is not None and s.url_tier in rt.policy.tiers else [])
    # BACKUP returned, so every stripe is written: record the backup and its copy in one transaction, so
    # the catalog never holds a completed backup without its copy.
    done = rt.catalog.complete_backup(
        rec.id, timeline=None, start_lsn=int(info.first_lsn), end_lsn=int(info.last_lsn), start_wal=None,
        end_wal=None, start_time=info.start_time, end_time=info.end_time, raw_bytes=info.backup_size,
        stored_bytes=info.compressed_backup_size, sha256=None, format=FORMAT_URL, key_id=None, meta=meta,
        copies=copies, lineage=info.last_recovery_fork_guid)
    if info.is_damaged:
        done = rt.catalog.set_status(rec.id, "corrupt", actor="drkit-backup", reason="msdb marks it damaged")
    return done


def _leftover_note(devices: Sequence[str], cleanup: BlobCleanup | None) -> str:
    if cleanup is not None:
        try:
            cleanup(devices)
            return f"; the {len(devices)} blob(s) it started were removed"
        except Exception as exc:  # the backup error matters more; say what is left
            return (f"; removing its {len(devices)} blob(s) failed too ({type(exc).__name__}); delete them by "
                    f"hand (break their leases first): {', '.join(devices)}")
    return (f"; it may have left {len(devices)} blob(s) with active leases, which are not a usable backup: "
            f"break their leases and delete them (az storage blob lease break, then az storage blob "
            f"delete): {', '.join(devices)}")


def _backup_through_pipeline(
    rt: Runtime, db: str, kind: BackupKind, engine: SqlServerEngine, base_id: str | None,
    progress: Progress | None, notes: Mapping[str, Any],
) -> BackupRecord:
    tier = rt.policy.backup_tier
    rec = begin(rt, db, kind, base_id=base_id, meta={"engine": "sqlserver", "target": "disk", **notes})

    def body() -> BackupRecord:
        info, data = write_encrypted(rt, tier, object_key(rec, DATA_OBJECT),
                                      lambda w: engine.backup_to_disk(kind, rec.id, w, progress=progress))
        assert isinstance(info, BackupSet)
        meta = {**info.meta(), "target": "disk"}
        manifest = {"format": FORMAT_PIPELINE, "kind": kind, "database": db, **meta}
        done = finish_backup(rt, tier, rec, data, manifest, timeline=None, start_lsn=int(info.first_lsn),
                             end_lsn=int(info.last_lsn), start_wal=None, end_wal=None, start_time=info.start_time,
                             end_time=info.end_time, meta=meta, lineage=info.last_recovery_fork_guid)
        if info.is_damaged:
            done = rt.catalog.set_status(rec.id, "corrupt", actor="drkit-backup", reason="msdb marks it damaged")
        return done

    try:
        return guarded(rt, tier, rec, body)
    except DrkitError as exc:
        exc.args = (scrub(str(exc), engine.secrets),)
        raise


def check_log_join(rt: Runtime, db: str, log: BackupRecord) -> None:
    """Raise LogChainError (the log stays recorded) when it does not continue the previous log backup."""
    if log.meta.get("is_copy_only") or log.status not in RESTORABLE_STATUSES:
        return
    previous = [b for b in rt.catalog.list_backups(db, kinds=["log"], statuses=list(RESTORABLE_STATUSES))
                if b.id != log.id and not b.meta.get("is_copy_only") and b.end_time and log.end_time
                and b.end_time <= log.end_time]
    if not previous:
        return
    prev = max(previous, key=lambda b: (b.end_time or b.started_at, b.id))
    if str(prev.meta.get("last_lsn")) == str(log.meta.get("first_lsn")):
        return
    raise LogChainError(
        f"log backup {log.id} was taken and recorded, but it does not continue log backup {prev.id} (its "
        f"first_lsn {log.meta.get('first_lsn')} is not the previous last_lsn {prev.meta.get('last_lsn')}): a "
        f"log backup was taken outside drkit in between (see msdb.dbo.backupset). Point-in-time restores "
        f"into that gap are impossible until it is imported (`drkit import-history {db}`) or a new full "
        f"backup is taken (`drkit backup full {db}`)")
