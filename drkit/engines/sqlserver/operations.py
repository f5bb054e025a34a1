"""SQL Server backups end to end: take, record, import, verify and restore, against the catalog.

Why it exists: :mod:`drkit.engines.sqlserver.engine` knows T-SQL and one server;
this module knows drkit: the catalog row that opens before a backup and closes
(completed or failed, with the reason) after it, the tier stores, the
restore plan (:mod:`drkit.engines.sqlserver.chain`) and the verification report.

Two backup targets:

* ``disk``: ``BACKUP … TO DISK`` into a staging directory that both the server
  and drkit see, then drkit's pipeline (zstd, AES-256-GCM, SHA-256) into the
  backup tier, exactly like a PostgreSQL backup; the staged file is deleted;
* ``url``: ``BACKUP … TO URL`` straight into an Azure Blob container with a
  SAS credential, striped so each blob stays under ``max_stripe_gib``, with
  unique blob names per backup. A failed URL backup names the blobs it may
  have left behind (SQL Server leaves them leased) so they can be removed.

Either way the backup's ``msdb.dbo.backupset`` row is read back by its name
(the catalog id) and kept in the record's ``meta``; no secret (SAS token,
DSN password) ever reaches the catalog, a log or an exception.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drkit.backup import DATA_OBJECT, begin, finish_backup, guarded, object_key, write_encrypted
from drkit.binding import require_key, stream_context
from drkit.catalog.records import RESTORABLE_STATUSES, BackupRecord
from drkit.config import resolve_dsn
from drkit.engines.base import Progress
from drkit.engines.postgres.chain import RestorePiece, RestorePlan
from drkit.engines.sqlserver import tsql
from drkit.engines.sqlserver.chain import NATIVE_TIER, plan_for_backup_mssql, plan_restore_mssql
from drkit.engines.sqlserver.engine import (
    FORMAT_DISK,
    FORMAT_PIPELINE,
    FORMAT_URL,
    NATIVE_FORMATS,
    BackupMediaError,
    BackupSet,
    CorruptionFoundError,
    LogChainError,
    RestoreTargetError,
    Session,
    SqlServerEngine,
    SqlServerError,
    SqlServerSettings,
    scrub,
    split_container_url,
)
from drkit.engines.sqlserver.tsql import BackupKind, DeviceType
from drkit.errors import CatalogError, ConfigError, DrkitError, RestoreError
from drkit.pipeline import DecryptingReader, verify_stored
from drkit.runtime import Runtime
from drkit.verify import CheckResult, VerifyReport, verify_target

BlobCleanup = Callable[[Sequence[str]], None]
"""Deletes (breaking leases first) the blobs a failed URL backup left; wired to an Azure store by the caller."""

POSTGRES_ONLY_CHECKS = ("amcheck", "visibility")


def sqlserver_engine(rt: Runtime, db: str) -> SqlServerEngine:
    """The engine for ``db`` from the policy file (``engine: sqlserver`` and its ``sqlserver:`` block)."""
    cfg = rt.policy.database(db)
    if cfg.engine != "sqlserver":
        raise ConfigError(f"databases.{db}.engine is {cfg.engine!r}, not 'sqlserver'")
    settings = SqlServerSettings.from_mapping(db, getattr(cfg, "sqlserver", None))
    sas = None
    if settings.sas_token_env:
        sas = rt.environ.get(settings.sas_token_env, "").strip() or None
        if sas is None and settings.target == "url":
            raise ConfigError(f"databases.{db}.sqlserver.sas_token_env: environment variable "
                              f"{settings.sas_token_env} is not set; export the container's SAS token")
    return SqlServerEngine(db, dsn=resolve_dsn(db, cfg, rt.environ), settings=settings, sas_token=sas)


def _url_tier_key(settings: SqlServerSettings, url: str) -> str | None:
    """The object key of ``url`` inside the ``url_tier`` container, or None if it lies elsewhere."""
    if not settings.url or not settings.url_tier:
        return None
    container, _ = split_container_url(settings.url)
    return url[len(container) + 1:] if url.startswith(container + "/") else None


def _fail(rt: Runtime, rec: BackupRecord, exc: BaseException, secrets: Sequence[str], note: str = "") -> None:
    message = str(exc) if isinstance(exc, DrkitError) else f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(CatalogError):
        rt.catalog.fail_backup(rec.id, scrub(message + note, secrets)[:2000])


# -- taking backups ----------------------------------------------------------------------------------


def take_backup(
    rt: Runtime,
    db: str,
    kind: BackupKind,
    *,
    engine: SqlServerEngine | None = None,
    progress: Progress | None = None,
    cleanup: BlobCleanup | None = None,
) -> BackupRecord:
    """A full, differential or log backup of ``db``, recorded in the catalog with its msdb row."""
    if kind not in ("full", "diff", "log"):
        raise ValueError(f"not a backup kind: {kind}")
    engine = engine or sqlserver_engine(rt, db)
    if engine.settings.target == "disk":
        _ = rt.key  # a missing key fails here, before anything is written
    engine.require_ready(kind)
    base_id = _differential_base_id(rt, db, engine) if kind == "diff" else None
    if engine.settings.target == "url":
        done = _backup_to_url(rt, db, kind, engine, base_id, progress, cleanup)
    else:
        done = _backup_through_pipeline(rt, db, kind, engine, base_id, progress)
    if kind == "log":
        _check_log_join(rt, db, done)
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
    progress: Progress | None, cleanup: BlobCleanup | None,
) -> BackupRecord:
    s = engine.settings
    rec = begin(rt, db, kind, base_id=base_id, meta={"engine": "sqlserver", "target": "url"})
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
    key = _url_tier_key(s, devices[0])
    copies = ([(str(s.url_tier), key, info.compressed_backup_size, None)]
              if key is not None and s.url_tier in rt.policy.tiers else [])
    # BACKUP returned, so every stripe is written: record the backup and its copy in one transaction, so
    # the catalog never holds a completed backup without its copy.
    done = rt.catalog.complete_backup(
        rec.id, timeline=None, start_lsn=None, end_lsn=None, start_wal=None, end_wal=None,
        start_time=info.start_time, end_time=info.end_time, raw_bytes=info.backup_size,
        stored_bytes=info.compressed_backup_size, sha256=None, format=FORMAT_URL, key_id=None, meta=meta,
        copies=copies)
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
    progress: Progress | None,
) -> BackupRecord:
    tier = rt.policy.backup_tier
    rec = begin(rt, db, kind, base_id=base_id, meta={"engine": "sqlserver", "target": "disk"})

    def body() -> BackupRecord:
        info, data = write_encrypted(rt, tier, object_key(rec, DATA_OBJECT),
                                      lambda w: engine.backup_to_disk(kind, rec.id, w, progress=progress))
        assert isinstance(info, BackupSet)
        meta = {**info.meta(), "target": "disk"}
        manifest = {"format": FORMAT_PIPELINE, "kind": kind, "database": db, **meta}
        done = finish_backup(rt, tier, rec, data, manifest, timeline=None, start_lsn=None, end_lsn=None,
                       start_wal=None, end_wal=None, start_time=info.start_time, end_time=info.end_time, meta=meta)
        if info.is_damaged:
            done = rt.catalog.set_status(rec.id, "corrupt", actor="drkit-backup", reason="msdb marks it damaged")
        return done

    try:
        return guarded(rt, tier, rec, body)
    except DrkitError as exc:
        exc.args = (scrub(str(exc), engine.secrets),)
        raise


def _check_log_join(rt: Runtime, db: str, log: BackupRecord) -> None:
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


# -- importing msdb history --------------------------------------------------------------------------


@dataclass
class ImportResult:
    imported: list[str] = field(default_factory=list)
    already_known: int = 0
    unrestorable: list[str] = field(default_factory=list)
    """Imported, but on devices drkit cannot restore from (tape, virtual devices of other tools)."""


def _format_of(info: BackupSet) -> str:
    types = {d.type for d in info.devices}
    if types == {"URL"}:
        return FORMAT_URL
    if types == {"DISK"}:
        return FORMAT_DISK
    return "mssql-native-" + "-".join(sorted(t.lower() for t in types))


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
        fmt = _format_of(info)
        meta = {**info.meta(), "imported": True, "imported_from": engine.endpoint}
        rec = _begin_imported(rt, db, info, base_id)
        done = rt.catalog.complete_backup(
            rec.id, timeline=None, start_lsn=None, end_lsn=None, start_wal=None, end_wal=None,
            start_time=info.start_time, end_time=info.end_time, raw_bytes=info.backup_size,
            stored_bytes=info.compressed_backup_size, sha256=None, format=fmt, key_id=None, meta=meta)
        if fmt == FORMAT_URL and info.devices:
            key = _url_tier_key(engine.settings, info.devices[0].device)
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


# -- restoring ---------------------------------------------------------------------------------------


def _devices_of(backup: BackupRecord) -> tuple[DeviceType, list[str]]:
    devices = backup.meta.get("devices") or []
    types = {str(d.get("type")) for d in devices if isinstance(d, Mapping)}
    if types == {"URL"}:
        return "URL", [str(d["device"]) for d in devices]
    if types == {"DISK"}:
        return "DISK", [str(d["device"]) for d in devices]
    raise RestoreError(f"backup {backup.id} is on {', '.join(sorted(types)) or 'no'} device(s); drkit restores "
                       "only from URL or DISK devices")


@dataclass
class _Staged:
    sources: dict[str, tuple[DeviceType, list[str]]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    bytes: int = 0

    def remove(self) -> None:
        for f in self.files:
            with contextlib.suppress(OSError):
                f.unlink()


def _stage(rt: Runtime, engine: SqlServerEngine, pieces: Sequence[RestorePiece], staged: _Staged) -> None:
    """Where the server reads each piece: its own device, or a file drkit decrypts into the staging dir."""
    for piece in pieces:
        b = piece.backup
        if piece.tier == NATIVE_TIER or b.format in NATIVE_FORMATS:
            staged.sources[b.id] = _devices_of(b)
            continue
        local_dir = engine.settings.staging_local
        if local_dir is None:
            raise ConfigError(f"databases.{engine.name}.sqlserver.disk_path is not set: drkit needs a directory "
                              "it can write and the server can read to restore from its stores")
        name = f"{b.id}.restore.{'trn' if b.kind == 'log' else 'bak'}"
        local = local_dir / name
        staged.files.append(local)
        with rt.store(piece.tier).reader(piece.store_key) as src, open(local, "wb") as out:
            reader = DecryptingReader(src, rt.key, expected_sha256=piece.sha256,
                                      expected_context=stream_context(b, DATA_OBJECT))
            while chunk := reader.read(4 << 20):
                out.write(chunk)
                staged.bytes += len(chunk)
        staged.sources[b.id] = ("DISK", [engine.disk_device(name)])


def stopat_local(plan: RestorePlan, session: Session) -> str | None:
    """The plan's target as server-local ``YYYY-MM-DDTHH:MM:SS.fff`` (STOPAT takes local time)."""
    if plan.recovery != "time" or plan.target_time is None:
        return None
    last = plan.pieces[-1].backup
    offset = last.meta.get("time_zone_minutes")
    minutes = int(offset) if offset is not None else session.utc_offset_minutes()
    local = plan.target_time.astimezone(UTC).replace(tzinfo=None) + timedelta(minutes=minutes)
    return local.isoformat(timespec="milliseconds")


