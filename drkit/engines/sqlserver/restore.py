"""Restoring a SQL Server plan into a new database: stage the pieces the server cannot read itself,
then ``RESTORE`` full, diff and logs ``NORECOVERY``, the last ``WITH RECOVERY`` (and ``STOPAT``).

A restore never overwrites: the target database must not exist. Pieces SQL Server wrote itself (URL
or DISK devices) are read by the server from where they are; pieces in drkit's tiers are decrypted into
the staging directory (``sqlserver.local_path`` / ``disk_path``) and removed afterwards.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drkit.backup import DATA_OBJECT
from drkit.binding import stream_context
from drkit.catalog.records import BackupRecord
from drkit.engines.sqlserver import tsql
from drkit.engines.sqlserver.chain import NATIVE_TIER
from drkit.engines.sqlserver.chain_model import SQLSERVER_CHAIN
from drkit.engines.sqlserver.engine import SqlServerEngine, sqlserver_engine
from drkit.engines.sqlserver.errors import RestoreTargetError
from drkit.engines.sqlserver.msdb import NATIVE_FORMATS
from drkit.engines.sqlserver.odbc import Session
from drkit.engines.sqlserver.tsql import DeviceType
from drkit.errors import ConfigError, DrkitError, RestoreError
from drkit.pipeline import DecryptingReader
from drkit.plans import RestorePiece, RestorePlan
from drkit.restore import make_plan
from drkit.runtime import Runtime

Sources = Mapping[str, tuple[DeviceType, Sequence[str]]]
"""Backup id → where the server reads it: its device type and devices."""


def is_native(piece: RestorePiece) -> bool:
    """True when the server reads ``piece`` itself (a URL or DISK backup it wrote), not from drkit's tiers."""
    return piece.tier == NATIVE_TIER or piece.backup.format in NATIVE_FORMATS


def devices_of(backup: BackupRecord) -> tuple[DeviceType, list[str]]:
    """The device type and devices msdb recorded for ``backup``; only URL or DISK devices restore."""
    devices = backup.meta.get("devices") or []
    types = {str(d.get("type")) for d in devices if isinstance(d, Mapping)}
    if types == {"URL"}:
        return "URL", [str(d["device"]) for d in devices]
    if types == {"DISK"}:
        return "DISK", [str(d["device"]) for d in devices]
    raise RestoreError(f"backup {backup.id} is on {', '.join(sorted(types)) or 'no'} device(s); drkit restores "
                       "only from URL or DISK devices")


@dataclass
class Staged:
    """Where the server reads each piece, and the files drkit staged for it (removed by :meth:`remove`)."""

    sources: dict[str, tuple[DeviceType, list[str]]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    bytes: int = 0

    def remove(self) -> None:
        for f in self.files:
            with contextlib.suppress(OSError):
                f.unlink()


def stage(rt: Runtime, engine: SqlServerEngine, pieces: Sequence[RestorePiece], staged: Staged) -> None:
    """Where the server reads each piece: its own device, or a file drkit decrypts into the staging dir."""
    for piece in pieces:
        b = piece.backup
        if is_native(piece):
            staged.sources[b.id] = devices_of(b)
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
    sources: Sources,
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
