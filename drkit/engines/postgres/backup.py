"""PostgreSQL backups: a full or block-level differential base backup, and log backups from the WAL spool.

The shared steps (catalog row, encrypted stream into the store, manifest, descriptor, labels, completion;
see ``drkit.backup``) wrap what only PostgreSQL knows: its base backup stream and where the WAL chain
continues.
"""

from __future__ import annotations

from drkit.backup import begin, finish_backup, guarded, object_key, read_manifest, write_encrypted
from drkit.catalog.records import BackupRecord
from drkit.engines.base import BaseInfo, Progress
from drkit.engines.postgres.engine import server
from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE, format_lsn, parse_segment_name, segment_name
from drkit.engines.postgres.manifest import check_manifest
from drkit.engines.postgres.walspool import Anchor, list_spool, plan_batch, prune_spool
from drkit.errors import BackupNotFoundError, PrerequisiteError, WalGapError
from drkit.faults import fault_point
from drkit.runtime import Runtime
from drkit.tiers.naming import DATA_OBJECT, MANIFEST_OBJECT


def take_base_backup(rt: Runtime, db: str, kind: str, *, progress: Progress | None = None) -> BackupRecord:
    """A full or differential backup of ``db`` into the policy's backup tier."""
    if kind not in ("full", "diff"):
        raise ValueError(f"not a base backup kind: {kind}")
    engine = server(rt, db)
    _ = rt.key
    engine.require_ready()
    base: BaseInfo | None = None
    base_rec: BackupRecord | None = None
    tier = rt.policy.backup_tier
    if kind == "diff":
        base_rec = newest_full(rt, db)
        manifest = read_manifest(rt, base_rec)
        check_manifest(base_rec, manifest, source=MANIFEST_OBJECT)
        files = manifest["files"]
        assert base_rec.start_lsn is not None
        base = BaseInfo(backup_id=base_rec.id, start_lsn=base_rec.start_lsn, files=files)
    rec = begin(rt, db, kind, base_id=base_rec.id if base_rec else None)

    def body() -> BackupRecord:
        outcome, data = write_encrypted(
            rt, tier, object_key(rec, DATA_OBJECT),
            lambda w: engine.diff_backup(w, base, progress=progress) if base
            else engine.full_backup(w, progress=progress))
        meta = dict(outcome.meta)
        meta["segment_size"] = outcome.manifest.get("segment_size", DEFAULT_SEGMENT_SIZE)
        return finish_backup(rt, tier, rec, data, dict(outcome.manifest), timeline=outcome.timeline,
                       start_lsn=outcome.start_lsn, end_lsn=outcome.end_lsn, start_wal=outcome.start_wal,
                       end_wal=outcome.end_wal, start_time=outcome.start_time, end_time=outcome.end_time, meta=meta,
                       lineage=str(outcome.timeline))

    return guarded(rt, tier, rec, body)


def newest_full(rt: Runtime, db: str) -> BackupRecord:
    fulls = rt.catalog.list_backups(db, kinds=["full"], statuses=["completed", "verified"])
    if not fulls:
        raise BackupNotFoundError(f"no completed full backup of {db!r} to base a differential on; "
                                  f"run `drkit backup full {db}` first")
    return max(fulls, key=lambda b: (b.end_time or b.started_at, b.id))


def wal_anchor(rt: Runtime, db: str, spool_segments: list[str], segment_size: int) -> Anchor:
    """Where the next log backup must start: right after the last one, or at the newest full."""
    restorable = ["completed", "verified"]
    fulls = rt.catalog.list_backups(db, kinds=["full"], statuses=restorable)
    if not fulls:
        raise PrerequisiteError(f"no full backup of {db!r} yet: log backups need one to start from; "
                                f"run `drkit backup full {db}` first")
    # Newest by time, not LSN: after a PITR the new timeline's LSNs can be below the old one's.
    full = max(fulls, key=lambda b: (b.end_time or b.started_at, b.id))
    assert full.start_lsn is not None and full.timeline is not None
    full_segno = full.start_lsn // segment_size
    logs = rt.catalog.list_backups(db, kinds=["log"], statuses=restorable)
    prev = max(logs, key=lambda b: (b.end_time or b.started_at, b.id)) if logs else None
    if prev is not None and prev.end_wal:
        tli, segno = parse_segment_name(prev.end_wal, segment_size)
        nxt = segno + 1
        after = f"log backup {prev.id} (ends {prev.end_wal})"
        if tli == full.timeline and nxt >= full_segno:
            return Anchor(timeline=tli, next_segno=nxt, after=after)
        # The newest full started after the last log: continue the old chain only if the spool
        # still joins it to the full; otherwise the chain restarts at the full.
        if tli == full.timeline and all(
            segment_name(tli, s, segment_size) in spool_segments for s in range(nxt, full_segno + 1)
        ):
            return Anchor(timeline=tli, next_segno=nxt, after=after)
    return Anchor(timeline=full.timeline, next_segno=full_segno, after=f"full backup {full.id}")


def take_log_backup(rt: Runtime, db: str) -> BackupRecord | None:
    """Close the current WAL segment and ship every finished one since the last log backup."""
    engine = server(rt, db)
    _ = rt.key
    engine.require_ready()
    switch = engine.switch_wal()
    anchor = wal_anchor(rt, db, list_spool(engine.spool)[0], switch.segment_size)
    if switch.timeline != anchor.timeline:
        raise WalGapError(
            f"timeline switch: {db!r} is writing timeline {switch.timeline} but the log chain after "
            f"{anchor.after} is on timeline {anchor.timeline} (a promotion or PITR happened); take a new "
            f"full backup (drkit backup full {db}) to start a chain on the new timeline")
    if switch.segno < anchor.next_segno:
        return None  # no WAL written since the last log backup
    engine.wait_archived(switch.segment)
    segments, histories = list_spool(engine.spool)
    anchor = wal_anchor(rt, db, segments, switch.segment_size)
    batch = plan_batch(segments, histories, anchor, upto_segno=switch.segno, segment_size=switch.segment_size)
    if batch is None:
        return None
    tier = rt.policy.backup_tier
    previous = rt.catalog.list_backups(db, kinds=["log"], statuses=["completed", "verified"])
    start_time = max((b.end_time for b in previous if b.end_time), default=None)
    rec = begin(rt, db, "log", meta={"segments": len(batch.segments)})

    def body() -> BackupRecord:
        manifest, data = write_encrypted(rt, tier, object_key(rec, DATA_OBJECT),
                                          lambda w: engine.write_wal_archive(w, batch))
        return finish_backup(rt, tier, rec, data, manifest, timeline=batch.timeline, start_lsn=batch.start_lsn,
                       end_lsn=batch.end_lsn, start_wal=batch.start_wal, end_wal=batch.end_wal,
                       start_time=start_time, end_time=switch.end_time, lineage=str(batch.timeline),
                       meta={"segments": len(batch.segments), "segment_size": switch.segment_size,
                             "range": f"{format_lsn(batch.start_lsn)}-{format_lsn(batch.end_lsn)}"})

    done = guarded(rt, tier, rec, body)
    fault_point("walspool.prune")
    prune_spool(engine.spool, batch.end_wal, switch.segment_size)
    fault_point("walspool.prune", "after")
    return done