def run_restore(
    engine: SqlServerEngine,
    session: Session,
    plan: RestorePlan,
    into: str,
    sources: Mapping[str, tuple[DeviceType, Sequence[str]]],
    on_step: Callable[[str], None] | None = None,
) -> int:
    """FILELISTONLY, then each piece NORECOVERY, the last WITH RECOVERY (and STOPAT); the batches sent."""
    full = plan.pieces[0].backup
    files = engine.file_list(session, *sources[full.id])
    moves = engine.moves(session, into, files)
    stopat = stopat_local(plan, session)
    n = len(plan.pieces)
    for i, piece in enumerate(plan.pieces):
        b = piece.backup
        last = i == n - 1
        device_type, devices = sources[b.id]
        if on_step:
            on_step(f"{b.kind} {b.id}")
        session.run(tsql.restore(
            into, "log" if b.kind == "log" else "full" if b.kind == "full" else "diff",
            device_type=device_type, devices=devices, moves=moves if i == 0 else (), recovery=last,
            stopat=stopat if last and b.kind == "log" else None,
            checksum=bool(b.meta.get("has_backup_checksums", True))))
    return n + 1


@dataclass(frozen=True)
class MssqlRestoreResult:
    plan: RestorePlan
    database: str
    seconds: float
    staged_bytes: int
    steps: tuple[str, ...]


