"""What monitoring drkit costs: a Prometheus scrape, `drkit metrics --textfile`, and the listener's memory, at
realistic catalog sizes on SQLite and PostgreSQL, beside `drkit status --json` on the same data (see
bench/README.md).

    .venv/bin/python -m bench.metrics                 # defaults: --scrapes 20 --runs 5, both catalogs, both backends
    .venv/bin/python -m bench.metrics --fleet-dbs 4 --fleet-days 30 --scrapes 5 --runs 3   # quick look
    .venv/bin/python -m bench.metrics --profile       # + cProfile of one in-process collect per world

Catalogs ("worlds"): ``year``: one database, one year (365 fulls, 1460 diffs, 35 040 logs of 15 minutes, a failed
diff a week, copies on 2 tiers, a verification a day, a drill a week); ``fleet``: 20 databases × 90 days of the
same schedule. Each database's history is written through the catalog repository API (``Catalog.import_backup``,
``Catalog.audit``) into a SQLite file of its own, once, and cached under /tmp/drkit-bench-metrics-cache; each
world's catalog is then made by drkit's migrations and filled with those rows, copied table by table through the
catalog's own SQLAlchemy models (so the column types convert them as the repository would): a SQLite file, and a
database on a throwaway PostgreSQL 15 cluster run as the ``postgres`` OS user.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / "drkit-bench-metrics-cache"
FORMAT = "v1"  # bump when the generated history changes
SCRAPE_TARGET_S, RSS_TARGET_MIB = 1.0, 100
MIB, GIB = 2**20, 2**30
SLOT = timedelta(minutes=15)  # one log backup each, covering two WAL segments
BASES = {1: "full", 6: "diff", 11: "diff", 16: "diff", 21: "diff"}  # hour of day -> kind


# -- the histories, through the catalog API ------------------------------------------------------------------


def build_history(path: Path, db: str, days: int, end: datetime) -> Path:
    """One database's ``days`` of backups, copies and audits up to ``end``, written through the catalog API."""
    from drkit.catalog import Catalog
    from drkit.catalog.records import BackupRecord
    from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE as SEG
    from drkit.engines.postgres.lsn import segment_name

    tmp = path.with_suffix(".part")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    cat = Catalog.open(f"sqlite:///{tmp}")
    start = end - timedelta(days=days)

    def record(kind: str, at: datetime, seg: int, *, status: str = "completed", base_id: str | None = None,
               stored: int) -> BackupRecord:
        began = at - (timedelta(minutes=20) if kind == "full" else timedelta(minutes=4) if kind == "diff"
                      else timedelta(seconds=3))
        last = seg + 1 if kind == "log" else seg
        return BackupRecord(
            id=f"{db}-{kind}-{began:%Y%m%dT%H%M%S}000000Z" + ("-x" if status == "failed" else ""),
            database=db, kind=kind, status=status, base_id=base_id, timeline=1,
            start_lsn=seg * SEG + (0 if kind == "log" else 0x28), end_lsn=(last + 1) * SEG,
            start_wal=segment_name(1, seg), end_wal=segment_name(1, last), started_at=began, finished_at=at,
            start_time=began, end_time=at, raw_bytes=stored * 3, stored_bytes=stored,
            sha256="ab" * 32, format="tar.zst.aes", key_id="k1", error="pg_backup_start: timeout"
            if status == "failed" else None, verified_at=None, meta={"segment_size": SEG}, lineage="1")

    def put(b: BackupRecord) -> None:
        copies = [] if b.status == "failed" else [(t, f"{t}/{b.id}", b.stored_bytes, "ab" * 32)
                                                   for t in ("local", "offsite")]
        cat.import_backup(b, copies)

    full_id: str | None = None
    for day in range(days):
        for i in range(96):
            slot = day * 96 + i
            t = start + slot * SLOT
            kind = BASES.get(i // 4) if i % 4 == 0 else None
            if kind == "full" or (kind == "diff" and full_id is not None):
                b = record(kind, t + timedelta(minutes=5), 2 * slot, base_id=None if kind == "full" else full_id,
                           stored=5 * GIB if kind == "full" else 300 * MIB)
                if kind == "diff" and i // 4 == 11 and day % 7 == 3:  # a failed attempt a week, retried
                    put(record("diff", t + timedelta(minutes=1), 2 * slot, status="failed", base_id=full_id,
                               stored=0))
                put(b)
                if kind == "full":
                    full_id = b.id
                    cat.audit(actor="bench", action="backup.verify", database=db, subject=b.id,
                              detail={"passed": True, "stored_throughput_mib_s": 180.0, "seconds": 29.0})
                    if day % 7 == 6:
                        cat.audit(actor="bench", action="drill.completed", database=db, subject=b.id,
                                  detail={"met": True, "rto_seconds": 610.0, "rpo_seconds": 40.0})
            put(record("log", t + SLOT, 2 * slot, stored=4 * MIB))
    cat.close()
    os.replace(tmp, path)
    return path


def histories(dbs: list[str], days: int, end: datetime, workers: int) -> list[Path]:
    """Each database's history file, built (in parallel) unless cached."""
    folder = CACHE / f"{FORMAT}-{days}d-{end:%Y%m%d}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{db}.sqlite" for db in dbs]
    todo = [(p, db) for p, db in zip(paths, dbs, strict=True) if not p.exists()]
    if todo:
        print(f"writing {len(todo)} histories of {days} days through the catalog API into {folder} ...", flush=True)
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(build_history, [p for p, _ in todo], [db for _, db in todo], [days] * len(todo),
                          [end] * len(todo)))
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return paths


