"""SQL Server's own facts about one catalog record, typed: read from the record's ``meta``.

The catalog keeps what both engines share in typed columns (positions, base link, lineage; see
:class:`drkit.catalog.records.BackupRecord`) and the rest of the ``msdb.dbo.backupset`` row in ``meta``
(written by :meth:`drkit.engines.sqlserver.msdb.BackupSet.meta`; LSNs as decimal strings, since they
are ``numeric(25,0)``). :meth:`SqlServerFacts.of` reads that ``meta`` back as typed values; it only
reads, so ``meta`` stays the storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from drkit.catalog.records import BackupRecord
from drkit.engines.sqlserver.msdb import Device


@dataclass(frozen=True)
class SqlServerFacts:
    """The chain-relevant facts of one SQL Server backup set (LSNs as ints, GUIDs lowercase)."""

    first_lsn: int
    last_lsn: int
    checkpoint_lsn: int | None
    database_backup_lsn: int | None
    differential_base_lsn: int | None
    differential_base_guid: str | None
    backup_set_uuid: str | None
    database_guid: str | None
    family_guid: str | None
    is_copy_only: bool
    first_recovery_fork_guid: str | None
    last_recovery_fork_guid: str | None
    fork_point_lsn: int | None
    position: int | None
    """The backup set's position in its media set (``RESTORE … WITH FILE``); None when not recorded."""
    devices: tuple[Device, ...]

    @classmethod
    def of(cls, rec: BackupRecord) -> SqlServerFacts | None:
        """The facts of ``rec``; None when it is no SQL Server backup with an LSN range.

        The LSN range comes from ``meta`` (``first_lsn`` / ``last_lsn``), else from the record's
        positions; values that are not integers read as None.
        """
        meta = rec.meta
        if meta.get("engine") != "sqlserver" and "first_lsn" not in meta:
            return None
        first = _int(meta, "first_lsn")
        last = _int(meta, "last_lsn")
        first = rec.start_lsn if first is None else first
        last = rec.end_lsn if last is None else last
        if first is None or last is None:
            return None
        return cls(
            first_lsn=first, last_lsn=last, checkpoint_lsn=_int(meta, "checkpoint_lsn"),
            database_backup_lsn=_int(meta, "database_backup_lsn"),
            differential_base_lsn=_int(meta, "differential_base_lsn"),
            differential_base_guid=_guid(meta, "differential_base_guid"),
            backup_set_uuid=_guid(meta, "backup_set_uuid"), database_guid=_guid(meta, "database_guid"),
            family_guid=_guid(meta, "family_guid"), is_copy_only=bool(meta.get("is_copy_only")),
            first_recovery_fork_guid=_guid(meta, "first_recovery_fork_guid"),
            last_recovery_fork_guid=_guid(meta, "last_recovery_fork_guid") or rec.lineage,
            fork_point_lsn=_int(meta, "fork_point_lsn"), position=_int(meta, "position"),
            devices=_devices(meta.get("devices")),
        )


def _int(meta: Mapping[str, Any], key: str) -> int | None:
    value = meta.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _guid(meta: Mapping[str, Any], key: str) -> str | None:
    value = meta.get(key)
    return str(value).strip("{}").lower() if value else None


def _devices(value: Any) -> tuple[Device, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(Device(str(d.get("device", "")), str(d.get("type", "")))
                 for d in value if isinstance(d, Mapping))