def make_plan_mssql(rt: Runtime, db: str, target: datetime | None, now: datetime | None = None) -> RestorePlan:
    rt.policy.database(db)
    plan = plan_restore_mssql(db, rt.catalog.list_backups(db), rt.catalog.all_copies(db), target=target,
                              now=now or datetime.now(UTC), tier_order=rt.tier_order)
    require_key(rt, [p.backup for p in plan.pieces])  # native (URL) pieces record no key id and pass
    return plan


def restore_to_point(
    rt: Runtime,
    db: str,
    *,
    into: str,
    target: datetime | None = None,
    engine: SqlServerEngine | None = None,
    plan: RestorePlan | None = None,
    now: datetime | None = None,
) -> MssqlRestoreResult:
    """Restore ``db`` as the new database ``into`` at ``target`` (None: the latest point); never overwrites."""
    tsql.validate_name(into, "restore target database")
    engine = engine or sqlserver_engine(rt, db)
    plan = plan or make_plan_mssql(rt, db, target, now)
    t0 = time.monotonic()
    steps: list[str] = []
    staged = _Staged()
    try:
        with engine.session() as session:
            state = engine.database_exists(session, into)
            if state is not None:
                raise RestoreTargetError(f"database {into!r} already exists on {engine.endpoint} ({state}); drkit "
                                         "restores only into a new database name (nothing was changed)")
            _stage(rt, engine, plan.pieces, staged)
            try:
                run_restore(engine, session, plan, into, staged.sources, steps.append)
            except DrkitError as exc:
                exc.args = (f"{exc} (the partial restore is left as database {into!r}, RESTORING; drop it with "
                            f"DROP DATABASE {tsql.quote_name(into)} when done)",)
                raise
    finally:
        staged.remove()
    return MssqlRestoreResult(plan, into, time.monotonic() - t0, staged.bytes, tuple(steps))