def fill_catalog(url: str, sources: list[Path]) -> dict[str, int]:
    """Make the catalog at ``url`` with drkit's migrations, copy every source's rows in, and record a catalog
    check through the API. Returns row counts."""
    from sqlalchemy import case, create_engine, select

    from drkit.catalog import Catalog
    from drkit.catalog.models import AuditEvent, Backup, Copy

    Catalog.open(url).close()
    dst = create_engine(url)
    counts = {"backups": 0, "copies": 0, "audit_events": 0}
    try:
        for src_path in sources:
            src = create_engine(f"sqlite:///{src_path}")
            for model in (Backup, Copy, AuditEvent):
                table = model.__table__
                cols = [c for c in table.columns if c.name != "id" or model is Backup]
                query = select(*cols)
                if model is Backup:  # a diff's full first (PostgreSQL checks the foreign key per row)
                    query = query.order_by(case((table.c.kind == "full", 0), else_=1), table.c.id)
                else:
                    query = query.order_by(table.c.id)
                with src.connect() as sc, dst.begin() as dc:
                    result = sc.execute(query)
                    while batch := result.fetchmany(5000):
                        dc.execute(table.insert(), [dict(r._mapping) for r in batch])
                        counts[table.name] += len(batch)
            src.dispose()
    finally:
        dst.dispose()
    cat = Catalog.open(url)
    cat.audit(actor="bench", action="catalog.check", detail={"remaining": 0, "by_database": {}})
    cat.close()
    return counts


# -- a throwaway PostgreSQL ----------------------------------------------------------------------------------


def start_postgres(root: Path) -> Any:
    from drkit.engines.postgres.pgctl import LocalCluster, effective_os_user, free_port
    from drkit.sandbox import default_bin_dir

    os.chmod(root, 0o755)
    cluster = LocalCluster(root / "pg", free_port(), default_bin_dir(), effective_os_user(None),
                           log_file=root / "pg.log")
    cluster.initdb(checksums=True, extra_conf="shared_buffers = '128MB'\nfsync = off\n")
    cluster.start()
    return cluster


def create_database(cluster: Any, name: str) -> str:
    import psycopg

    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:{cluster.port}/{name}"


# -- measuring ------------------------------------------------------------------------------------------------


@dataclass
class World:
    name: str  # e.g. "year / SQLite"
    catalog: str
    dbs: list[str]
    rows: dict[str, int]
    policy: Path = field(init=False)
    scrape_ms: list[float] = field(default_factory=list)
    body_bytes: int = 0
    listener_rss_mib: float = 0.0
    textfile: list[tuple[float, float, float]] = field(default_factory=list)  # wall, cpu, peak RSS MiB
    status: list[tuple[float, float, float]] = field(default_factory=list)

    def write_policy(self, root: Path) -> None:
        closed = free_closed_port()
        data: dict[str, Any] = {
            "catalog": self.catalog,
            "tiers": {"local": {"store": "filesystem", "path": str(root / "local")},
                      "offsite": {"store": "filesystem", "path": str(root / "offsite")}},
            "databases": {db: {"engine": "postgres", "dsn": f"host=127.0.0.1 port={closed} user=x dbname={db} "
                                                            "connect_timeout=1",
                               "data_dir": str(root / "pg-data" / db), "rpo_target": "30m", "rto_target": "1h"}
                          for db in self.dbs},
        }
        self.policy = root / f"{self.name.replace(' / ', '-').lower()}.yaml"
        self.policy.write_text(yaml.safe_dump(data, sort_keys=False))


