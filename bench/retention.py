"""Retention and restore planning over a synthetic catalog: 100 databases x 1 year of 15-minute logs.

Run from the project root::

    .venv/bin/python -m bench.retention [--databases 100] [--days 365] [--profile]

Everything is in memory (catalog records, no database): per database and day, one full (02:09-02:30), four
diffs (00:08, 06:08, 12:08, 18:08, each on the newest full) and 96 log backups (one per 15 minutes, two WAL
segments each), about 3.7 M backups for the defaults. Copies are laid out as the previous day's sweep would
have left them under the operations guide's policy (local 7 d; blob 30 d once verified; then archive for
2555 d): local while younger than 7 days, blob from half a day (when verification has passed) to 30 days,
archive after that. Backups younger than half a day are ``completed``, the rest ``verified``. Ten backups are
under legal hold.

It times, on these PostgreSQL records and on the same history as SQL Server records it (msdb LSNs, for
the first ``--sqlserver-databases`` databases: SQL Server's retention index plans every target, so it is
slower):

* ``drkit.retention.plan`` on the whole catalog at ``now`` (a day after that sweep): target <= 30 s
  (PostgreSQL, 100 databases);
* the same on a first sweep, where every copy is still local (every backup needs an action): shown, no target;
* each engine's chain model for one database to a random time, the way ``drkit restore-plan`` calls it
  (that database's backups and copies): median of 20, target <= 100 ms; and once with the whole catalog
  passed in, for comparison;
* the reference planner (``drkit.retention_reference``) against the fast one on a small catalog
  (``--reference-days`` of one database): how many times slower it is, and that both give the same actions.

``--profile`` prints a cProfile of one restore plan and of the retention plan. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import random
import resource
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from drkit import retention_reference
from drkit.catalog.records import BackupRecord, CopyRecord, HoldRecord
from drkit.engines.base import ChainModel
from drkit.engines.postgres.chain_model import POSTGRES_CHAIN
from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE, parse_segment_name, segment_name
from drkit.engines.sqlserver.chain_model import SQLSERVER_CHAIN
from drkit.retention import Action, TierSpec
from drkit.retention import plan as retention_plan

TARGET_PLAN_S = 30.0
TARGET_RESTORE_MS = 100.0
ENGINES: dict[str, ChainModel] = {"PostgreSQL": POSTGRES_CHAIN, "SQL Server": SQLSERVER_CHAIN}
TIERS = {"local": TierSpec(7), "blob": TierSpec(30), "archive": TierSpec(2555)}
ORDER = list(TIERS)
SEG = DEFAULT_SEGMENT_SIZE
T0 = datetime(2024, 1, 1, tzinfo=UTC)
QUARTER = timedelta(minutes=15)
META: dict[str, Any] = {"segment_size": SEG}  # shared: records treat meta as read-only
SHA = "a" * 64


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Catalog:
    backups: list[BackupRecord]
    copies: list[CopyRecord]
    holds: list[HoldRecord]
    now: datetime
    by_db: dict[str, tuple[list[BackupRecord], list[CopyRecord]]]


def generate(databases: int, days: int, seed: int = 7) -> Catalog:
    """The synthetic catalog; datetimes and WAL names are shared between databases to save memory."""
    now = T0 + timedelta(days=days, hours=10)
    swept = now - timedelta(days=1)
    quarters = days * 96
    ends = [T0 + QUARTER * (k + 1) for k in range(quarters)]
    names = [segment_name(1, s) for s in range(2 * quarters + 2)]
    bases: list[tuple[str, datetime, datetime, int]] = []  # kind, start, end, start segment
    for day in range(days):
        midnight = T0 + timedelta(days=day)
        for hour in (0, 2, 6, 12, 18):
            kind = "full" if hour == 2 else "diff"
            start = midnight + timedelta(hours=hour, minutes=9 if kind == "full" else 8)
            end = start + timedelta(minutes=21 if kind == "full" else 4)
            seg = int((start - T0) / timedelta(minutes=7.5))  # two segments per quarter hour
            if kind == "diff" and day == 0 and hour == 0:
                continue  # no full yet
            bases.append((kind, start, end, seg))

    def status(end: datetime) -> str:
        return "completed" if now - end < timedelta(hours=12) else "verified"

    def where(end: datetime) -> tuple[str, ...]:
        age = swept - end
        if age < timedelta(0):
            return ()  # written since the last sweep: only the backup's own local copy, added below
        out = []
        if age < timedelta(days=7):
            out.append("local")
        if timedelta(hours=12) <= age < timedelta(days=30):
            out.append("blob")
        if age >= timedelta(days=30):
            out.append("archive")
        return tuple(out)

    backups: list[BackupRecord] = []
    copies: list[CopyRecord] = []
    by_db: dict[str, tuple[list[BackupRecord], list[CopyRecord]]] = {}
    copy_id = 0
    for n in range(databases):
        db = f"db{n:03d}"
        mine: list[BackupRecord] = []
        mine_copies: list[CopyRecord] = []
        full_id: str | None = None
        events: list[tuple[datetime, int, BackupRecord]] = []
        for kind, start, end, seg in bases:
            rec_id = f"{db}-{kind}-{start:%Y%m%dT%H%M%S}"
            st = status(end)
            rec = BackupRecord(
                id=rec_id, database=db, kind=kind, status=st, base_id=full_id if kind == "diff" else None,
                timeline=1, start_lsn=seg * SEG + 0x28, end_lsn=seg * SEG + 0x1000, start_wal=names[seg],
                end_wal=names[seg], started_at=start, finished_at=end, start_time=start, end_time=end,
                raw_bytes=10 << 30, stored_bytes=1 << 30, sha256=SHA, format="tar+zstd+aes", key_id="k1",
                error=None, verified_at=end if st == "verified" else None, meta=META)
            if kind == "full":
                full_id = rec_id
            events.append((end, 0, rec))
        for k in range(quarters):
            end = ends[k]
            st = status(end)
            rec = BackupRecord(
                id=f"{db}-log-{end:%Y%m%dT%H%M%S}", database=db, kind="log", status=st, base_id=None, timeline=1,
                start_lsn=2 * k * SEG, end_lsn=(2 * k + 2) * SEG, start_wal=names[2 * k],
                end_wal=names[2 * k + 1], started_at=end, finished_at=end, start_time=end - QUARTER,
                end_time=end, raw_bytes=32 << 20, stored_bytes=4 << 20, sha256=SHA, format="wal+zstd+aes",
                key_id="k1", error=None, verified_at=end if st == "verified" else None, meta=META)
            events.append((end, 1, rec))
        events.sort(key=lambda e: (e[0], e[1]))
        for end, _, rec in events:
            mine.append(rec)
            tiers = where(end) or ("local",)
            for tier in tiers:
                copy_id += 1
                mine_copies.append(CopyRecord(
                    id=copy_id, backup_id=rec.id, tier=tier, store_key=f"{tier}/{rec.id}", status="complete",
                    stored_bytes=rec.stored_bytes, sha256=SHA, created_at=end, updated_at=end))
        mine.reverse()  # the catalog lists newest first
        backups.extend(mine)
        copies.extend(mine_copies)
        by_db[db] = (mine, mine_copies)
    rng = random.Random(seed)
    held = rng.sample(backups, 10)
    holds = [HoldRecord(id=i, backup_id=b.id, database=b.database, reason=f"INC-{100 + i}", created_at=now,
                        created_by="alice", removed_at=None, removed_by=None, removed_reason=None)
             for i, b in enumerate(held, 1)]
    return Catalog(backups, copies, holds, now, by_db)


_FORK = "0c1f0000-0000-4000-8000-000000000001"


def slot_lsn(segment: int) -> int:
    """Where a WAL segment of the synthetic catalog starts, as a SQL Server LSN (past 2**63)."""
    return (10_000 + segment) * 10**15


def as_sqlserver(backups: list[BackupRecord]) -> list[BackupRecord]:
    """The same history as SQL Server records it: msdb LSNs in ``meta`` (decimal strings; a base inside its
    segment, a log from its first segment's start to the start of the one after its last), the differential
    base as the full's ``checkpoint_lsn`` and ``backup_set_uuid``; no WAL fields, positions in the columns."""
    checkpoints: dict[str, tuple[str, str]] = {}
    out: list[BackupRecord] = []
    for b in reversed(backups):  # oldest first, so a diff's full is seen before it
        assert b.start_wal is not None and b.end_wal is not None
        first_seg, last_seg = parse_segment_name(b.start_wal)[1], parse_segment_name(b.end_wal)[1]
        uuid = f"5e7a0000-0000-4000-8000-{len(out):012x}"
        if b.kind == "log":
            first, last, checkpoint = slot_lsn(first_seg), slot_lsn(last_seg + 1), None
        else:
            at = slot_lsn(first_seg)
            first, last, checkpoint = at + 100_001, at + 300_001, str(at + 200_001)
        meta: dict[str, Any] = {
            "engine": "sqlserver", "first_lsn": str(first), "last_lsn": str(last), "checkpoint_lsn": checkpoint,
            "backup_set_uuid": uuid, "is_copy_only": False, "first_recovery_fork_guid": _FORK,
            "last_recovery_fork_guid": _FORK, "fork_point_lsn": None, "target": "disk"}
        if b.kind == "full":
            assert checkpoint is not None
            checkpoints[b.id] = (checkpoint, uuid)
        if b.kind == "diff" and b.base_id in checkpoints:
            meta["differential_base_lsn"], meta["differential_base_guid"] = checkpoints[b.base_id]
        out.append(replace(b, timeline=None, start_lsn=first, end_lsn=last, start_wal=None, end_wal=None,
                           format="drkit-mssql-bak-v1", meta=meta, lineage=_FORK))
    out.reverse()
    return out


def all_local(backups: list[BackupRecord]) -> list[CopyRecord]:
    """The copies before the first sweep ever: every backup only in the tier it was written to."""
    return [CopyRecord(id=n, backup_id=b.id, tier="local", store_key=f"local/{b.id}", status="complete",
                       stored_bytes=b.stored_bytes, sha256=SHA, created_at=b.started_at, updated_at=b.started_at)
            for n, b in enumerate(backups, 1)]


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and CPU time of ``fn()``, with the garbage collector on, as in a flow run."""
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def profile(fn: Callable[[], Any], title: str, top: int = 14) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    print(f"\ncProfile of {title}, top {top} by tottime")
    print(text[text.find("   ncalls"):].rstrip())


def plan(backups: list[BackupRecord], copies: list[CopyRecord], holds: list[HoldRecord], model: ChainModel,
         now: datetime) -> list[Action]:
    return retention_plan(backups, copies, holds, TIERS, now, chains=lambda db: model)


def restore_times(model: ChainModel, db: str, mine: list[BackupRecord], mine_copies: list[CopyRecord],
                  targets: list[datetime], now: datetime) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds of one restore plan per target."""
    times: list[float] = []
    cpus: list[float] = []
    for target in targets:
        s, c, _ = timed(partial(model.plan_restore, db, mine, mine_copies, target=target, now=now, tier_order=ORDER))
        times.append(s * 1000)
        cpus.append(c * 1000)
    return times, cpus


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--databases", type=int, default=100)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--sqlserver-databases", type=int, default=10,
                    help="how many of the databases to plan again as SQL Server records")
    ap.add_argument("--reference-days", type=int, default=3, help="days of the catalog for the reference planner")
    ap.add_argument("--runs", type=int, default=20, help="restore plans to time (median)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)

    log(f"generating {args.databases} databases x {args.days} days ...")
    gen_s, _, cat = timed(lambda: generate(args.databases, args.days))
    kinds = Counter(b.kind for b in cat.backups)
    log(f"{len(cat.backups):,} backups ({', '.join(f'{k} {v:,}' for k, v in sorted(kinds.items()))}), "
        f"{len(cat.copies):,} copies in {gen_s:.1f} s; RSS {rss_mib():,.0f} MiB")

    log("retention plan, steady state ...")
    steady_s, steady_cpu, actions = timed(lambda: plan(cat.backups, cat.copies, cat.holds, POSTGRES_CHAIN, cat.now))
    steady = Counter(a.kind for a in actions)
    samples: dict[tuple[str, str, str | None], Action] = {}
    for a in actions:
        samples.setdefault((a.kind, a.tier_from, a.tier_to), a)
    del actions
    log("retention plan, first sweep (every copy local) ...")
    local_only = all_local(cat.backups)
    first_s, first_cpu, actions = timed(partial(plan, cat.backups, local_only, cat.holds, POSTGRES_CHAIN, cat.now))
    first = Counter(a.kind for a in actions)
    del actions, local_only

    n_ms = min(args.sqlserver_databases, args.databases)
    ms_dbs = sorted(cat.by_db)[:n_ms]
    log(f"the same history as SQL Server records it, {n_ms} databases ...")
    ms_by_db = {db: as_sqlserver(cat.by_db[db][0]) for db in ms_dbs}
    ms_backups = [b for db in ms_dbs for b in ms_by_db[db]]
    ms_copies = [c for db in ms_dbs for c in cat.by_db[db][1]]
    ms_holds = [h for h in cat.holds if h.database in ms_by_db]
    pg_backups = [b for db in ms_dbs for b in cat.by_db[db][0]]
    log("retention plan, steady state, SQL Server records (and the PostgreSQL ones of the same databases) ...")
    ms_s, ms_cpu, ms_actions = timed(lambda: plan(ms_backups, ms_copies, ms_holds, SQLSERVER_CHAIN, cat.now))
    pg_s, _, pg_actions = timed(lambda: plan(pg_backups, ms_copies, ms_holds, POSTGRES_CHAIN, cat.now))
    ms_same = ms_actions == pg_actions
    ms_steady = Counter(a.kind for a in ms_actions)
    del ms_actions, pg_actions

    db = "db042" if "db042" in ms_by_db else ms_dbs[0] if ms_dbs else next(iter(cat.by_db))
    mine, mine_copies = cat.by_db[db]
    rng = random.Random(11)
    lo, hi = mine[-1].end_time or T0, cat.now
    targets = [lo + (hi - lo) * rng.random() for _ in range(args.runs)]
    log(f"restore planning for {db} ({len(mine):,} backups, {len(mine_copies):,} copies), {args.runs} targets ...")
    restore = {"PostgreSQL": restore_times(POSTGRES_CHAIN, db, mine, mine_copies, targets, cat.now)}
    if db in ms_by_db:
        restore["SQL Server"] = restore_times(SQLSERVER_CHAIN, db, ms_by_db[db], mine_copies, targets, cat.now)
    whole: list[float] = []
    for target in targets[:3]:
        s, _, _ = timed(partial(POSTGRES_CHAIN.plan_restore, db, cat.backups, cat.copies, target=target,
                                now=cat.now, tier_order=ORDER))
        whole.append(s * 1000)

    log(f"reference planner, one database x {args.reference_days} days ...")
    small = generate(1, args.reference_days)
    small_ms = as_sqlserver(small.backups)
    reference: dict[str, tuple[float, float, bool]] = {}
    for name, model in ENGINES.items():
        backups = small.backups if model is POSTGRES_CHAIN else small_ms
        fast_s, _, fast = timed(lambda: plan(backups, small.copies, small.holds, model, small.now))  # noqa: B023
        ref_s, _, ref = timed(lambda: retention_reference.plan(  # noqa: B023
            backups, small.copies, small.holds, TIERS, small.now, chains=lambda db: model))  # noqa: B023
        same = [(a.kind, a.backup_id, a.tier_from, a.tier_to) for a in fast] == [
            (a.kind, a.backup_id, a.tier_from, a.tier_to) for a in ref]
        reference[name] = (fast_s, ref_s, same)

    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    table = Table(title=f"Retention and restore planning: {args.databases} databases x {args.days} days, "
                        f"{len(cat.backups):,} backups, {len(cat.copies):,} copies",
                  box=box.MARKDOWN, title_justify="left")
    for i, col in enumerate(["what", "wall", "CPU", "target", "verdict", "actions / notes"]):
        table.add_column(col, justify="left" if i in (0, 5) else "right")

    def fmt(c: Counter[str]) -> str:
        return ", ".join(f"{k} {c[k]:,}" for k in ("copy", "move", "delete", "keep") if c[k])

    table.add_row("retention plan (steady state), PostgreSQL", f"{steady_s:.1f} s", f"{steady_cpu:.1f} s",
                  f"<= {TARGET_PLAN_S:.0f} s", "PASS" if steady_s <= TARGET_PLAN_S else "FAIL", fmt(steady))
    table.add_row("retention plan (first sweep, all local), PostgreSQL", f"{first_s:.1f} s", f"{first_cpu:.1f} s",
                  "-", "-", fmt(first))
    if n_ms:
        table.add_row(f"retention plan (steady state), SQL Server, {n_ms} database(s)", f"{ms_s:.1f} s",
                      f"{ms_cpu:.1f} s", "-", "-",
                      f"{fmt(ms_steady)}; {ms_s / max(pg_s, 1e-9):.1f}x PostgreSQL's {pg_s:.1f} s for them; "
                      f"{'the same actions' if ms_same else 'ACTIONS DIFFER'}")
    for name, (times, cpus) in restore.items():
        ms = statistics.median(times)
        table.add_row(f"restore plan, one database, {name} (median of {len(times)})", f"{ms:.1f} ms",
                      f"{statistics.median(cpus):.1f} ms", f"<= {TARGET_RESTORE_MS:.0f} ms",
                      "PASS" if ms <= TARGET_RESTORE_MS else "FAIL",
                      f"min {min(times):.1f} ms, max {max(times):.1f} ms; {db}'s records only, as restore-plan reads "
                      "them")
    table.add_row("restore plan, whole catalog passed in, PostgreSQL (median of 3)",
                  f"{statistics.median(whole):.0f} ms", "", "-", "-",
                  f"plan_restore filters the {len(cat.backups):,} backups itself")
    for name, (fast_s, ref_s, same) in reference.items():
        table.add_row(f"reference retention planner, {name}, 1 database x {args.reference_days} d",
                      f"{ref_s:.2f} s", "", "-", "-" if same else "FAIL",
                      f"{ref_s / max(fast_s, 1e-9):,.0f}x the fast planner ({fast_s * 1000:.0f} ms); "
                      f"{'the same actions' if same else 'ACTIONS DIFFER'}")
    table.add_row("generate the catalog", f"{gen_s:.1f} s", "", "-", "-", f"peak RSS {rss_mib():,.0f} MiB; "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    console.print(table)
    console.print("\nOne action of each kind (steady state, PostgreSQL):")
    for (kind, src, dst), a in sorted(samples.items(), key=lambda kv: ("copy", "move", "delete", "keep").index(
            kv[0][0])):
        console.print(f"  {kind:6} {a.backup_id:38} {src}{' -> ' + dst if dst else '':12} {a.reason}",
                      markup=False, highlight=False)
    if args.profile:
        profile(lambda: POSTGRES_CHAIN.plan_restore(db, mine, mine_copies, target=targets[0], now=cat.now,
                                                    tier_order=ORDER), f"one restore plan for {db}")
        profile(lambda: plan(cat.backups, cat.copies, cat.holds, POSTGRES_CHAIN, cat.now),
                "the steady-state retention plan")
        if n_ms:
            profile(lambda: plan(ms_backups, ms_copies, ms_holds, SQLSERVER_CHAIN, cat.now),
                    "the steady-state retention plan, SQL Server")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
