"""Equivalent backup histories for both engines: one abstract history, mapped to each engine's records.

An abstract history is what happened to a database, whatever its engine: fulls, diffs on the latest full,
log backups that continue the log chain or leave a gap, a broken chain that only a new full heals, a
switch to a new log lineage (PostgreSQL: a promotion to a new timeline; SQL Server: a restore that starts
a new recovery fork), each backup with a status and copies in tiers, hours apart. Positions are abstract
too: every backup covers a run of *slots* (a base one slot, a log the slots from where the chain stands to
now); slots only grow.

:meth:`History.postgres` maps it to records as PostgreSQL's backups write them (a slot is a WAL segment:
WAL names, start/end LSNs, timeline); :meth:`History.sqlserver` to records as
``drkit.engines.sqlserver.operations.take_backup`` writes them (an msdb ``backupset`` row in ``meta``: LSNs
as decimal strings, past 2**63, the differential base as the full's ``checkpoint_lsn`` and
``backup_set_uuid``, recovery fork GUIDs; no WAL fields). Both mappings use the same backup ids, times,
statuses and copies, so anything planned from them (a restore, retention, status) compares by id.

``positions="meta"`` (the default) leaves SQL Server's ``start_lsn``/``end_lsn`` empty, as records
written before the engine-neutral catalog; ``positions="columns"`` fills them with ``first_lsn``/``last_lsn``
as well.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from hypothesis import strategies as st

from drkit.catalog.records import BackupRecord, CopyRecord, HoldRecord
from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE, segment_name

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DB = "orders"
SEG = DEFAULT_SEGMENT_SIZE
COMPLETED = ("completed", "verified", "corrupt")  # statuses of a backup that finished writing


def hours(n: float) -> datetime:
    return T0 + timedelta(hours=n)


@dataclass(frozen=True)
class Backup:
    """One backup of the abstract history."""

    id: str
    kind: Literal["full", "diff", "log"]
    status: str
    at: datetime
    """When it ended (its consistency point; for a log, the last commit it holds)."""
    first: int
    last: int
    """The slots it covers: a base one slot; a log a run of them."""
    lineage: int
    """The log lineage it belongs to (PostgreSQL timeline; SQL Server recovery fork), from 1."""
    base_id: str | None = None
    """A diff's full."""
    copies: Mapping[str, str] = field(default_factory=dict)
    """Tier -> copy status."""

    @property
    def finished(self) -> bool:
        return self.status in COMPLETED

    @property
    def end_time(self) -> datetime | None:
        return self.at if self.finished else None

    @property
    def finished_at(self) -> datetime | None:
        return None if self.status == "running" else self.at

    @property
    def started_at(self) -> datetime:
        return self.at - timedelta(minutes=1)


@dataclass
class History:
    backups: list[Backup] = field(default_factory=list)
    holds: list[tuple[str, bool]] = field(default_factory=list)
    """(backup id, removed)."""
    now: datetime = T0
    times: list[datetime] = field(default_factory=list)
    """When each backup ended: where restore plans change."""
    database: str = DB

    def with_copies(self, copies: Mapping[str, Mapping[str, str]]) -> History:
        """The same history with other copies (backup id -> tier -> status)."""
        return dataclasses.replace(self, backups=[dataclasses.replace(b, copies=dict(copies.get(b.id, {})))
                                                  for b in self.backups])

    # -- the two mappings ------------------------------------------------------------------------------

    def postgres(self) -> list[BackupRecord]:
        return [postgres_record(b, self.database) for b in self.backups]

    def sqlserver(self, positions: Literal["meta", "columns"] = "meta") -> list[BackupRecord]:
        fulls = {b.id: b for b in self.backups if b.kind == "full"}
        return [sqlserver_record(b, self.database, fulls, positions) for b in self.backups]

    def copies(self) -> list[CopyRecord]:
        out: list[CopyRecord] = []
        for b in self.backups:
            for tier, status in sorted(b.copies.items()):
                out.append(CopyRecord(id=len(out) + 1, backup_id=b.id, tier=tier, store_key=f"{tier}/{b.id}",
                                      status=status, stored_bytes=500, sha256="a" * 64, created_at=b.at,
                                      updated_at=b.at))
        return out

    def hold_records(self) -> list[HoldRecord]:
        return [HoldRecord(id=n, backup_id=backup_id, database=self.database, reason=f"INC-{n}", created_at=T0,
                           created_by="alice", removed_at=T0 if removed else None,
                           removed_by="bob" if removed else None, removed_reason="closed" if removed else None)
                for n, (backup_id, removed) in enumerate(self.holds, 1)]


# -- PostgreSQL --------------------------------------------------------------------------------------------


