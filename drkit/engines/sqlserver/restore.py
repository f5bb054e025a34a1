"""Restoring a SQL Server plan into a new database: check every device the server reads itself
(``RESTORE HEADERONLY``: there, and holding the set, at which ``FILE``), plan around missing ones, stage the
pieces the server cannot read itself, then ``RESTORE`` full, diff and logs ``NORECOVERY`` (``STOPAT`` on
every log of a point-in-time restore), the last ``WITH RECOVERY``, and check the database came ONLINE.

A restore never overwrites: the target database must not exist. Pieces SQL Server wrote itself (URL
or DISK devices) are read by the server from where they are; pieces in drkit's tiers are decrypted into
the staging directory (``sqlserver.local_path`` / ``disk_path``) and removed afterwards.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drkit.backup import DATA_OBJECT
from drkit.binding import require_key, stream_context
from drkit.catalog.records import BackupRecord
from drkit.engines.sqlserver import tsql
from drkit.engines.sqlserver.chain import NATIVE_TIER
from drkit.engines.sqlserver.chain_model import SQLSERVER_CHAIN
from drkit.engines.sqlserver.engine import SqlServerEngine, is_sql2022, sqlserver_engine
from drkit.engines.sqlserver.errors import BackupDeviceError, BackupMediaError, RestoreTargetError
from drkit.engines.sqlserver.msdb import NATIVE_FORMATS
from drkit.engines.sqlserver.odbc import Session
from drkit.engines.sqlserver.tsql import BackupKind, DeviceType
from drkit.errors import ConfigError, DrkitError, RestoreError, RestorePlanError
from drkit.pipeline import DecryptingReader
from drkit.plans import RestorePiece, RestorePlan
from drkit.restore import make_plan
from drkit.runtime import Runtime


@dataclass(frozen=True)
class Source:
    """Where the server reads one backup set: its devices, and on DISK media the set's position
    (``FILE = n``; a file may hold several appended sets). URL media hold one set: no FILE."""

    device_type: DeviceType
    devices: tuple[str, ...]
    file: int | None = None


Sources = Mapping[str, Source]
"""Backup id → where the server reads it."""


def is_native(piece: RestorePiece) -> bool:
    """True when the server reads ``piece`` itself (a URL or DISK backup it wrote), not from drkit's tiers."""
    return piece.tier == NATIVE_TIER or piece.backup.format in NATIVE_FORMATS


def devices_of(backup: BackupRecord) -> Source:
    """Where msdb recorded ``backup`` (only URL or DISK devices restore), with its ``backupset.position``."""
    devices = backup.meta.get("devices") or []
    types = {str(d.get("type")) for d in devices if isinstance(d, Mapping)}
    names = tuple(str(d["device"]) for d in devices if isinstance(d, Mapping))
    position = int(backup.meta.get("position") or 1)
    if types == {"URL"}:
        if position != 1:
            raise RestoreError(f"backup {backup.id} is backup set {position} of its URL media; RESTORE FROM URL "
                               "takes no FILE, so drkit cannot pick that set")
        return Source("URL", names)
    if types == {"DISK"}:
        return Source("DISK", names, position)
    raise RestoreError(f"backup {backup.id} is on {', '.join(sorted(types)) or 'no'} device(s); drkit restores "
                       "only from URL or DISK devices")


@dataclass
class Staged:
    """Where the server reads each piece, and the files drkit staged for it (removed by :meth:`remove`)."""

    sources: dict[str, Source] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    bytes: int = 0

    def remove(self) -> None:
        for f in self.files:
            with contextlib.suppress(OSError):
                f.unlink()


def stage(rt: Runtime, engine: SqlServerEngine, pieces: Sequence[RestorePiece], staged: Staged) -> None:
    """Where the server reads each piece: its own device, or a file drkit decrypts into the staging dir.

    Native pieces already in ``staged.sources`` (resolved by :func:`check_devices`) are kept as they are.
    """
    for piece in pieces:
        b = piece.backup
        if is_native(piece):
            staged.sources.setdefault(b.id, devices_of(b))
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
        staged.sources[b.id] = Source("DISK", (engine.disk_device(name),), 1)  # drkit's own file: one set


# -- before a restore starts: every device there, holding its set -----------------------------------------


def _matches(row: Mapping[str, object], b: BackupRecord) -> bool:
    """True when a RESTORE HEADERONLY row is the backup set ``b`` records (by GUID, else by LSN range)."""
    uuid = str(b.meta.get("backup_set_uuid") or "").strip("{}").lower()
    if uuid and row.get("BackupSetGUID") is not None:
        return str(row["BackupSetGUID"]).strip("{}").lower() == uuid
    first, last = b.meta.get("first_lsn"), b.meta.get("last_lsn")
    return first is not None and str(row.get("FirstLSN")) == str(first) and str(row.get("LastLSN")) == str(last)


