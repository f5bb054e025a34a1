"""What the server says about backups and replicas, parsed: msdb history rows, file lists, AG state.

LSNs are ``numeric(25,0)`` and do not fit the catalog's BIGINT columns: they are kept as decimal strings
in a backup's ``meta`` (see :meth:`BackupSet.meta`). msdb records server-local times; they become UTC
here (:func:`to_utc`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from drkit.engines.sqlserver.errors import SqlServerError

FORMAT_URL = "mssql-native-url"
"""Written by SQL Server straight to Azure Blob (``BACKUP … TO URL``); SQL Server reads it back itself."""
FORMAT_DISK = "mssql-native-disk"
"""A backup file on the server's disk that drkit did not store (imported from msdb)."""
FORMAT_PIPELINE = "drkit-mssql-bak-v1"
"""A ``BACKUP … TO DISK`` file streamed through drkit's pipeline (zstd, AES-256-GCM) into a tier store."""
NATIVE_FORMATS = (FORMAT_URL, FORMAT_DISK)

_KIND_OF_TYPE = {"D": "full", "I": "diff", "L": "log"}
_DEVICE_TYPES = {2: "DISK", 9: "URL", 7: "VIRTUAL", 5: "TAPE"}


def parse_lsn(value: Any) -> str | None:
    """An LSN as the decimal string the catalog keeps (None stays None)."""
    if value is None:
        return None
    if isinstance(value, (int, Decimal)):
        return str(int(value))
    text = str(value).strip()
    return str(int(Decimal(text))) if text else None


def parse_guid(value: Any) -> str | None:
    """A uniqueidentifier as lowercase text without braces."""
    if value is None:
        return None
    return str(value).strip("{}").lower()


def parse_bool(value: Any) -> bool:
    """A bit column (or a driver's text for one) as a bool."""
    return bool(value) if not isinstance(value, str) else value.strip().lower() in ("1", "true", "yes")


def to_utc(local: datetime, time_zone: Any, fallback_offset_minutes: int) -> datetime:
    """msdb's server-local time to UTC: ``time_zone`` is the offset in 15-minute units (127: unknown)."""
    if local.tzinfo is not None:
        return local.astimezone(UTC)
    offset = fallback_offset_minutes
    if time_zone is not None and int(time_zone) != 127:
        offset = int(time_zone) * 15
    return (local - timedelta(minutes=offset)).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Device:
    device: str
    type: str  # URL, DISK, VIRTUAL, TAPE


