"""Restore-chain planning for PostgreSQL: which backups, from which tier, reach a point in time.

:func:`plan_restore` is pure: a function of catalog records and a target, so
it is property-tested over generated catalogs. It picks the newest full at or
before the target, the newest diff on it at or before the target, then the
unbroken run of log backups from the base's start segment to one that covers
the target, each piece from the cheapest tier holding a complete copy. When
nothing reaches the target it says why, and what does exist.

:data:`POSTGRES_CHAIN` is these rules behind :class:`drkit.engines.base.ChainModel`; its ``index`` is
:class:`drkit.engines.postgres.restore_index.PostgresRestoreIndex`, the same rules indexed once for a
retention sweep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import NamedTuple

from drkit.catalog.records import RESTORABLE_STATUSES, BackupRecord, CopyRecord
from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE, format_lsn, segment_span
from drkit.errors import RestorePlanError
from drkit.plans import CopyIndex, Recovery, RestorePlan
from drkit.plans import fmt_time as _fmt


def segment_size(b: BackupRecord) -> int:
    """The WAL segment size of ``b``'s cluster (16 MiB unless its meta says otherwise)."""
    return int(b.meta.get("segment_size", DEFAULT_SEGMENT_SIZE))


def start_segment(b: BackupRecord) -> int:
    """The WAL segment a base backup starts in: where its log chain must begin."""
    assert b.start_lsn is not None
    return b.start_lsn // segment_size(b)


def log_segments(b: BackupRecord) -> tuple[int, int] | None:
    """The first and last WAL segment a log backup holds; None unless both of its WAL names are segment
    names (such a log joins no chain)."""
    if not b.start_wal or not b.end_wal:
        return None
    return segment_span(b.start_wal, b.end_wal, int(b.meta.get("segment_size", DEFAULT_SEGMENT_SIZE)))


def _log_chain(
    base: BackupRecord, logs: Sequence[BackupRecord], segs: Mapping[str, tuple[int, int]], until: datetime | None,
    *, until_lsn: int | None = None,
) -> list[BackupRecord]:
    """Logs joined segment to segment from the base's start, up to one whose end covers ``until``
    (or ``until_lsn``). With neither, as far as the run is unbroken.
    """
    need = start_segment(base)
    chain: list[BackupRecord] = []
    spans = [(*segs[lg.id], lg) for lg in logs if lg.timeline == base.timeline]
    by_start: dict[int, list[tuple[int, int, BackupRecord]]] = {}
    for span in spans:
        by_start.setdefault(span[0], []).append(span)

    def covering(segno: int) -> list[tuple[int, int, BackupRecord]]:
        exact = by_start.get(segno)  # the usual case: the next log starts where the last one ended
        return exact if exact else [sp for sp in spans if sp[0] <= segno <= sp[1]]

    while True:
        if until is not None and chain and chain[-1].end_time is not None and chain[-1].end_time >= until:
            return chain
        if until_lsn is not None and chain and (chain[-1].end_lsn or 0) >= until_lsn:
            return chain
        found = covering(need)
        if not found:
            return chain
        nxt = max(found, key=lambda sp: (sp[1], sp[2].end_time or base.end_time))
        chain.append(nxt[2])
        need = nxt[1] + 1


class _Candidates(NamedTuple):
    usable: list[BackupRecord]
    corrupt: list[BackupRecord]
    fulls: list[BackupRecord]
    diffs: list[BackupRecord]
    logs: list[BackupRecord]
    segs: dict[str, tuple[int, int]]
    """Each usable log's first and last WAL segment, read once per plan."""


def _candidates(
    database: str, backups: Sequence[BackupRecord], where: CopyIndex, tier_order: Sequence[str]
) -> _Candidates:
    mine = [b for b in backups if b.database == database]
    segs: dict[str, tuple[int, int]] = {}
    for b in mine:
        if b.kind == "log" and (span := log_segments(b)) is not None:
            segs[b.id] = span
    restorable = [b for b in mine if b.status in RESTORABLE_STATUSES and b.end_time
                  and b.start_lsn is not None and (b.kind != "log" or b.id in segs)]
    usable = [b for b in restorable if where.has(b)]
    corrupt = [b for b in mine if b.status == "corrupt"]
    fulls = [b for b in usable if b.kind == "full"]
    if not fulls:
        extra = f" ({len(corrupt)} corrupt backup(s) are not used)" if corrupt else ""
        no_copy = [b.id for b in restorable if b.kind == "full" and not where.has(b)]
        if no_copy:
            extra += (f"; full backup(s) {', '.join(no_copy)} have no complete copy in the tiers "
                      f"{', '.join(tier_order)}")
        raise RestorePlanError(f"no restorable full backup of {database!r} in the catalog{extra}; "
                               f"run `drkit backup full {database}` first")
    return _Candidates(usable, corrupt, fulls, [b for b in usable if b.kind == "diff"],
                       [b for b in usable if b.kind == "log"], segs)


