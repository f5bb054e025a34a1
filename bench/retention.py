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

It times:

* ``drkit.retention.plan`` on the whole catalog at ``now`` (a day after that sweep): target <= 30 s;
* the same on a first sweep, where every copy is still local (every backup needs an action): shown, no target;
* the PostgreSQL chain model for one database to a random time, the way ``drkit restore-plan`` calls it
  (that database's backups and copies): median of 20, target <= 100 ms; and once with the whole catalog
  passed in, for comparison.

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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from drkit.catalog.records import BackupRecord, CopyRecord, HoldRecord
from drkit.engines.postgres.chain import plan_restore
from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE, segment_name
from drkit.retention import Action, TierSpec, plan

TARGET_PLAN_S = 30.0
TARGET_RESTORE_MS = 100.0
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--databases", type=int, default=100)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--runs", type=int, default=20, help="restore plans to time (median)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)

    log(f"generating {args.databases} databases x {args.days} days ...")
    gen_s, _, cat = timed(lambda: generate(args.databases, args.days))
    kinds = Counter(b.kind for b in cat.backups)
    log(f"{len(cat.backups):,} backups ({', '.join(f'{k} {v:,}' for k, v in sorted(kinds.items()))}), "
        f"{len(cat.copies):,} copies in {gen_s:.1f} s; RSS {rss_mib():,.0f} MiB")

    log("retention plan, steady state ...")
    steady_s, steady_cpu, actions = timed(lambda: plan(cat.backups, cat.copies, cat.holds, TIERS, cat.now))
    steady = Counter(a.kind for a in actions)
    samples: dict[tuple[str, str, str | None], Action] = {}
    for a in actions:
        samples.setdefault((a.kind, a.tier_from, a.tier_to), a)
    del actions
    log("retention plan, first sweep (every copy local) ...")
    local_only = all_local(cat.backups)
    first_s, first_cpu, actions = timed(partial(plan, cat.backups, local_only, cat.holds, TIERS, cat.now))
    first = Counter(a.kind for a in actions)
    del actions, local_only

    db = "db042" if "db042" in cat.by_db else next(iter(cat.by_db))
    mine, mine_copies = cat.by_db[db]
    rng = random.Random(11)
    lo, hi = mine[-1].end_time or T0, cat.now
    targets = [lo + (hi - lo) * rng.random() for _ in range(args.runs)]
    log(f"restore planning for {db} ({len(mine):,} backups, {len(mine_copies):,} copies), {args.runs} targets ...")
    times: list[float] = []
    cpus: list[float] = []
    for target in targets:
        s, c, _ = timed(partial(plan_restore, db, mine, mine_copies, target=target, now=cat.now, tier_order=ORDER))
        times.append(s * 1000)
        cpus.append(c * 1000)
    restore_ms = statistics.median(times)
    whole: list[float] = []
    for target in targets[:3]:
        s, _, _ = timed(partial(plan_restore, db, cat.backups, cat.copies, target=target, now=cat.now,
                                tier_order=ORDER))
        whole.append(s * 1000)

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

    table.add_row("retention plan (steady state)", f"{steady_s:.1f} s", f"{steady_cpu:.1f} s",
                  f"<= {TARGET_PLAN_S:.0f} s", "PASS" if steady_s <= TARGET_PLAN_S else "FAIL", fmt(steady))
    table.add_row("retention plan (first sweep, all local)", f"{first_s:.1f} s", f"{first_cpu:.1f} s", "-", "-",
                  fmt(first))
    table.add_row(f"restore plan, one database (median of {len(times)})", f"{restore_ms:.1f} ms",
                  f"{statistics.median(cpus):.1f} ms", f"<= {TARGET_RESTORE_MS:.0f} ms",
                  "PASS" if restore_ms <= TARGET_RESTORE_MS else "FAIL",
                  f"min {min(times):.1f} ms, max {max(times):.1f} ms; {db}'s records only, as restore-plan reads them")
    table.add_row("restore plan, whole catalog passed in (median of 3)", f"{statistics.median(whole):.0f} ms", "",
                  "-", "-", f"plan_restore filters the {len(cat.backups):,} backups itself")
    table.add_row("generate the catalog", f"{gen_s:.1f} s", "", "-", "-", f"peak RSS {rss_mib():,.0f} MiB; "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    console.print(table)
    console.print("\nOne action of each kind (steady state):")
    for (kind, src, dst), a in sorted(samples.items(), key=lambda kv: ("copy", "move", "delete", "keep").index(
            kv[0][0])):
        console.print(f"  {kind:6} {a.backup_id:38} {src}{' -> ' + dst if dst else '':12} {a.reason}",
                      markup=False, highlight=False)
    if args.profile:
        profile(lambda: plan_restore(db, mine, mine_copies, target=targets[0], now=cat.now, tier_order=ORDER),
                f"one restore plan for {db}")
        profile(lambda: plan(cat.backups, cat.copies, cat.holds, TIERS, cat.now), "the steady-state retention plan")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