@dataclass(frozen=True)
class BackupSet:
    """One msdb.dbo.backupset row with its media family devices, in catalog-ready form."""

    kind: str
    backup_set_id: int
    backup_set_uuid: str
    name: str | None
    database_name: str
    first_lsn: str
    last_lsn: str
    checkpoint_lsn: str | None
    database_backup_lsn: str | None
    differential_base_lsn: str | None
    differential_base_guid: str | None
    is_copy_only: bool
    has_backup_checksums: bool
    is_damaged: bool
    first_recovery_fork_guid: str | None
    last_recovery_fork_guid: str | None
    fork_point_lsn: str | None
    database_guid: str | None
    family_guid: str | None
    start_time: datetime
    finish_time: datetime
    time_zone_minutes: int | None
    backup_size: int
    compressed_backup_size: int
    recovery_model: str | None
    server_name: str | None
    encrypted: bool
    devices: tuple[Device, ...]
    position: int = 1
    """The set's position in its media (``RESTORE … WITH FILE = position``); > 1 when sets were appended."""
    has_bulk_logged_data: bool = False
    """A log backup holding minimally logged (BULK_LOGGED) changes: restorable only to its end."""
    last_valid_restore_time: datetime | None = None
    """SQL Server 2022: the latest point a log backup restores to (UTC); None before 2022."""

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], utc_offset_minutes: int) -> BackupSet:
        r = rows[0]
        kind = _KIND_OF_TYPE.get(str(r["type"]).strip())
        if kind is None:
            raise SqlServerError(f"backup set {r['backup_set_id']} has type {r['type']!r}, which drkit does "
                                 "not restore (only D, I and L)")
        tz = r.get("time_zone")
        tz_minutes = None if tz is None or int(tz) == 127 else int(tz) * 15
        devices = tuple(Device(str(x["physical_device_name"]), _DEVICE_TYPES.get(int(x["device_type"] or 0),
                                                                               str(x["device_type"])))
                        for x in sorted(rows, key=lambda x: int(x.get("family_sequence_number") or 0)))
        first, last = parse_lsn(r["first_lsn"]), parse_lsn(r["last_lsn"])
        if first is None or last is None:
            raise SqlServerError(f"backup set {r['backup_set_id']} has no LSN range in msdb")
        return cls(
            kind=kind, backup_set_id=int(r["backup_set_id"]),
            backup_set_uuid=parse_guid(r["backup_set_uuid"]) or "",
            name=r.get("name"), database_name=str(r["database_name"]), first_lsn=first, last_lsn=last,
            checkpoint_lsn=parse_lsn(r["checkpoint_lsn"]), database_backup_lsn=parse_lsn(r["database_backup_lsn"]),
            differential_base_lsn=parse_lsn(r["differential_base_lsn"]),
            differential_base_guid=parse_guid(r["differential_base_guid"]),
            is_copy_only=parse_bool(r["is_copy_only"]), has_backup_checksums=parse_bool(r["has_backup_checksums"]),
            is_damaged=parse_bool(r["is_damaged"]),
            first_recovery_fork_guid=parse_guid(r["first_recovery_fork_guid"]),
            last_recovery_fork_guid=parse_guid(r["last_recovery_fork_guid"]),
            fork_point_lsn=parse_lsn(r["fork_point_lsn"]), database_guid=parse_guid(r["database_guid"]),
            family_guid=parse_guid(r["family_guid"]),
            start_time=to_utc(r["backup_start_date"], tz, utc_offset_minutes),
            finish_time=to_utc(r["backup_finish_date"], tz, utc_offset_minutes),
            time_zone_minutes=tz_minutes if tz_minutes is not None else utc_offset_minutes,
            backup_size=int(r["backup_size"] or 0),
            compressed_backup_size=int(r["compressed_backup_size"] or r["backup_size"] or 0),
            recovery_model=r.get("recovery_model"), server_name=r.get("server_name"),
            encrypted=bool(r.get("key_algorithm")), devices=devices,
            position=int(r.get("position") or 1), has_bulk_logged_data=parse_bool(r.get("has_bulk_logged_data")),
            last_valid_restore_time=None if r.get("last_valid_restore_time") is None
            else to_utc(r["last_valid_restore_time"], tz, utc_offset_minutes))

    @property
    def end_time(self) -> datetime:
        """Latest point this backup restores to: a base's end; for a log, ``last_valid_restore_time`` where
        the server records it (SQL Server 2022), else where its log was read (its start)."""
        if self.kind != "log":
            return self.finish_time
        return max(self.start_time, self.last_valid_restore_time or self.start_time)

    @property
    def format(self) -> str:
        """The catalog format of a backup found in msdb: where its devices are (URL, DISK, or others)."""
        types = {d.type for d in self.devices}
        if types == {"URL"}:
            return FORMAT_URL
        if types == {"DISK"}:
            return FORMAT_DISK
        return "mssql-native-" + "-".join(sorted(t.lower() for t in types))

    def meta(self) -> dict[str, Any]:
        """What the catalog keeps (JSON: LSNs as decimal strings; no secrets, devices are URLs or paths)."""
        return {
            "engine": "sqlserver", "backup_set_id": self.backup_set_id, "backup_set_uuid": self.backup_set_uuid,
            "server_database": self.database_name, "first_lsn": self.first_lsn, "last_lsn": self.last_lsn,
            "checkpoint_lsn": self.checkpoint_lsn, "database_backup_lsn": self.database_backup_lsn,
            "differential_base_lsn": self.differential_base_lsn,
            "differential_base_guid": self.differential_base_guid, "is_copy_only": self.is_copy_only,
            "has_backup_checksums": self.has_backup_checksums, "is_damaged": self.is_damaged,
            "first_recovery_fork_guid": self.first_recovery_fork_guid,
            "last_recovery_fork_guid": self.last_recovery_fork_guid, "fork_point_lsn": self.fork_point_lsn,
            "database_guid": self.database_guid, "family_guid": self.family_guid,
            "backup_start": self.start_time.isoformat(), "backup_finish": self.finish_time.isoformat(),
            "time_zone_minutes": self.time_zone_minutes, "backup_size": self.backup_size,
            "compressed_backup_size": self.compressed_backup_size, "recovery_model": self.recovery_model,
            "server_name": self.server_name, "encrypted": self.encrypted,
            "devices": [{"device": d.device, "type": d.type} for d in self.devices],
            "position": self.position, "has_bulk_logged_data": self.has_bulk_logged_data,
            "last_valid_restore_time": None if self.last_valid_restore_time is None
            else self.last_valid_restore_time.isoformat(),
        }