def plan_restore(
    database: str,
    backups: Sequence[BackupRecord],
    copies: Sequence[CopyRecord],
    *,
    target: datetime | None,
    now: datetime,
    tier_order: Sequence[str],
) -> RestorePlan:
    """The chain that restores ``database`` to ``target`` (None: the latest point the backups reach)."""
    where = CopyIndex(copies, tier_order)
    usable, corrupt, fulls, diffs, logs, segs = _candidates(database, backups, where, tier_order)
    fulls.sort(key=lambda b: b.end_time or now, reverse=True)
    if target is not None:
        if target > now:
            raise RestorePlanError(f"target {_fmt(target)} is in the future (now is {_fmt(now)})")
        earliest = min(b.end_time for b in fulls if b.end_time)
        if target < earliest:
            raise RestorePlanError(
                f"target {_fmt(target)} is before the earliest restorable point of {database!r}, "
                f"{_fmt(earliest)} (full backup {min(fulls, key=lambda b: b.end_time or now).id})")
    reasons: list[str] = []
    if corrupt:
        reasons.append("skipped corrupt: " + ", ".join(b.id for b in corrupt))
    failures: list[str] = []
    for full in fulls:
        assert full.end_time is not None
        if target is not None and full.end_time > target:
            continue
        on_full = [d for d in diffs if d.base_id == full.id and d.end_time
                   and (target is None or d.end_time <= target)]
        diff = max(on_full, key=lambda d: d.end_time or now) if on_full else None
        base = diff or full
        assert base.end_time is not None
        why = [f"full {full.id}: the newest full at or before the target, ends {_fmt(full.end_time)}"]
        if diff:
            why.append(f"diff {diff.id}: the newest diff on it, ends {_fmt(diff.end_time)}")
        if target is not None and target <= base.end_time:
            return RestorePlan(database, target, "immediate", base.end_time,
                               tuple(where.piece(b) for b in (full, diff) if b),
                               (*why, "recovery stops at the base backup's consistency point", *reasons))
        chain = _log_chain(base, logs, segs, target)
        if target is None:
            reaches = chain[-1].end_time if chain else base.end_time
            assert reaches is not None
            recovery: Recovery = "end" if chain else "immediate"
            why.append(f"{len(chain)} log backup(s) replayed to the end, reaching {_fmt(reaches)}")
            return RestorePlan(database, None, recovery, reaches,
                               tuple(where.piece(b) for b in (full, diff, *chain) if b), (*why, *reasons))
        if chain and chain[-1].end_time is not None and chain[-1].end_time >= target:
            why.append(f"{len(chain)} log backup(s) from {chain[0].start_wal} to {chain[-1].end_wal}, "
                       f"replayed to {_fmt(target)}")
            return RestorePlan(database, target, "time", target,
                               tuple(where.piece(b) for b in (full, diff, *chain) if b), (*why, *reasons))
        reached = chain[-1].end_time if chain else base.end_time
        failures.append(f"from {base.kind} {base.id} the logs reach only {_fmt(reached)}"
                        + (f" (log chain ends at {chain[-1].end_wal})" if chain else " (no log backups join it)"))
        break  # an older full cannot reach further: the same WAL continues through the newer base
    latest = max((lg.end_time for lg in logs if lg.end_time), default=None)
    gap_hint = ""
    if latest is not None and target is not None and latest >= target:
        gap_hint = (f"; log backups exist past the target (up to {_fmt(latest)}) but do not join the base: "
                    "a WAL gap; restore to a time before it, or take a new full backup")
    elif latest is not None:
        gap_hint = f"; the latest log backup ends {_fmt(latest)}"
    raise RestorePlanError(
        f"cannot reach {_fmt(target)} for {database!r}: " + "; ".join(failures) + gap_hint
        + ". Backups: " + ", ".join(f"{b.id} ({_fmt(b.end_time)})" for b in sorted(
            (b for b in usable if b.kind != "log"), key=lambda b: b.end_time or now)))


