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
import hashlib
import io
import json
import os
import pstats
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
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
TEMPLATE_DB = "db"  # the name the cached history is written under, replaced by each database's
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


def history(days: int, end: datetime) -> Path:
    """One database's (``db``) history of ``days``, written through the catalog API unless cached."""
    path = CACHE / f"{FORMAT}-{days}d-{end:%Y%m%d}" / "history.sqlite"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing {days} days of history through the catalog API into {path} ...", flush=True)
        t0 = time.perf_counter()
        build_history(path, TEMPLATE_DB, days, end)
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def fill_catalog(url: str, source: Path, dbs: list[str]) -> dict[str, int]:
    """Make the catalog at ``url`` with drkit's migrations, copy ``source``'s rows in once for each of ``dbs``
    (renamed: the database, and the ids, keys and subjects that hold its name), and record a catalog check
    through the API. Returns row counts."""
    from sqlalchemy import case, create_engine, select

    from drkit.catalog import Catalog
    from drkit.catalog.models import AuditEvent, Backup, Copy

    Catalog.open(url).close()
    dst = create_engine(url)
    src = create_engine(f"sqlite:///{source}")
    counts = {"backups": 0, "copies": 0, "audit_events": 0, "bases": 0}
    with src.connect() as sc:
        template = sc.execute(select(Backup.__table__.c.database).limit(1)).scalar_one()
    old = f"{template}-"

    def renamed(row: dict[str, Any], db: str) -> dict[str, Any]:
        for key in ("id", "base_id", "backup_id", "subject"):
            if isinstance(row.get(key), str) and row[key].startswith(old):
                row[key] = f"{db}-{row[key][len(old):]}"
        if isinstance(row.get("store_key"), str):
            row["store_key"] = row["store_key"].replace(f"/{old}", f"/{db}-")
        if row.get("database") == template:
            row["database"] = db
        return row

    try:
        for db in dbs:
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
                        dc.execute(table.insert(), [renamed(dict(r._mapping), db) for r in batch])
                        counts[table.name] += len(batch)
                        if model is Backup:  # what pgBackRest would list: the fulls and diffs that worked
                            counts["bases"] += sum(1 for r in batch if r.kind != "log" and r.status != "failed")
    finally:
        src.dispose()
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


# -- the peer: a pgBackRest repository of the same history ---------------------------------------------------


