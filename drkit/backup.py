"""Taking backups: engine stream → pipeline → store, recorded in the catalog as one fact.

Order of events for every kind: check inputs (database, key, server
prerequisites) before anything is written; open a 'running' catalog row;
stream into the store under an uncommitted name; commit the object; write the
backup's manifest and self-description beside it; then, in one catalog
transaction, mark the backup completed with its copy. Any failure on the way
leaves no object that looks whole and marks the row 'failed' with the reason.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drkit.catalog.records import BackupRecord
from drkit.engines.base import BaseInfo, Progress
from drkit.engines.walspool import Anchor, list_spool, plan_batch, prune_spool
from drkit.errors import BackupNotFoundError, DrkitError, PrerequisiteError, WalGapError
from drkit.lsn import DEFAULT_SEGMENT_SIZE, format_lsn, parse_segment_name, segment_name
from drkit.pipeline import DecryptingReader, EncryptingWriter
from drkit.runtime import Runtime
from drkit.tiers import DATA_OBJECT as DATA_OBJECT
from drkit.tiers import DESCRIPTOR_OBJECT as DESCRIPTOR_OBJECT
from drkit.tiers import MANIFEST_OBJECT as MANIFEST_OBJECT
from drkit.tiers import descriptor_bytes, label_copy
from drkit.tiers import object_key as object_key


@dataclass(frozen=True)
class _Written:
    sha256: str
    raw_bytes: int
    stored_bytes: int


def write_encrypted(
    rt: Runtime, tier: str, key: str, produce: Callable[[EncryptingWriter], Any]
) -> tuple[Any, _Written]:
    store = rt.store(tier)
    with store.writer(key) as sink:
        writer = EncryptingWriter(sink, rt.key)
        result = produce(writer)
        writer.close()
    stats = writer.stats
    return result, _Written(stats.sha256, stats.raw_bytes, stats.stored_bytes)


def read_manifest(rt: Runtime, backup: BackupRecord, tier: str | None = None) -> dict[str, Any]:
    """A backup's manifest, from ``tier`` or the cheapest tier holding a complete copy."""
    held = {c.tier for c in rt.catalog.copies(backup.id) if c.status == "complete"}
    tiers = [tier] if tier else [t for t in rt.tier_order if t in held] or [rt.policy.backup_tier]
    error: DrkitError | None = None
    for t in tiers:
        try:
            with rt.store(t).reader(object_key(backup, MANIFEST_OBJECT)) as src:
                data = DecryptingReader(src, rt.key).read()
        except DrkitError as exc:
            error = exc
            continue
        result: dict[str, Any] = json.loads(data)
        return result
    assert error is not None
    raise error


def _cleanup(rt: Runtime, tier: str, backup: BackupRecord) -> None:
    store = rt.store(tier)
    for name in (DATA_OBJECT, MANIFEST_OBJECT, DESCRIPTOR_OBJECT):
        with contextlib.suppress(DrkitError):
            store.delete(object_key(backup, name))


def finish_backup(
    rt: Runtime, tier: str, rec: BackupRecord, data: _Written, manifest: dict[str, Any], **fields: Any
) -> BackupRecord:
    write_encrypted(rt, tier, object_key(rec, MANIFEST_OBJECT),
                     lambda w: w.write(json.dumps(manifest, sort_keys=True).encode()))
    done = rt.catalog.complete_backup(
        rec.id, raw_bytes=data.raw_bytes, stored_bytes=data.stored_bytes, sha256=data.sha256,
        format=str(manifest.get("format")), key_id=rt.key.key_id,
        copies=[(tier, object_key(rec, DATA_OBJECT), data.stored_bytes, data.sha256)], **fields)
    with rt.store(tier).writer(object_key(done, DESCRIPTOR_OBJECT)) as fh:
        fh.write(descriptor_bytes(done))
    label_copy(rt, tier, done)
    return done


def guarded(rt: Runtime, tier: str, rec: BackupRecord, body: Callable[[], BackupRecord]) -> BackupRecord:
    try:
        return body()
    except BaseException as exc:
        _cleanup(rt, tier, rec)
        message = str(exc) if isinstance(exc, DrkitError) else f"{type(exc).__name__}: {exc}"
        rt.catalog.fail_backup(rec.id, message[:2000])
        raise


def take_base_backup(rt: Runtime, db: str, kind: str, *, progress: Progress | None = None) -> BackupRecord:
    """A full or differential backup of ``db`` into the policy's backup tier."""
    if kind not in ("full", "diff"):
        raise ValueError(f"not a base backup kind: {kind}")
    engine = rt.engine(db)
    _ = rt.key
    engine.require_ready()
    base: BaseInfo | None = None
    base_rec: BackupRecord | None = None
    tier = rt.policy.backup_tier
    if kind == "diff":
        base_rec = newest_full(rt, db)
        files = read_manifest(rt, base_rec)["files"]
        assert base_rec.start_lsn is not None
        base = BaseInfo(backup_id=base_rec.id, start_lsn=base_rec.start_lsn, files=files)
    rec = rt.catalog.begin_backup(db, kind, base_id=base_rec.id if base_rec else None)

    def body() -> BackupRecord:
        outcome, data = write_encrypted(
            rt, tier, object_key(rec, DATA_OBJECT),
            lambda w: engine.diff_backup(w, base, progress=progress) if base
            else engine.full_backup(w, progress=progress))
        meta = dict(outcome.meta)
        meta["segment_size"] = outcome.manifest.get("segment_size", DEFAULT_SEGMENT_SIZE)
        return finish_backup(rt, tier, rec, data, dict(outcome.manifest), timeline=outcome.timeline,
                       start_lsn=outcome.start_lsn, end_lsn=outcome.end_lsn, start_wal=outcome.start_wal,
                       end_wal=outcome.end_wal, start_time=outcome.start_time, end_time=outcome.end_time, meta=meta)

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
    engine = rt.engine(db)
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
    rec = rt.catalog.begin_backup(db, "log", meta={"segments": len(batch.segments)})

    def body() -> BackupRecord:
        manifest, data = write_encrypted(rt, tier, object_key(rec, DATA_OBJECT),
                                          lambda w: engine.write_wal_archive(w, batch))
        return finish_backup(rt, tier, rec, data, manifest, timeline=batch.timeline, start_lsn=batch.start_lsn,
                       end_lsn=batch.end_lsn, start_wal=batch.start_wal, end_wal=batch.end_wal,
                       start_time=start_time, end_time=switch.end_time,
                       meta={"segments": len(batch.segments), "segment_size": switch.segment_size,
                             "range": f"{format_lsn(batch.start_lsn)}-{format_lsn(batch.end_lsn)}"})

    done = guarded(rt, tier, rec, body)
    prune_spool(engine.spool, batch.end_wal, switch.segment_size)
    return done