def free_closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drkit_env(policy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"DRKIT_CONFIG": str(policy), "PYTHONPATH": str(ROOT), "DO_NOT_TRACK": "1"})
    return env


def timed_process(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """(wall s, user+sys s, peak RSS MiB) of ``drkit ARGS`` as a fresh process, under /usr/bin/time."""
    out = cwd / "time.out"
    cmd = ["/usr/bin/time", "-o", str(out), "-f", "%e %U %S %M", sys.executable, "-m", "cli", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, timeout=900, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"drkit {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()[-800:]}")
    _e, user, sys_s, rss_kib = out.read_text().split()[-4:]
    return wall, float(user) + float(sys_s), int(rss_kib) / 1024


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure_listener(w: World, scrapes: int, cwd: Path) -> None:
    """Start `drkit metrics --listen`, scrape it ``scrapes`` times after one warm-up, read its peak RSS."""
    port = free_closed_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "metrics", "--listen", f"127.0.0.1:{port}"],
                            env=drkit_env(w.policy), cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=5):  # noqa: S310 - our listener
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{w.name}: the listener did not start: "
                                     f"{proc.stderr.read().decode()[-800:] if proc.stderr else ''}") from None
                time.sleep(0.1)
        for i in range(scrapes + 1):
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"{url}/metrics", timeout=120) as resp:  # noqa: S310
                body = resp.read()
            if i:  # the first is the warm-up (imports of the engine modules, the first connection)
                w.scrape_ms.append((time.perf_counter() - t0) * 1000)
        if b"drkit_exporter_collect_success 1.0" not in body:
            raise SystemExit(f"{w.name}: the scrape could not read the catalog:\n{body.decode()[-800:]}")
        if f'drkit_rpo_seconds{{database="{w.dbs[0]}"}}'.encode() not in body:
            raise SystemExit(f"{w.name}: no RPO for {w.dbs[0]}: the generated chain does not plan")
        w.body_bytes = len(body)
        w.listener_rss_mib = vm_hwm_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure_processes(w: World, runs: int, cwd: Path) -> None:
    env = drkit_env(w.policy)
    prom = cwd / f"{w.policy.stem}.prom"
    timed_process(["status", "--json"], env, cwd)  # warm-up (page cache, .pyc)
    for _ in range(runs):  # taking turns, so a busy moment costs both
        w.textfile.append(timed_process(["metrics", "--textfile", str(prom)], env, cwd))
        w.status.append(timed_process(["status", "--json"], env, cwd))