def postgres_record(b: Backup, database: str) -> BackupRecord:
    """A slot is a WAL segment; a base starts and ends inside its slot, a log holds its slots whole."""
    if b.kind == "log":
        start_lsn, end_lsn = b.first * SEG, (b.last + 1) * SEG
    else:
        start_lsn, end_lsn = b.first * SEG + 0x28, b.first * SEG + 0x1000
    meta: dict[str, Any] = {"segment_size": SEG}
    if b.kind != "log":
        meta["system_identifier"] = "7310000000000000001"
    return BackupRecord(
        id=b.id, database=database, kind=b.kind, status=b.status, base_id=b.base_id, timeline=b.lineage,
        start_lsn=start_lsn, end_lsn=end_lsn, start_wal=segment_name(b.lineage, b.first),
        end_wal=segment_name(b.lineage, b.last), started_at=b.started_at, finished_at=b.finished_at,
        start_time=b.started_at, end_time=b.end_time, raw_bytes=1000, stored_bytes=500, sha256="a" * 64,
        format="tar+zstd+aes" if b.kind != "log" else "wal+zstd+aes", key_id="k1", error=None,
        verified_at=b.at if b.status == "verified" else None, meta=meta, lineage=str(b.lineage))


# -- SQL Server --------------------------------------------------------------------------------------------


def slot_lsn(slot: int) -> int:
    """Where a slot starts, as a SQL Server LSN (VLF sequence x 10**15 + block x 10**5 + slot): past 2**63."""
    return (10_000 + slot) * 10**15


def fork_guid(lineage: int) -> str:
    return f"0c1f0000-0000-4000-8000-{lineage:012x}"


def _lsn_range(b: Backup) -> tuple[int, int, int | None]:
    """first_lsn, last_lsn, checkpoint_lsn: a base inside its slot; a log from its first slot's start to
    the start of the slot after its last (so the next log starts exactly where it ends)."""
    if b.kind == "log":
        return slot_lsn(b.first), slot_lsn(b.last + 1), None
    at = slot_lsn(b.first)
    return at + 1 * 10**5 + 1, at + 3 * 10**5 + 1, at + 2 * 10**5 + 1


def sqlserver_record(b: Backup, database: str, fulls: Mapping[str, Backup],
                     positions: Literal["meta", "columns"] = "meta") -> BackupRecord:
    """What take_backup records: a running or failed backup has only the row ``begin`` opened; a finished one
    its msdb backupset row in ``meta`` (``BackupSet.meta()``, plus the pipeline's ``target``)."""
    meta: dict[str, Any] = {"engine": "sqlserver", "target": "disk"}
    first = last = None
    if b.finished:
        first, last, checkpoint = _lsn_range(b)
        base = fulls.get(b.base_id or "") if b.kind == "diff" else None
        base_checkpoint = _lsn_range(base)[2] if base is not None else None
        fork = fork_guid(b.lineage)
        meta.update({
            "backup_set_id": int(b.id[1:]), "backup_set_uuid": f"5e7a0000-0000-4000-8000-{int(b.id[1:]):012x}",
            "server_database": database, "first_lsn": str(first), "last_lsn": str(last),
            "checkpoint_lsn": None if checkpoint is None else str(checkpoint),
            "database_backup_lsn": None, "differential_base_lsn": None if base_checkpoint is None
            else str(base_checkpoint),
            "differential_base_guid": None if base is None else f"5e7a0000-0000-4000-8000-{int(base.id[1:]):012x}",
            "is_copy_only": False, "has_backup_checksums": True, "is_damaged": b.status == "corrupt",
            "first_recovery_fork_guid": fork, "last_recovery_fork_guid": fork, "fork_point_lsn": None,
            "database_guid": "dbdb0000-0000-4000-8000-000000000001",
            "family_guid": "fa000000-0000-4000-8000-000000000001",
            "backup_start": b.started_at.isoformat(), "backup_finish": b.at.isoformat(), "time_zone_minutes": 0,
            "backup_size": 1000, "compressed_backup_size": 500, "recovery_model": "FULL",
            "server_name": "SQL1", "encrypted": False,
            "devices": [{"device": f"/var/opt/mssql/staging/{b.id}.{'trn' if b.kind == 'log' else 'bak'}",
                         "type": "DISK"}],
        })
    columns = positions == "columns"
    return BackupRecord(
        id=b.id, database=database, kind=b.kind, status=b.status, base_id=b.base_id, timeline=None,
        start_lsn=first if columns else None, end_lsn=last if columns else None, start_wal=None, end_wal=None,
        started_at=b.started_at, finished_at=b.finished_at, start_time=b.started_at if b.finished else None,
        end_time=b.end_time, raw_bytes=1000, stored_bytes=500, sha256="a" * 64 if b.finished else None,
        format="drkit-mssql-bak-v1" if b.finished else None, key_id="k1" if b.finished else None, error=None,
        verified_at=b.at if b.status == "verified" else None, meta=meta,
        lineage=fork_guid(b.lineage) if b.finished and columns else None)


# -- generated histories -------------------------------------------------------------------------------------

STATUS = st.sampled_from(["verified"] * 6 + ["completed"] * 4 + ["corrupt", "failed", "running"])
_COPY_TIERS = st.sampled_from(["local", "blob", "archive", "tape"])
_COPY_STATUS = st.sampled_from(["complete"] * 6 + ["pending", "deleted"])