def check_devices(session: Session, pieces: Sequence[RestorePiece], sources: dict[str, Source], *,
                  damaged_is_missing: bool = True) -> dict[str, str]:
    """``RESTORE HEADERONLY`` on every native piece's devices before anything is restored.

    A piece whose devices open and list its backup set gets its source (with the position the media
    reports, ``FILE = n``) in ``sources``; the others are returned, id → why (a device missing or
    unreadable, or the media no longer holding the set). Already checked pieces are not read again.
    A media SQL Server calls damaged counts as missing too, unless ``damaged_is_missing`` is false
    (verification: its recorded position is kept, and RESTORE VERIFYONLY proves it corrupt).
    """
    missing: dict[str, str] = {}
    for piece in pieces:
        b = piece.backup
        if not is_native(piece) or b.id in sources:
            continue
        src = devices_of(b)
        try:
            rows = session.run(tsql.header_only(src.device_type, src.devices)).rows()
        except BackupMediaError as exc:
            if damaged_is_missing:
                missing[b.id] = f"{', '.join(src.devices)}: {exc}"
            else:
                sources[b.id] = src
            continue
        except BackupDeviceError as exc:
            missing[b.id] = f"{', '.join(src.devices)}: {exc}"
            continue
        row = next((r for r in rows if _matches(r, b)), None)
        if row is None:
            missing[b.id] = (f"{', '.join(src.devices)} no longer holds backup set "
                             f"{b.meta.get('backup_set_uuid') or b.id} (overwritten or replaced)")
            continue
        position = int(str(row.get("Position") or 1))
        sources[b.id] = Source(src.device_type, src.devices, position if src.device_type == "DISK" else None)
    return missing


def plan_around_missing(rt: Runtime, db: str, session: Session, plan: RestorePlan, sources: dict[str, Source],
                        now: datetime | None) -> RestorePlan:
    """``plan``, or another chain to the same point when a native device of it is gone; refused naming the
    missing devices when none reaches as far."""
    missing: dict[str, str] = {}
    for _ in range(20):  # each round excludes at least one more backup
        found = check_devices(session, plan.pieces, sources)
        if not found:
            return plan
        missing.update(found)
        backups = [b for b in rt.catalog.list_backups(db) if b.id not in missing]
        why = "; ".join(f"{bid}: {text}" for bid, text in missing.items())
        try:
            other = SQLSERVER_CHAIN.plan_restore(db, backups, rt.catalog.all_copies(db), target=plan.target_time,
                                                 now=now or datetime.now(UTC), tier_order=rt.tier_order)
        except RestorePlanError as exc:
            raise RestoreError(f"backup device(s) of the restore are missing or unreadable ({why}), and no other "
                               f"chain reaches the target: {exc}. Nothing was restored") from None
        if plan.target_time is None and other.reaches < plan.reaches:
            raise RestoreError(f"backup device(s) of the restore are missing or unreadable ({why}); without them "
                               f"the backups reach only {other.reaches.isoformat()}, not {plan.reaches.isoformat()}: "
                               "restore to that time explicitly, or bring the files back. Nothing was restored")
        require_key(rt, [p.backup for p in other.pieces])  # another chain: the key must read it too
        plan = replace(other, reasons=(*other.reasons, f"planned around missing device(s): {why}"))
    raise RestoreError(f"too many missing backup devices of {db!r}; nothing was restored")


# -- the restore --------------------------------------------------------------------------------------------


def _offset_minutes(b: BackupRecord) -> int | None:
    value = b.meta.get("time_zone_minutes")
    return None if value is None else int(value)


