"""A PostgreSQL piece's manifest against its catalog record: a swapped object or an altered catalog is caught
before anything is laid down."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drkit.catalog.records import BackupRecord
from drkit.engines.postgres.lsn import parse_lsn
from drkit.errors import IntegrityError


def _lsn_or_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_lsn(value)
        except ValueError:
            return value
    return value


def check_manifest(backup: BackupRecord, manifest: Mapping[str, Any], *, source: str = "data.drk") -> None:
    """IntegrityError unless a PostgreSQL piece's manifest describes ``backup`` as the catalog records it.

    Compared: database, kind, the diff's base, format, timeline, start and end LSN, first and last WAL
    segment (record fields that are empty are not compared). ``source`` names the object in the message.
    """
    problems: list[str] = []

    def same(what: str, found: Any, recorded: Any) -> None:
        if recorded is not None and found != recorded:
            problems.append(f"{what} {found!r} (catalog: {recorded!r})")

    same("database", manifest.get("database"), backup.database)
    same("kind", manifest.get("kind"), backup.kind)
    if backup.kind in ("full", "diff"):
        if manifest.get("base") != backup.base_id:
            problems.append(f"base {manifest.get('base')!r} (catalog: {backup.base_id!r})")
        wal = manifest.get("wal") or []
        end_lsn = manifest.get("stop_lsn")
    else:
        wal = manifest.get("segments") or []
        end_lsn = manifest.get("end_lsn")
    if backup.format is not None and backup.format != "None":
        same("format", str(manifest.get("format")), backup.format)
    same("timeline", manifest.get("timeline"), backup.timeline)
    if backup.start_lsn is not None:
        same("start LSN", _lsn_or_text(manifest.get("start_lsn")), backup.start_lsn)
    if backup.end_lsn is not None:
        same("end LSN", _lsn_or_text(end_lsn), backup.end_lsn)
    same("first WAL segment", wal[0] if wal else None, backup.start_wal)
    same("last WAL segment", wal[-1] if wal else None, backup.end_wal)
    if problems:
        raise IntegrityError(
            f"backup {backup.id}'s {source} does not match its catalog record: {'; '.join(problems)} "
            "(a stored object was swapped or the catalog was altered)"
        )
