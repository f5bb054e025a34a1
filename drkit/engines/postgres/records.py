"""PostgreSQL's own facts about one catalog record, typed.

The catalog's typed columns hold what both engines share (positions: here the LSNs; ``lineage``: the
timeline as text) and PostgreSQL's own ``timeline``, ``start_wal`` and ``end_wal``; the rest (WAL
segment size, system identifier, server version, segment count) is in ``meta``.
:meth:`PostgresFacts.of` reads both as typed values; it only reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from drkit.catalog.records import BackupRecord
from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE


@dataclass(frozen=True)
class PostgresFacts:
    """The chain-relevant facts of one PostgreSQL backup."""

    timeline: int
    start_lsn: int
    end_lsn: int
    start_wal: str | None
    end_wal: str | None
    segment_size: int
    """WAL segment size in bytes (16 MiB unless the cluster was initialised otherwise)."""
    system_identifier: str | None
    """The cluster's ``pg_control_system().system_identifier`` (bases only)."""
    server_version_num: int | None
    segments: int | None
    """How many WAL segments a log backup holds."""

    @classmethod
    def of(cls, rec: BackupRecord) -> PostgresFacts | None:
        """The facts of ``rec``; None when it has no timeline or LSN range (not a PostgreSQL backup)."""
        if rec.timeline is None or rec.start_lsn is None or rec.end_lsn is None:
            return None
        meta = rec.meta
        sysid = meta.get("system_identifier")
        return cls(
            timeline=rec.timeline, start_lsn=rec.start_lsn, end_lsn=rec.end_lsn, start_wal=rec.start_wal,
            end_wal=rec.end_wal, segment_size=_int(meta, "segment_size") or DEFAULT_SEGMENT_SIZE,
            system_identifier=None if sysid is None else str(sysid),
            server_version_num=_int(meta, "server_version_num"), segments=_int(meta, "segments"),
        )


def _int(meta: Mapping[str, Any], key: str) -> int | None:
    value = meta.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None