def stopat_local(plan: RestorePlan, session: Session) -> str | None:
    """The plan's target as server-local ``YYYY-MM-DDTHH:MM:SS.fff`` (STOPAT takes local time), with the
    server's UTC offset at that instant.

    SQL Server 2022 converts it itself (``AT TIME ZONE CURRENT_TIMEZONE_ID()``, daylight saving included);
    a local time the clocks show twice (the hour after they go back) is refused: STOPAT could mean either.
    Before 2022 the offset is the one msdb recorded on both sides of the target (the piece before it and
    the log covering it); when they differ the clocks changed in between, and the target is refused
    rather than converted wrongly.
    """
    if plan.recovery != "time" or plan.target_time is None:
        return None
    utc = plan.target_time.astimezone(UTC).replace(tzinfo=None)
    if is_sql2022(session):
        row = session.run(tsql.server_local_time(utc.isoformat(timespec="milliseconds"))).one()
        hour_before, at, hour_after = (int(row[k]) for k in ("offset_hour_before", "offset_minutes",
                                                             "offset_hour_after"))
        if hour_before > at or at > hour_after:
            raise RestorePlanError(
                f"the target {plan.target_time.isoformat()} is {row['local_time']} on the server's clock "
                f"({row.get('time_zone')}), a local time that happens twice (the clocks went back, UTC offset "
                f"{max(hour_before, at):+d} to {min(at, hour_after):+d} minutes), and STOPAT takes local time: pick a "
                "target more than an hour from the change")
        return str(row["local_time"])[:23]
    pieces = plan.pieces
    before = _offset_minutes(pieces[-2].backup) if len(pieces) > 1 else None
    after = _offset_minutes(pieces[-1].backup)
    known = {o for o in (before, after) if o is not None}
    if len(known) > 1:
        raise RestorePlanError(
            f"the server's UTC offset changed from {before:+d} to {after:+d} minutes (daylight saving) between "
            f"{pieces[-2].backup.id} and {pieces[-1].backup.id}, around the target {plan.target_time.isoformat()}; "
            "SQL Server before 2022 cannot say which offset STOPAT means there. Pick a target outside that "
            "window (or restore on SQL Server 2022, which converts it exactly)")
    minutes = known.pop() if known else session.utc_offset_minutes()
    return (utc + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


def _kind(b: BackupRecord) -> BackupKind:
    return "log" if b.kind == "log" else "full" if b.kind == "full" else "diff"


def run_restore(
    engine: SqlServerEngine,
    session: Session,
    plan: RestorePlan,
    into: str,
    sources: Sources,
    on_step: Callable[[str], None] | None = None,
) -> str:
    """Each piece NORECOVERY, the last WITH RECOVERY; the database's state checked after; its status.

    FILELISTONLY of the full gives every file a new name (MOVE); a later piece whose file list has a file
    the steps before did not (added after the full) gets MOVE for it on its own step. A point-in-time
    plan puts the same STOPAT on every RESTORE LOG (not on a bulk-logged log that ends before it: it is
    applied whole). A STOPAT outside the logs leaves the database RESTORING with only a warning: that
    fails here, with what the server said.
    """
    full = plan.pieces[0].backup
    src = sources[full.id]
    files = engine.file_list(session, src.device_type, src.devices, file=src.file)
    known = {f.logical_name for f in files}
    moves = engine.moves(session, into, files)
    stopat = stopat_local(plan, session)
    n = len(plan.pieces)
    said: list[str] = []
    for i, piece in enumerate(plan.pieces):
        b = piece.backup
        src = sources[b.id]
        last = i == n - 1
        if i > 0:
            added = [f for f in engine.file_list(session, src.device_type, src.devices, file=src.file)
                     if f.logical_name not in known]
            known.update(f.logical_name for f in added)
            moves = engine.moves(session, into, added) if added else []
        bulk_before = bool(b.meta.get("has_bulk_logged_data")) and not last
        if on_step:
            on_step(f"{b.kind} {b.id}")
        result = session.run(tsql.restore(
            into, _kind(b), device_type=src.device_type, devices=src.devices, moves=moves, recovery=last,
            stopat=stopat if b.kind == "log" and not bulk_before else None,
            checksum=bool(b.meta.get("has_backup_checksums", True)), file=src.file))
        said = [m for m in result.messages if "percent processed" not in m]
    state = engine.database_exists(session, into)
    if state != "ONLINE":
        at = f" STOPAT {stopat} (server-local) is outside the logs restored;" if stopat else ""
        raise RestoreError(f"after the last RESTORE, database {into!r} is {state or 'missing'}, not ONLINE:{at} "
                           f"the server said: {' / '.join(said) or 'nothing'}")
    return state


@dataclass(frozen=True)
class MssqlRestoreResult:
    plan: RestorePlan
    database: str
    seconds: float
    staged_bytes: int
    steps: tuple[str, ...]


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
    plan = plan or make_plan(rt, db, SQLSERVER_CHAIN, target, now)  # refused if the key cannot read it
    t0 = time.monotonic()
    steps: list[str] = []
    staged = Staged()
    try:
        with engine.session() as session:
            state = engine.database_exists(session, into)
            if state is not None:
                raise RestoreTargetError(f"database {into!r} already exists on {engine.endpoint} ({state}); drkit "
                                         "restores only into a new database name (nothing was changed)")
            plan = plan_around_missing(rt, db, session, plan, staged.sources, now)
            stage(rt, engine, plan.pieces, staged)
            try:
                run_restore(engine, session, plan, into, staged.sources, steps.append)
            except DrkitError as exc:
                exc.args = (f"{exc} (the partial restore is left as database {into!r}, RESTORING; drop it with "
                            f"DROP DATABASE {tsql.quote_name(into)} when done)",)
                raise
    finally:
        staged.remove()
    return MssqlRestoreResult(plan, into, time.monotonic() - t0, staged.bytes, tuple(steps))