def profile_collect(w: World, top: int = 18) -> str:
    """One in-process collect under cProfile: where a scrape's time goes."""
    from prometheus_client import generate_latest

    from drkit.config import load_policy
    from drkit.metrics import metrics_registry
    from drkit.runtime import Runtime

    rt = Runtime(load_policy(w.policy))
    registry, collector = metrics_registry(rt)
    try:
        generate_latest(registry)  # warm-up
        prof = cProfile.Profile()
        prof.enable()
        generate_latest(registry)
        prof.disable()
    finally:
        collector.close()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# -- the report -----------------------------------------------------------------------------------------------


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20, method="inclusive")[-1] if len(xs) > 1 else xs[0]


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def report(worlds: list[World], scrapes: int, runs: int) -> bool:
    print(f"\nscrape: GET /metrics on a running `drkit metrics --listen`, {scrapes} scrapes after a warm-up; "
          f"process: a fresh `drkit ...` process, median of {runs} runs, CPU (user+sys) in brackets; "
          "RSS: peak resident set (the listener's VmHWM after all scrapes; /usr/bin/time %M for processes)")
    header = ["catalog", "backups/copies/audits", "scrape ms med/p95", "listener RSS", "--textfile s",
              "status --json s", "textfile/status", "RSS textfile/status"]
    table = [header]
    for w in worlds:
        tf, st = w.textfile, w.status
        table.append([
            w.name, f"{w.rows['backups']}/{w.rows['copies']}/{w.rows['audit_events']}",
            f"{med(w.scrape_ms):.0f} / {p95(w.scrape_ms):.0f}", f"{w.listener_rss_mib:.0f} MiB",
            f"{med([t[0] for t in tf]):.2f} ({med([t[1] for t in tf]):.2f})",
            f"{med([t[0] for t in st]):.2f} ({med([t[1] for t in st]):.2f})",
            f"{med([a[0] / b[0] for a, b in zip(tf, st, strict=True)]):.2f}x",
            f"{med([t[2] for t in tf]):.0f}/{med([t[2] for t in st]):.0f} MiB",
        ])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(wd) for c, wd in zip(r, widths, strict=True)))
    ok = True
    print()
    for w in worlds:
        if w.name.startswith("year"):
            s = med(w.scrape_ms) / 1000
            passed = s <= SCRAPE_TARGET_S
            ok &= passed
            print(f"{'PASS' if passed else 'FAIL'}  scrape at {w.name}: median {s:.3f} s <= {SCRAPE_TARGET_S} s")
    for w in worlds:
        passed = w.listener_rss_mib <= RSS_TARGET_MIB
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  listener peak RSS at {w.name}: {w.listener_rss_mib:.0f} MiB "
              f"<= {RSS_TARGET_MIB} MiB")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scrapes", type=int, default=20, help="timed scrapes of each listener (default 20)")
    ap.add_argument("--runs", type=int, default=5, help="runs of each whole process (default 5)")
    ap.add_argument("--year-days", type=int, default=365, help="days of the one-database catalog (default 365)")
    ap.add_argument("--fleet-dbs", type=int, default=20, help="databases of the fleet catalog (default 20)")
    ap.add_argument("--fleet-days", type=int, default=90, help="days of each fleet database (default 90)")
    ap.add_argument("--only", choices=["year", "fleet"], help="measure one catalog only")
    ap.add_argument("--no-postgres", action="store_true", help="SQLite catalogs only")
    ap.add_argument("--workers", type=int, default=2, help="processes writing the histories (default 2)")
    ap.add_argument("--profile", action="store_true", help="+ cProfile of one in-process collect per catalog")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    opts = ap.parse_args()

    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    plans = {"year": (["app"], opts.year_days), "fleet": ([f"db{i:02d}" for i in range(opts.fleet_dbs)],
                                                        opts.fleet_days)}
    if opts.only:
        plans = {opts.only: plans[opts.only]}
    sources = {name: histories(dbs, days, end.replace(hour=0), opts.workers) for name, (dbs, days) in plans.items()}

    root = Path(tempfile.mkdtemp(prefix="drkit-bench-metrics-"))
    cluster = None
    worlds: list[World] = []
    try:
        if not opts.no_postgres:
            cluster = start_postgres(root)
        for name, (dbs, _days) in plans.items():
            backends = [("SQLite", lambda n=name: f"sqlite:///{root / f'{n}.db'}")]
            if cluster is not None:
                backends.append(("PostgreSQL", lambda n=name: create_database(cluster, n)))
            for backend, url_of in backends:
                url = url_of()
                t0 = time.perf_counter()
                w = World(f"{name} / {backend}", url, dbs, fill_catalog(url, sources[name]))
                print(f"{w.name}: catalog filled in {time.perf_counter() - t0:.0f} s ({w.rows})", flush=True)
                w.write_policy(root)
                worlds.append(w)
        for w in worlds:
            print(f"{w.name}: scraping ...", flush=True)
            measure_listener(w, opts.scrapes, root)
            print(f"{w.name}: whole processes ...", flush=True)
            measure_processes(w, opts.runs, root)
            if opts.profile:
                print(f"\n--- cProfile of one collect, {w.name} ---\n{profile_collect(w)}", flush=True)
    finally:
        if cluster is not None:
            cluster.stop("fast")
        if opts.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    ok = report(worlds, opts.scrapes, opts.runs)
    print("\nall targets met" if ok else "\nsome targets missed")


if __name__ == "__main__":
    main()
