"""Adopting a running server: record the backups msdb remembers that the catalog does not have yet."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from drkit.catalog.records import BackupRecord
from drkit.engines.sqlserver.backup import url_tier_key
from drkit.engines.sqlserver.engine import SqlServerEngine, sqlserver_engine
from drkit.engines.sqlserver.msdb import FORMAT_URL, NATIVE_FORMATS, BackupSet
from drkit.errors import CatalogError, DrkitError
from drkit.runtime import Runtime


@dataclass
class ImportResult:
    imported: list[str] = field(default_factory=list)
    already_known: int = 0
    unrestorable: list[str] = field(default_factory=list)
    """Imported, but on devices drkit cannot restore from (tape, virtual devices of other tools)."""


def import_history(
    rt: Runtime, db: str, *, engine: SqlServerEngine | None = None, days: int | None = None,
    actor: str = "drkit-import",
) -> ImportResult:
    """Record the full, differential and log backups msdb remembers that the catalog does not have yet.

    Idempotent: a backup set already in the catalog (same ``backup_set_uuid``, or a drkit
    backup by its name) is skipped. Diffs are tied to their full by LSN and GUID.
    """
    engine = engine or sqlserver_engine(rt, db)
    with engine.session() as session:
        sets = engine.history(session, days=days)
    existing = rt.catalog.list_backups(db)
    known = {str(b.meta.get("backup_set_uuid")).lower() for b in existing if b.meta.get("backup_set_uuid")}
    known_ids = {b.id for b in existing}
    fulls = {(str(b.meta.get("checkpoint_lsn")), str(b.meta.get("backup_set_uuid") or "").lower()): b.id
             for b in existing if b.kind == "full" and b.meta.get("checkpoint_lsn")}
    result = ImportResult()
    for info in sets:
        if info.backup_set_uuid in known or (info.name and info.name in known_ids):
            result.already_known += 1
            continue
        base_id = None
        if info.kind == "diff":
            base_id = fulls.get((str(info.differential_base_lsn), info.differential_base_guid or ""))
        fmt = info.format
        meta = {**info.meta(), "imported": True, "imported_from": engine.endpoint}
        rec = _begin_imported(rt, db, info, base_id)
        done = rt.catalog.complete_backup(
            rec.id, timeline=None, start_lsn=int(info.first_lsn), end_lsn=int(info.last_lsn), start_wal=None,
            end_wal=None, start_time=info.start_time, end_time=info.end_time, raw_bytes=info.backup_size,
            stored_bytes=info.compressed_backup_size, sha256=None, format=fmt, key_id=None, meta=meta,
            lineage=info.last_recovery_fork_guid)
        if fmt == FORMAT_URL and info.devices:
            key = url_tier_key(engine.settings, info.devices[0].device)
            tier = engine.settings.url_tier
            if key is not None and tier in rt.policy.tiers:
                rt.catalog.add_copy(rec.id, str(tier), key, status="complete",
                                    stored_bytes=info.compressed_backup_size)
        if info.is_damaged:
            rt.catalog.set_status(rec.id, "corrupt", actor=actor, reason="msdb.dbo.backupset marks it damaged")
        if fmt not in NATIVE_FORMATS:
            result.unrestorable.append(done.id)
        if info.kind == "full":
            fulls[(str(info.checkpoint_lsn), info.backup_set_uuid)] = done.id
        known.add(info.backup_set_uuid)
        result.imported.append(done.id)
    rt.catalog.audit(actor=actor, action="history.import", database=db, subject=engine.endpoint,
                     detail={"imported": len(result.imported), "already_known": result.already_known,
                             "unrestorable": result.unrestorable, "days": days})
    return result


@dataclass
class GroupImportResult:
    """:func:`import_history` on each replica of an availability group, in order (this server first)."""

    by_replica: dict[str, ImportResult] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    """Replica → why its msdb could not be read (the others are imported all the same)."""


def import_group_history(
    rt: Runtime, db: str, *, engine: SqlServerEngine | None = None, days: int | None = None,
    actor: str = "drkit-import",
) -> GroupImportResult:
    """Import msdb's history from this server and every other replica of ``availability_group``.

    msdb is not part of the group: a backup taken on a secondary (by drkit elsewhere, by Ola Hallengren's jobs)
    is in that replica's msdb only, and the log chain runs through all of them. Each backup set is imported
    once (its ``backup_set_uuid``), whichever replica remembers it.
    """
    engine = engine or sqlserver_engine(rt, db)
    out = GroupImportResult(by_replica={engine.endpoint: import_history(rt, db, engine=engine, days=days,
                                                                        actor=actor)})
    with engine.session() as session:
        others = engine.other_replicas(session)
    for name in others:
        replica = engine.on_replica(name)
        try:
            out.by_replica[replica.endpoint] = import_history(rt, db, engine=replica, days=days, actor=actor)
        except DrkitError as exc:
            out.unreachable[replica.endpoint] = str(exc)
    return out


def _begin_imported(rt: Runtime, db: str, info: BackupSet, base_id: str | None) -> BackupRecord:
    started = info.start_time
    for attempt in range(50):  # msdb times have ~3 ms precision: two backups may share one
        try:
            return rt.catalog.begin_backup(db, info.kind, base_id=base_id,
                                           started_at=started + timedelta(microseconds=attempt),
                                           meta={"engine": "sqlserver", "imported": True})
        except CatalogError as exc:
            if "already exists" not in str(exc):
                raise
    raise CatalogError(f"cannot find a free catalog id for backup set {info.backup_set_id} of {db!r}")