# -- verification ------------------------------------------------------------------------------------


def scratch_name(server_db: str, now: datetime | None = None) -> str:
    stamp = f"_drkit_verify_{(now or datetime.now(UTC)):%Y%m%dT%H%M%S}"
    return server_db[: tsql.MAX_NAME_LENGTH - len(stamp)] + stamp


def _timed(name: str, fn: Callable[[], str]) -> CheckResult:
    t0 = time.monotonic()
    try:
        return CheckResult(name, True, fn(), time.monotonic() - t0)
    except SqlServerError as exc:
        return CheckResult(name, False, str(exc), time.monotonic() - t0)


def verify_plan_mssql(
    rt: Runtime, db: str, engine: SqlServerEngine, plan: RestorePlan, subject: str, *, now: datetime | None = None,
) -> VerifyReport:
    """Checksums, RESTORE VERIFYONLY, a test restore WITH MOVE, DBCC CHECKDB, the policy's checks, DROP always.

    Changes nothing in the catalog. ``corrupt_pieces`` names pieces whose bytes or backup sets are
    proven bad; any other failure (access, timeouts) fails the report without blaming a piece.
    """
    require_key(rt, [p.backup for p in plan.pieces])  # a wrong key is refused, never reported as corruption
    t0 = time.monotonic()
    report = VerifyReport(database=db, subject=subject, pieces=[p.backup.id for p in plan.pieces],
                          reaches=plan.reaches, stored_bytes=plan.total_bytes)
    for piece in plan.pieces:
        if piece.tier == NATIVE_TIER or piece.backup.format in NATIVE_FORMATS:
            continue
        started = time.monotonic()
        try:
            if not piece.sha256:
                raise RestoreError(f"{piece.backup.id} has no recorded SHA-256")
            with rt.store(piece.tier).reader(piece.store_key) as src:
                n = verify_stored(src, piece.sha256, expected_context=stream_context(piece.backup, DATA_OBJECT))
            report.checks.append(CheckResult(f"sha256 {piece.backup.id}", True, f"{n} bytes match in tier "
                                             f"{piece.tier}", time.monotonic() - started))
        except DrkitError as exc:
            report.corrupt_pieces.append(piece.backup.id)
            report.checks.append(CheckResult(f"sha256 {piece.backup.id}", False, str(exc),
                                             time.monotonic() - started))
    if report.corrupt_pieces:
        report.error = "stored bytes do not match their SHA-256: " + ", ".join(report.corrupt_pieces)
        report.total_seconds = time.monotonic() - t0
        return report
    scratch = scratch_name(engine.settings.database, now)
    staged = _Staged()
    secrets = engine.secrets
    try:
        with engine.session() as session:
            if engine.database_exists(session, scratch) is not None:
                raise RestoreTargetError(f"scratch database {scratch!r} already exists; another verification is "
                                         "running, or a previous one was interrupted: drop it and retry")
            try:
                _stage(rt, engine, plan.pieces, staged)
                report.bytes_read = staged.bytes
                for piece in plan.pieces:
                    b = piece.backup
                    device_type, devices = staged.sources[b.id]
                    started = time.monotonic()
                    try:
                        session.run(tsql.verify_only(device_type, devices,
                                                     checksum=bool(b.meta.get("has_backup_checksums", True))))
                    except BackupMediaError as exc:
                        report.corrupt_pieces.append(b.id)
                        report.checks.append(CheckResult(f"verifyonly {b.id}", False, str(exc),
                                                         time.monotonic() - started))
                        continue
                    report.checks.append(CheckResult(f"verifyonly {b.id}", True, "RESTORE VERIFYONLY WITH "
                                                     "CHECKSUM: complete and readable", time.monotonic() - started))
                if report.corrupt_pieces:
                    raise BackupMediaError("RESTORE VERIFYONLY rejected " + ", ".join(report.corrupt_pieces))
                started = time.monotonic()
                try:
                    run_restore(engine, session, plan, scratch, staged.sources)
                except BackupMediaError:
                    report.corrupt_pieces.extend(p.backup.id for p in plan.pieces)
                    raise
                report.restore_seconds = time.monotonic() - started
                report.checks.append(CheckResult("restore", True, f"restored as {scratch} WITH MOVE",
                                                 report.restore_seconds))
                report.checks.append(_timed("DBCC CHECKDB", lambda: engine.checkdb(session, scratch)))
                if not report.checks[-1].ok:
                    report.corrupt_pieces.extend(p.backup.id for p in plan.pieces)
                report.checks.extend(_policy_checks(rt, db, engine, session, scratch))
            finally:
                with contextlib.suppress(SqlServerError):
                    engine.drop_database(session, scratch)
        report.passed = all(c.ok for c in report.checks)
        if not report.passed:
            report.error = "; ".join(f"{c.name}: {c.detail[:200]}" for c in report.checks if not c.ok)
    except DrkitError as exc:
        if not any(c.name == "restore" or c.name.startswith("verifyonly") and not c.ok for c in report.checks):
            report.checks.append(CheckResult("restore", False, scrub(str(exc), secrets), time.monotonic() - t0))
        report.error = scrub(f"verification failed: {exc}", secrets)
    finally:
        staged.remove()
    report.total_seconds = time.monotonic() - t0
    return report