def plan_restore_to_lsn(
    database: str,
    backups: Sequence[BackupRecord],
    copies: Sequence[CopyRecord],
    *,
    target_lsn: int,
    tier_order: Sequence[str],
) -> RestorePlan:
    """The chain that restores ``database`` up to and including the WAL record at ``target_lsn``."""
    where = CopyIndex(copies, tier_order)
    usable, corrupt, fulls, diffs, logs, segs = _candidates(database, backups, where, tier_order)
    before = [f for f in fulls if (f.end_lsn or 0) <= target_lsn]
    if not before:
        first = min(fulls, key=lambda b: b.end_lsn or 0)
        raise RestorePlanError(
            f"LSN {format_lsn(target_lsn)} is before the earliest restorable point of {database!r}: "
            f"full backup {first.id} is consistent from LSN {format_lsn(first.end_lsn or 0)}")
    full = max(before, key=lambda b: b.end_lsn or 0)
    on_full = [d for d in diffs if d.base_id == full.id and (d.end_lsn or 0) <= target_lsn]
    diff = max(on_full, key=lambda d: d.end_lsn or 0) if on_full else None
    base = diff or full
    assert base.end_time is not None
    why = [f"full {full.id}: the newest full consistent at or before LSN {format_lsn(target_lsn)}"]
    if diff:
        why.append(f"diff {diff.id}: the newest diff on it")
    if corrupt:
        why.append("skipped corrupt: " + ", ".join(b.id for b in corrupt))
    if base.end_lsn == target_lsn:
        return RestorePlan(database, None, "immediate", base.end_time,
                           tuple(where.piece(b) for b in (full, diff) if b), tuple(why), target_lsn)
    chain = _log_chain(base, logs, segs, None, until_lsn=target_lsn)
    if chain and (chain[-1].end_lsn or 0) >= target_lsn and chain[-1].end_time is not None:
        why.append(f"{len(chain)} log backup(s) from {chain[0].start_wal} to {chain[-1].end_wal}")
        return RestorePlan(database, None, "lsn", chain[-1].end_time,
                           tuple(where.piece(b) for b in (full, diff, *chain) if b), tuple(why), target_lsn)
    reach = format_lsn(chain[-1].end_lsn or 0) if chain else format_lsn(base.end_lsn or 0)
    raise RestorePlanError(
        f"cannot reach LSN {format_lsn(target_lsn)} for {database!r}: from {base.kind} {base.id} the log "
        f"backups reach LSN {reach}" + (f" (chain ends at {chain[-1].end_wal})" if chain else ""))


def plan_for_backup(
    target: BackupRecord,
    backups: Sequence[BackupRecord],
    copies: Sequence[CopyRecord],
    *,
    tier_order: Sequence[str],
) -> RestorePlan:
    """The smallest restore that proves ``target``: a full alone; a diff on its full; a log with its chain.

    ``target`` itself is used whatever its verification status (re-verifying a corrupt backup is
    allowed); what it depends on must be restorable.
    """
    where = CopyIndex(copies, tier_order)
    if target.status not in (*RESTORABLE_STATUSES, "corrupt") or target.end_time is None:
        raise RestorePlanError(f"backup {target.id} is {target.status}; only completed backups can be verified")
    if not where.has(target):
        raise RestorePlanError(f"backup {target.id} has no complete copy in the tiers {', '.join(tier_order)}")
    if target.kind == "full":
        return RestorePlan(target.database, None, "immediate", target.end_time, (where.piece(target),),
                           (f"full {target.id} alone, to its consistency point",))
    if target.kind == "diff":
        base = next((b for b in backups if b.id == target.base_id), None)
        if base is None or base.status not in RESTORABLE_STATUSES or not where.has(base):
            state = "missing" if base is None else base.status if base.status not in RESTORABLE_STATUSES \
                else "without a complete copy"
            raise RestorePlanError(f"diff {target.id} cannot be verified: its full {target.base_id} is {state}")
        return RestorePlan(target.database, None, "immediate", target.end_time,
                           (where.piece(base), where.piece(target)),
                           (f"full {base.id}, then diff {target.id}, to the diff's consistency point",))
    others = [b for b in backups if b.id != target.id]
    promoted = replace(target, status="completed") if target.status == "corrupt" else target
    plan = plan_restore(target.database, [*others, promoted], copies, target=target.end_time,
                        now=target.end_time, tier_order=tier_order)
    if target.id not in {p.backup.id for p in plan.pieces}:
        raise RestorePlanError(f"log backup {target.id} is not part of any restorable chain")
    return plan