def _ini(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("["):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line and current is not None:
            key, value = line.split("=", 1)
            current[key] = value
    return sections


def _info_text(sections: dict[str, dict[str, str]]) -> str:
    """An info file as pgBackRest writes it: its sections, then the SHA-1 of their JSON form (sections and keys
    sorted, the checksum itself left out), which pgBackRest checks when it loads the file."""
    body = {s: {k: v for k, v in keys.items() if k != "backrest-checksum"} for s, keys in sections.items()}
    as_json = "{" + ",".join(f'"{s}":{{' + ",".join(f'"{k}":{v}' for k, v in sorted(body[s].items())) + "}"
                             for s in sorted(body)) + "}"
    text = "".join(f"[{s}]\n" + "".join(f"{k}={v}\n" for k, v in body[s].items()) + "\n" for s in body)
    checksum = hashlib.sha1(as_json.encode(), usedforsecurity=False).hexdigest()
    return text + f'[backrest]\nbackrest-checksum="{checksum}"\n'


def pgbackrest_repo(root: Path, stanzas: list[str], days: int, end: datetime) -> Path:
    """A pgBackRest repository (posix) holding, for each stanza, the same schedule as the drkit catalogs: a full
    a day, four diffs on it, and two WAL segments each 15 minutes. pgBackRest takes one real full and one real
    diff of a small cluster (the templates); the rest of backup.info is written from them, with the checksum
    pgBackRest checks, and the archive gets an (empty) file per WAL segment. Returns its config file."""
    from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE as SEG
    from drkit.engines.postgres.lsn import format_lsn, segment_name
    from drkit.engines.postgres.pgctl import LocalCluster, free_port, make_owned_dir
    from drkit.sandbox import default_bin_dir

    base = root / "pgbr"
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for d in ("repo", "log", "lock", "spool"):
        make_owned_dir(base / d, "postgres", 0o750)
    os.chmod(base, 0o755)
    conf, port, data = base / "pgbackrest.conf", free_port(), base / "pg"
    conf.write_text(f"[global]\nrepo1-path={base / 'repo'}\nlog-path={base / 'log'}\nlock-path={base / 'lock'}\n"
                    f"spool-path={base / 'spool'}\nlog-level-console=warn\nstart-fast=y\n"
                    f"repo1-retention-full=9999\ncompress-type=zst\n"
                    f"[template]\npg1-path={data}\npg1-port={port}\npg1-socket-path={data}\n")
    pw = pwd.getpwnam("postgres")
    os.chown(conf, pw.pw_uid, pw.pw_gid)
    cluster = LocalCluster(data, port, default_bin_dir(), "postgres", log_file=base / "pg.log")
    cluster.initdb(extra_conf="wal_level = replica\narchive_mode = on\n"
                              f"archive_command = 'pgbackrest --config={conf} --stanza=template archive-push %p'\n")
    cluster.start()
    try:
        for args in (["stanza-create"], ["backup", "--type=full"], ["backup", "--type=diff"]):
            proc = subprocess.run(["runuser", "-u", "postgres", "--", "pgbackrest", f"--config={conf}",
                                   "--stanza=template", *args], capture_output=True, text=True, cwd="/", check=False)
            if proc.returncode:
                raise SystemExit(f"pgbackrest {' '.join(args)} failed: {proc.stderr[-800:]}")
    finally:
        cluster.stop()
    repo = base / "repo"
    info = _ini((repo / "backup" / "template" / "backup.info").read_text())
    templates = {json.loads(v)["backup-type"]: json.loads(v) for v in info["backup:current"].values()}
    archive_info = (repo / "archive" / "template" / "archive.info").read_text()
    start = end - timedelta(days=days)
    for stanza in stanzas:
        current: dict[str, str] = {}
        wal = repo / "archive" / stanza / "15-1"
        full_label = ""
        for day in range(days):
            for i in range(96):
                slot = day * 96 + i
                t = start + slot * SLOT
                for seg in (2 * slot, 2 * slot + 1):
                    name = segment_name(1, seg)
                    (wal / name[:16]).mkdir(parents=True, exist_ok=True)
                    (wal / name[:16] / f"{name}-{'0' * 40}.zst").touch()
                kind = BASES.get(i // 4) if i % 4 == 0 else None
                if kind is None or (kind == "diff" and not full_label):
                    continue
                began, ended = t + timedelta(minutes=5) - timedelta(minutes=20 if kind == "full" else 4), \
                    t + timedelta(minutes=5)
                entry = dict(templates[kind])
                entry.update({"backup-archive-start": segment_name(1, 2 * slot),
                              "backup-archive-stop": segment_name(1, 2 * slot),
                              "backup-lsn-start": format_lsn(2 * slot * SEG + 0x28),
                              "backup-lsn-stop": format_lsn(2 * slot * SEG + 0x100),
                              "backup-timestamp-start": int(began.timestamp()),
                              "backup-timestamp-stop": int(ended.timestamp())})
                label = f"{began:%Y%m%d-%H%M%S}F"
                if kind == "diff":
                    entry.update({"backup-prior": full_label, "backup-reference": [full_label]})
                    label = f"{full_label}_{began:%Y%m%d-%H%M%S}D"
                else:
                    full_label = label
                current[label] = json.dumps(entry, separators=(",", ":"), sort_keys=True)
        sections = {**info, "backup:current": current}
        text = _info_text(sections)
        for folder, name, content in ((repo / "backup" / stanza, "backup.info", text),
                                      (repo / "archive" / stanza, "archive.info", archive_info)):
            folder.mkdir(parents=True, exist_ok=True)
            for suffix in ("", ".copy"):
                (folder / f"{name}{suffix}").write_text(content)
    shutil.rmtree(repo / "backup" / "template")
    shutil.rmtree(repo / "archive" / "template")
    return conf


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
    scrape_cpu_s: float = 0.0  # the listener's CPU seconds per scrape (mean)
    listener_rss_mib: float = 0.0
    textfile: list[tuple[float, float, float]] = field(default_factory=list)  # wall, cpu, peak RSS MiB
    status: list[tuple[float, float, float]] = field(default_factory=list)
    pgbackrest: Path | None = None  # the config of the peer's repository
    peer: list[tuple[float, float, float]] = field(default_factory=list)  # pgbackrest info

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


def timed_process(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float, bytes]:
    """(wall s, user+sys s, peak RSS MiB, stdout) of ``argv`` as a fresh process, under /usr/bin/time (its
    own peak RSS, see "How peak RSS is measured" in bench/README.md)."""
    out = cwd / "time.out"
    cmd = ["/usr/bin/time", "-o", str(out), "-f", "%e %U %S %M", *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, timeout=900, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv[:4])} failed ({proc.returncode}): {proc.stderr.decode()[-800:]}")
    _e, user, sys_s, rss_kib = out.read_text().split()[-4:]
    return wall, float(user) + float(sys_s), int(rss_kib) / 1024, proc.stdout


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
            if i == 1:
                cpu0 = cpu_seconds(proc.pid)
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
        w.scrape_cpu_s = (cpu_seconds(proc.pid) - cpu0) / scrapes
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
    drkit = [sys.executable, "-m", "cli"]
    textfile = [*drkit, "metrics", "--textfile", str(cwd / f"{w.policy.stem}.prom")]
    status = [*drkit, "status", "--json"]
    peer = ["pgbackrest", f"--config={w.pgbackrest}", "info", "--output=json"] if w.pgbackrest else None
    timed_process(status, env, cwd)  # warm-up (page cache, .pyc)
    if peer is not None:
        stanzas = json.loads(timed_process(peer, env, cwd)[3])
        backups = sum(len(s["backup"]) for s in stanzas)
        if any(s["status"]["code"] for s in stanzas) or backups != w.rows["bases"]:
            raise SystemExit(f"{w.name}: pgbackrest info shows {backups} backups, not {w.rows['bases']}: "
                             f"{[s['status'] for s in stanzas][:3]}")
    for _ in range(runs):  # taking turns, so a busy moment costs each the same
        w.textfile.append(timed_process(textfile, env, cwd)[:3])
        w.status.append(timed_process(status, env, cwd)[:3])
        if peer is not None:
            w.peer.append(timed_process(peer, env, cwd)[:3])


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


def _med(rows: list[tuple[float, float, float]], i: int) -> float:
    return med([r[i] for r in rows])


def _ratio(a: list[tuple[float, float, float]], b: list[tuple[float, float, float]]) -> str:
    """The median of the run-by-run ratios of wall seconds (each pair ran back to back)."""
    return f"{med([x[0] / y[0] for x, y in zip(a, b, strict=True)]):.2f}x" if a and b else "-"


def report(worlds: list[World], scrapes: int, runs: int) -> bool:
    print(f"\nscrape: GET /metrics on a running `drkit metrics --listen`, median / p95 of {scrapes} scrapes after a "
          f"warm-up (the listener's CPU s per scrape in brackets). Processes (a fresh process each, run in turn, "
          f"median of {runs}): wall s, CPU s (user+sys) in brackets. RSS: peak resident set (the listener's "
          "VmHWM after all scrapes; /usr/bin/time %M for processes). pgbr: `pgbackrest info --output=json` on a "
          "repository of the same backups.")
    header = ["catalog", "backups/copies/audits", "scrape ms", "listener RSS", "--textfile s", "status --json s",
              "pgbr info s", "scrape/pgbr", "textfile/pgbr", "textfile/status", "RSS textfile/status/pgbr"]
    table = [header]
    for w in worlds:
        tf, st, pr = w.textfile, w.status, w.peer
        scrape_s = med(w.scrape_ms) / 1000
        table.append([
            w.name, f"{w.rows['backups']}/{w.rows['copies']}/{w.rows['audit_events']}",
            f"{med(w.scrape_ms):.0f} / {p95(w.scrape_ms):.0f} ({w.scrape_cpu_s:.2f})", f"{w.listener_rss_mib:.0f} MiB",
            f"{_med(tf, 0):.2f} ({_med(tf, 1):.2f})", f"{_med(st, 0):.2f} ({_med(st, 1):.2f})",
            f"{_med(pr, 0):.3f} ({_med(pr, 1):.3f})" if pr else "-",
            f"{scrape_s / _med(pr, 0):.1f}x" if pr else "-", _ratio(tf, pr), _ratio(tf, st),
            f"{_med(tf, 2):.0f}/{_med(st, 2):.0f}/" + (f"{_med(pr, 2):.0f}" if pr else "-") + " MiB",
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
    ap.add_argument("--no-pgbackrest", action="store_true", help="no pgBackRest peer (it is skipped anyway when "
                    "pgbackrest is not installed)")
    ap.add_argument("--profile", action="store_true", help="+ cProfile of one in-process collect per catalog")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    opts = ap.parse_args()

    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    plans = {"year": (["app"], opts.year_days), "fleet": ([f"db{i:02d}" for i in range(opts.fleet_dbs)],
                                                        opts.fleet_days)}
    if opts.only:
        plans = {opts.only: plans[opts.only]}
    sources = {name: history(days, end.replace(hour=0)) for name, (_dbs, days) in plans.items()}

    root = Path(tempfile.mkdtemp(prefix="drkit-bench-metrics-"))
    cluster = None
    worlds: list[World] = []
    try:
        if not opts.no_postgres:
            cluster = start_postgres(root)
        peers: dict[str, Path] = {}
        if not opts.no_pgbackrest and shutil.which("pgbackrest"):
            for name, (dbs, days) in plans.items():
                t0 = time.perf_counter()
                peers[name] = pgbackrest_repo(root / f"peer-{name}", dbs, days, end.replace(hour=0))
                print(f"{name}: pgBackRest repository made in {time.perf_counter() - t0:.0f} s", flush=True)
        else:
            print("no pgBackRest peer (not installed, or --no-pgbackrest): drkit status --json is the only peer")
        for name, (dbs, _days) in plans.items():
            backends = [("SQLite", lambda n=name: f"sqlite:///{root / f'{n}.db'}")]
            if cluster is not None:
                backends.append(("PostgreSQL", lambda n=name: create_database(cluster, n)))
            for backend, url_of in backends:
                url = url_of()
                t0 = time.perf_counter()
                w = World(f"{name} / {backend}", url, dbs, fill_catalog(url, sources[name], dbs))
                w.pgbackrest = peers.get(name)
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