def _policy_checks(rt: Runtime, db: str, engine: SqlServerEngine, session: Session, scratch: str) -> list[CheckResult]:
    results = []
    for check in rt.policy.database(db).verify.checks_for("sqlserver"):
        if check in POSTGRES_ONLY_CHECKS or check.lower() == "checkdb":
            continue  # PostgreSQL's built-ins; DBCC CHECKDB always runs

        def run(q: str = check) -> str:
            result = session.run(tsql.in_database(scratch, q, f"check {q[:60]}"))
            value = next((row[0] for rs in result.result_sets for row in rs.rows[:1]), None)
            if value is False:
                raise SqlServerError(f"returned false: {q}")
            return f"{q} → {value}"

        results.append(_timed(f"sql: {check[:60]}", run))
    return results


def verify_backup_mssql(
    rt: Runtime, db: str, backup_id: str | None = None, *, engine: SqlServerEngine | None = None,
    actor: str = "drkit-verify", now: datetime | None = None,
) -> VerifyReport:
    """Verify one backup (default: the newest full) and record it verified, or corrupt when proven bad."""
    rt.policy.database(db)
    engine = engine or sqlserver_engine(rt, db)
    backups = rt.catalog.list_backups(db)
    target = verify_target(rt, db, backups, backup_id)
    plan = plan_for_backup_mssql(target, backups, rt.catalog.all_copies(db), tier_order=rt.tier_order)
    report = verify_plan_mssql(rt, db, engine, plan, target.id, now=now)
    rt.catalog.audit(actor=actor, action="backup.verify", database=db, subject=report.subject,
                     detail=report.summary())
    if report.passed:
        status, reason = "verified", f"verification restore passed ({report.subject})"
    elif target.id in report.corrupt_pieces:
        status, reason = "corrupt", (report.error or "verification failed")[:500]
    else:
        return report  # could not prove it either way (access, timeout): reported, status unchanged
    if rt.catalog.get(target.id).status != status:
        rt.catalog.set_status(target.id, status, actor=actor, reason=reason)
    return report


__all__ = [
    "CorruptionFoundError", "ImportResult", "MssqlRestoreResult", "import_history", "make_plan_mssql",
    "restore_to_point", "run_restore", "scratch_name", "sqlserver_engine", "stopat_local", "take_backup",
    "verify_backup_mssql", "verify_plan_mssql",
]