@st.composite
def copy_sets(draw: st.DrawFn, order: Sequence[str]) -> dict[str, str]:
    """Mostly a complete copy in a policy tier, often several; sometimes anything at all."""
    out: dict[str, str] = dict(draw(st.lists(st.tuples(_COPY_TIERS, _COPY_STATUS), max_size=3)))
    if draw(st.integers(0, 9)):
        out[draw(st.sampled_from(list(order)))] = "complete"
    return out


@st.composite
def histories(draw: st.DrawFn, tiers: Iterable[str] = ("local", "blob", "archive"), max_size: int = 25,
              max_gap_hours: int = 40, max_now_hours: int = 24 * 90) -> History:
    """A database's history: events hours apart; a log continues the chain (or leaves a gap after a lost
    one); a break ends the chain until the next full; a new lineage needs a new full too."""
    order = list(tiers)
    h = History()
    t = 0
    slot = 2
    lineage = 1
    chain_at: int | None = None  # the slot the next log backup starts at; None: no chain to continue
    last_full: Backup | None = None
    kinds = ["full", "diff", "diff", *["log"] * 8, "gap", "break", "lineage"]
    events = ["full", *draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=max_size))]
    for n, ev in enumerate(events, 1):
        t += draw(st.integers(1, max_gap_hours))
        slot += draw(st.integers(0, 2))
        if ev == "diff" and (last_full is None or last_full.lineage != lineage):
            ev = "full"
        if ev == "log" and chain_at is None:
            ev = "full"
        if ev in ("full", "diff", "log"):
            status = draw(STATUS)
            copies = draw(copy_sets(order))
            at = hours(t)
            h.times.append(at)
        if ev == "full":
            b = Backup(f"F{n}", "full", status, at, slot, slot, lineage, copies=copies)
            if b.finished:
                last_full = b
                if chain_at is None:
                    chain_at = slot
            slot += 1
        elif ev == "diff":
            assert last_full is not None
            b = Backup(f"D{n}", "diff", status, at, slot, slot, lineage, base_id=last_full.id, copies=copies)
            slot += 1
        elif ev == "log":
            assert chain_at is not None
            slot = max(slot, chain_at)
            b = Backup(f"L{n}", "log", status, at, chain_at, slot, lineage, copies=copies)
            if b.finished:  # a failed or running log backup leaves its slots to the next one
                chain_at = slot + 1
            slot += 1
        elif ev == "gap" and chain_at is not None:
            chain_at += draw(st.integers(1, 3))  # slots lost before they were backed up
            slot = max(slot, chain_at)
            continue
        elif ev == "break":
            chain_at = None
            slot += draw(st.integers(1, 3))
            continue
        elif ev == "lineage":
            lineage += 1
            chain_at = None
            continue
        else:
            continue
        h.backups.append(b)
    for b in h.backups:
        if draw(st.integers(0, 12)) == 0:
            h.holds.append((b.id, draw(st.booleans())))
    h.now = hours(t + draw(st.integers(0, max_now_hours)))
    return h


@dataclass(frozen=True)
class Policy:
    """Tiers (name -> keep_days, in order) and the options of ``drkit.retention.plan``."""

    keep_days: Mapping[str, int]
    options: Mapping[str, Any]

    @property
    def order(self) -> list[str]:
        return list(self.keep_days)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """local, maybe blob, maybe archive; short windows so that generated histories outlive them."""
    names = ["local"] + [t for t in ("blob", "archive") if draw(st.booleans())]
    keeps = {"local": st.integers(0, 6), "blob": st.integers(0, 25), "archive": st.integers(0, 60)}
    keep_days = {t: draw(keeps[t]) for t in names}
    options: dict[str, Any] = {}
    if draw(st.integers(0, 3)):
        options["verified_only_to"] = frozenset(draw(st.lists(st.sampled_from(names[1:] or ["blob"]), max_size=2)))
    if not draw(st.integers(0, 3)):
        options["verified_kinds"] = frozenset(draw(st.lists(st.sampled_from(["full", "diff", "log"]), max_size=3)))
    if len(names) > 1 and draw(st.integers(0, 3)):
        options["move_into"] = frozenset(draw(st.lists(st.sampled_from(names[1:]), max_size=2)))
    elif len(names) > 1 and not draw(st.integers(0, 3)):
        options["move_into"] = frozenset()
    if not draw(st.integers(0, 5)):
        options["routine_keeps"] = True
    return Policy(keep_days, options)


def restore_targets(h: History, since: datetime | None = None) -> list[datetime | None]:
    """The latest point, and every instant where a restore plan can change and around it."""
    points = {h.now}
    for x in h.times:
        points.update({x, x - timedelta(microseconds=1), x + timedelta(microseconds=1), x - timedelta(minutes=30)})
    return [None, *sorted(p for p in points if (since is None or p >= since) and p <= h.now)]