def backup_sets(rows: Sequence[Mapping[str, Any]], utc_offset_minutes: int) -> list[BackupSet]:
    """Group history rows (one per stripe) into backup sets, in msdb order; unknown types are skipped."""
    grouped: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(int(row["backup_set_id"]), []).append(row)
    out = []
    for _, group in sorted(grouped.items()):
        if str(group[0]["type"]).strip() in _KIND_OF_TYPE:
            out.append(BackupSet.from_rows(group, utc_offset_minutes))
    return out


@dataclass(frozen=True)
class FileInfo:
    """One file of a backup (RESTORE FILELISTONLY)."""

    logical_name: str
    physical_name: str
    type: str  # D data, L log, F full-text catalog, S FILESTREAM/memory-optimized container
    file_id: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any], position: int) -> FileInfo:
        return cls(str(row["LogicalName"]), str(row["PhysicalName"]), str(row["Type"]).strip(),
                   int(row.get("FileId") or position))


@dataclass(frozen=True)
class ReplicaDatabaseState:
    """One database on one availability-group replica, as the server's DMVs report it."""

    replica: str
    role: str
    availability_mode: str
    database: str | None
    synchronization_state: str | None
    is_failover_ready: bool
    end_of_log_lsn: int | None
    last_commit_time: datetime | None
    is_suspended: bool
    cluster_type: str = "WSFC"
    """The group's ``cluster_type_desc``: WSFC, EXTERNAL (Pacemaker) or NONE (no cluster manager)."""
    connected_state: str | None = None
    """A secondary's ``connected_state_desc``: CONNECTED while the primary is running and talks to it."""
    recovery_lsn: int | None = None
    """On a primary: the end of its log when it became the primary (where a forced failover forked)."""
    database_state: str | None = None
    """``sys.databases.state_desc`` here (ONLINE once recovery after a failover is done)."""

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> ReplicaDatabaseState:
        return cls(
            replica=str(r["replica_server_name"]), role=str(r.get("role_desc") or "?"),
            availability_mode=str(r.get("availability_mode_desc") or "?"), database=r.get("database_name"),
            synchronization_state=r.get("synchronization_state_desc"),
            is_failover_ready=parse_bool(r.get("is_failover_ready")),
            end_of_log_lsn=None if r.get("end_of_log_lsn") is None else int(r["end_of_log_lsn"]),
            last_commit_time=r.get("last_commit_time"), is_suspended=parse_bool(r.get("is_suspended")),
            cluster_type=str(r.get("cluster_type_desc") or "WSFC"), connected_state=r.get("connected_state_desc"),
            recovery_lsn=None if r.get("recovery_lsn") is None else int(r["recovery_lsn"]),
            database_state=r.get("database_state"))
