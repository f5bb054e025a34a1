"""Backup benchmark: drkit full/diff against the raw ``pg_basebackup | zstd`` pipe, on a throwaway PG 15.

Run from the project root (as root, so the sandbox's server runs as the ``postgres`` OS user)::

    .venv/bin/python -m bench.backup [--scale 60] [--transactions 20000] [--runs 2] [--keep] [--profile]

Steps: make a sandbox under ``/tmp/drkit-bench-<pid>`` (``shared_buffers=512MB``, fsync on), load
``pgbench -i -s SCALE``, VACUUM ANALYZE, CHECKPOINT; then, alternating, the raw pipe and a drkit full (each
``--runs`` times; the table shows the *best* wall time, the per-run figures are listed too); then
``pgbench -n -c 4 -j 2 -t N`` and a drkit diff; then (unless ``--no-small``) re-initialise at ``--small-scale``
and take one more drkit full, to show that peak RSS does not follow the database size. Every drkit backup runs
in a child process (``--child``) so its peak RSS is its own (``os.wait4`` rusage of that child). Nothing here
is a test: it prints tables and the issue's targets with PASS/FAIL. See bench/README.md for caveats.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PAGE = 8192
MIB = 1024 * 1024
_CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
              "LANG": "C.UTF-8", "PGCONNECT_TIMEOUT": "10"}

TIME_BIN = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None

# Targets from the issue.
TARGET_TIME_RATIO = 1.3
TARGET_DIFF_RATIO = 1.2
TARGET_RSS_MIB = 256


# ------------------------------------------------------------------------------------------- child mode


def child_main(kind: str, policy_path: str, profile_out: str | None) -> int:
    """Runs inside the measured subprocess: one ``take_base_backup`` and a JSON line on stdout."""
    t_import = time.perf_counter()
    from drkit.config import load_policy
    from drkit.engines.postgres.backup import take_base_backup
    from drkit.runtime import Runtime

    import_s = time.perf_counter() - t_import
    rt = Runtime(load_policy(policy_path))
    db = next(iter(rt.policy.databases))
    profiler = None
    if profile_out:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t0 = time.perf_counter()
    rec = take_base_backup(rt, db, kind)
    call_s = time.perf_counter() - t0
    if profiler is not None and profile_out:
        profiler.disable()
        profiler.dump_stats(profile_out)
    rt.close()
    out = {
        "kind": rec.kind, "id": rec.id, "call_s": call_s, "import_s": import_s,
        "raw_bytes": rec.raw_bytes, "stored_bytes": rec.stored_bytes, "start_lsn": rec.start_lsn,
        "end_lsn": rec.end_lsn, "start_wal": rec.start_wal, "end_wal": rec.end_wal, "meta": dict(rec.meta),
        "self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    sys.stdout.write(json.dumps(out, default=str) + "\n")
    sys.stdout.flush()
    return 0


# ------------------------------------------------------------------------------------------- helpers


def tool(name: str) -> str:
    path = PG_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found in {PG_BIN} or on PATH")
    return found


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


class Measured:
    """A child process whose own peak RSS and CPU time we want.

    Not ``os.wait4`` on the child: Python spawns with vfork, and Linux folds the *parent's* RSS into the
    child's ``ru_maxrss`` at exec, so every child would look as big as this script. ``/usr/bin/time`` forks
    from a 2 MiB process and reports its own child's rusage; without it we poll ``psutil`` (50 ms).
    """

    def __init__(self, cmd: list[str], tmp_dir: Path, **popen: Any) -> None:
        self._time_out: Path | None = None
        self._poller: Any = None
        self.peak_kib = 0
        if TIME_BIN:
            fd, name = tempfile.mkstemp(prefix="time-", dir=tmp_dir)
            os.close(fd)
            self._time_out = Path(name)
            cmd = [TIME_BIN, "-q", "-f", "%M %U %S", "-o", name, *cmd]
        self.proc = subprocess.Popen(cmd, **popen)
        if not TIME_BIN:
            self._start_poller()

    def _start_poller(self) -> None:
        import threading

        import psutil

        ps = psutil.Process(self.proc.pid)

        def poll() -> None:
            while self.proc.returncode is None:
                try:
                    self.peak_kib = max(self.peak_kib, ps.memory_info().rss // 1024)
                except psutil.Error:
                    return
                time.sleep(0.05)

        self._poller = threading.Thread(target=poll, daemon=True)
        self._poller.start()

    def wait(self) -> tuple[int, int, float]:
        """(exit code, peak RSS KiB, CPU seconds)."""
        _, status, ru = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self._time_out is not None:
            text = self._time_out.read_text().split()
            self._time_out.unlink()
            return self.proc.returncode, int(text[-3]), float(text[-2]) + float(text[-1])
        if self._poller is not None:
            self._poller.join(1)
        return self.proc.returncode, self.peak_kib, ru.ru_utime + ru.ru_stime


@dataclass
class Run:
    contender: str
    wall_s: float
    stored_bytes: int
    rss_kib: int
    detail: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(f"/tmp/drkit-bench-{os.getpid()}")
        self.sb: Any = None
        self.port = 0

    # -- database access

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.sb.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def pg_args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]

    def run_pgbench(self, *argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [tool("pgbench"), *argv, *self.pg_args(), "postgres"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_CLEAN_ENV, cwd="/")
        if proc.returncode != 0:
            raise SystemExit(f"pgbench failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return proc

    def wait_archiver(self, timeout: float = 300) -> float:
        """Wait until no WAL segment is waiting for archive_command; returns seconds waited."""
        t0 = time.perf_counter()
        while True:
            ready = self.sql("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")[0][0]
            if ready == 0:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"archiver still has {ready} segments to archive after {timeout:.0f}s")
            time.sleep(0.2)

    def db_bytes(self) -> int:
        return int(self.sql("SELECT pg_database_size('postgres')")[0][0])

    def load(self, scale: int) -> dict[str, float]:
        t0 = time.perf_counter()
        self.run_pgbench("-i", "-s", str(scale), "-q")
        t_init = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.sql("VACUUM ANALYZE")
        t_vac = time.perf_counter() - t0
        self.sql("CHECKPOINT")
        t_arch = self.wait_archiver()
        return {"init_s": t_init, "vacuum_s": t_vac, "archive_wait_s": t_arch}

    # -- setup / teardown

    def setup(self) -> None:
        from drkit.sandbox import create_sandbox

        if self.root.exists():
            shutil.rmtree(self.root)
        log(f"creating sandbox in {self.root}")
        self.sb = create_sandbox(self.root, db="bench", fsync=True, shared_buffers="512MB")
        self.port = self.sb.primary.port
        # -X fetch reads the WAL at the end of the backup: keep it (postgres.md §2).
        self.sql("ALTER SYSTEM SET wal_keep_size = '2GB'")
        self.sql("SELECT pg_reload_conf()")
        # Create the catalog once, so no timed run pays for the first migration.
        from drkit.config import load_policy
        from drkit.runtime import Runtime

        rt = Runtime(load_policy(self.sb.policy_path), self.sb.environ())
        _ = rt.catalog
        rt.close()

    def teardown(self) -> None:
        if self.sb is not None:
            try:
                self.sb.stop()
            except Exception as exc:  # noqa: BLE001 - report and go on to cleanup
                log(f"stopping the server failed: {exc}")
        if self.args.keep:
            log(f"kept {self.root} (server stopped; start it with pg_ctl -D {self.root}/pg/primary)")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- contenders

    def raw_pipe(self, i: int) -> Run:
        out = self.root / f"raw-{i}.tar.zst"
        pb_cmd = [tool("pg_basebackup"), *self.pg_args(), "-c", "fast", "-D", "-", "-Ft", "-X", "fetch"]
        zstd = shutil.which("zstd")
        if not zstd:
            raise SystemExit("zstd not found on PATH")
        t0 = time.perf_counter()
        with open(out, "wb") as fh:
            pb = Measured(pb_cmd, self.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_CLEAN_ENV, cwd="/")
            assert pb.proc.stdout is not None and pb.proc.stderr is not None
            zs = Measured([zstd, "-T0", "-3", "-q"], self.root, stdin=pb.proc.stdout, stdout=fh, env=_CLEAN_ENV,
                          cwd="/")
            pb.proc.stdout.close()
            rc_z, rss_z, cpu_z = zs.wait()
            err = pb.proc.stderr.read().decode(errors="replace")
            rc_p, rss_p, cpu_p = pb.wait()
            fh.flush()
            os.fsync(fh.fileno())  # drkit's store fsyncs before it commits; so do we
        wall = time.perf_counter() - t0
        if rc_p or rc_z:
            raise SystemExit(f"raw pipe failed: pg_basebackup rc={rc_p} zstd rc={rc_z}: {err.strip()[-1000:]}")
        size = out.stat().st_size
        out.unlink()  # keep the disk tidy; the size is all we need
        # Both run at once, so the pipe's peak is (at most) the sum of the two.
        return Run("raw pg_basebackup | zstd -T0 -3", wall, size, rss_p + rss_z,
                   {"rss_pg_basebackup_kib": rss_p, "rss_zstd_kib": rss_z,
                    "cpu_pg_basebackup_s": cpu_p, "cpu_zstd_s": cpu_z})

    def drkit(self, kind: str, *, profile_out: Path | None = None) -> Run:
        cmd = [sys.executable, "-m", "bench.backup", "--child", kind, "--policy", str(self.sb.policy_path)]
        if profile_out:
            cmd += ["--profile-out", str(profile_out)]
        err_path = self.root / f"child-{kind}.stderr"
        t0 = time.perf_counter()
        with open(err_path, "wb") as err_fh:
            child = Measured(cmd, self.root, stdout=subprocess.PIPE, stderr=err_fh, env=self.sb.environ(),
                             cwd=str(PROJECT_ROOT))
            assert child.proc.stdout is not None
            out = child.proc.stdout.read()  # one JSON line; not communicate(): wait4 must reap the child
            child.proc.stdout.close()
            rc, rss, cpu = child.wait()
        wall = time.perf_counter() - t0
        if rc != 0:
            err = err_path.read_text(errors="replace")
            raise SystemExit(f"drkit {kind} child failed (rc={rc}):\n{err[-3000:]}")
        res = json.loads(out.decode().strip().splitlines()[-1])
        res["process_s"] = wall
        res["cpu_s"] = cpu
        # Judge on the take_base_backup call (drkit runs inside a long-lived worker); process_s is shown too.
        return Run(f"drkit {kind}", res["call_s"], int(res["stored_bytes"]), rss, res)


# ------------------------------------------------------------------------------------------- independent page count


def lsn_pages(path: Path, since_lsn: int) -> tuple[int, int]:
    """(pages with pd_lsn >= since_lsn, pages) over every segment file of one relation fork."""
    unpack = struct.Struct("=II").unpack_from
    changed = total = 0
    seg = 0
    while True:
        p = path if seg == 0 else path.with_name(f"{path.name}.{seg}")
        if not p.exists():
            break
        with open(p, "rb") as fh:
            while buf := fh.read(8 * MIB):
                n = len(buf) // PAGE
                total += n
                for i in range(n):
                    hi, lo = unpack(buf, i * PAGE)
                    if ((hi << 32) | lo) >= since_lsn:
                        changed += 1
        seg += 1
    return changed, total


def pgbench_relation_pages(bench: Bench, since_lsn: int) -> dict[str, tuple[int, int]]:
    rows = bench.sql(
        "SELECT c.relname, pg_relation_filepath(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relname LIKE 'pgbench%%' AND c.relkind IN ('r', 'i') ORDER BY 1")
    data_dir = bench.sb.primary.data_dir
    return {name: lsn_pages(data_dir / rel, since_lsn) for name, rel in rows}


# ------------------------------------------------------------------------------------------- output


def wal_bytes(res: dict[str, Any]) -> int:
    from drkit.engines.postgres.lsn import parse_segment_name

    seg = int(res["meta"].get("segment_size", 16 * MIB))
    if not res.get("start_wal") or not res.get("end_wal"):
        return 0
    first = parse_segment_name(res["start_wal"], seg)[1]
    last = parse_segment_name(res["end_wal"], seg)[1]
    return (last - first + 1) * seg


def make_table(title: str, columns: list[str]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.MARKDOWN, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    return table


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_profile(path: Path, console: Any, top: int = 18) -> None:
    import io
    import pstats

    for order in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(str(path), stream=buf).sort_stats(order).print_stats(top)
        text = buf.getvalue()
        start = text.find("   ncalls")
        console.print(f"\n[bold]cProfile of one drkit full, top {top} by {order}[/bold]")
        console.print(text[start:].rstrip(), markup=False, highlight=False)


def report(b: Bench, info: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(width=160)
    raws: list[Run] = info["raw_runs"]
    fulls: list[Run] = info["full_runs"]
    best_raw = min(raws, key=lambda r: r.wall_s)
    best_full = min(fulls, key=lambda r: r.wall_s)
    diff: Run = info["diff"]

    console.print(f"\nPostgreSQL 15, pgbench scale {b.args.scale}: database {mib(info['db_bytes'])}, "
                  f"{os.cpu_count()} CPUs; load {info['load']['init_s']:.1f} s, VACUUM ANALYZE "
                  f"{info['load']['vacuum_s']:.1f} s. Best of {b.args.runs} alternating runs (wall).")

    med_raw = statistics.median(r.wall_s for r in raws)
    med_full = statistics.median(r.wall_s for r in fulls)
    t = make_table(f"Full backup (wall s = best of {len(raws)}; median beside it)",
                   ["contender", "wall s", "bytes stored", "ratio vs raw pipe (time)", "peak RSS MiB",
                    "median wall s", "median ratio"])
    for r, med in ((best_raw, med_raw), (best_full, med_full)):
        t.add_row(r.contender, f"{r.wall_s:.2f}", f"{r.stored_bytes:,}", f"{r.wall_s / best_raw.wall_s:.2f}x",
                  f"{max(x.rss_kib for x in (raws if r is best_raw else fulls)) / 1024:.1f}", f"{med:.2f}",
                  f"{med / med_raw:.2f}x")
    console.print(t)
    console.print("drkit wall = the take_base_backup call in the child; 'process s' below adds interpreter start, "
                  "imports and policy load. Peak RSS = the largest over the runs; the raw pipe's is "
                  "pg_basebackup + zstd (they run at once).")

    t = make_table("Every run (in order)", ["run", "contender", "wall s", "process s", "CPU s", "bytes stored",
                                            "peak RSS MiB", "RSS detail"])
    for i, r in enumerate(info["order"], 1):
        if r.contender.startswith("raw"):
            cpu = r.detail["cpu_pg_basebackup_s"] + r.detail["cpu_zstd_s"]
            detail = (f"pg_basebackup {r.detail['rss_pg_basebackup_kib'] / 1024:.1f} + "
                      f"zstd {r.detail['rss_zstd_kib'] / 1024:.1f}")
            t.add_row(str(i), r.contender, f"{r.wall_s:.2f}", f"{r.wall_s:.2f}", f"{cpu:.2f}",
                      f"{r.stored_bytes:,}", f"{r.rss_kib / 1024:.1f}", detail)
        else:
            t.add_row(str(i), r.contender, f"{r.wall_s:.2f}", f"{r.detail['process_s']:.2f}",
                      f"{r.detail['cpu_s']:.2f}", f"{r.stored_bytes:,}", f"{r.rss_kib / 1024:.1f}",
                      f"raw {r.detail['raw_bytes']:,} B, import {r.detail['import_s']:.2f} s")
    console.print(t)

    meta = diff.detail["meta"]
    pages_changed = int(meta["pages_changed"])
    pages_total = int(meta["pages_scanned"])
    whole = int(meta["whole_file_bytes"])
    wal = wal_bytes(diff.detail)
    expected = pages_changed * PAGE + whole + wal
    diff_raw = int(diff.detail["raw_bytes"])
    diff_ratio = diff_raw / expected
    t = make_table("Differential backup", ["pgbench txns", "pages changed", "pages total", "diff raw bytes",
                                           "changed pages bytes + overhead", "ratio", "diff stored / full stored"])
    t.add_row(f"{info['txns']:,}", f"{pages_changed:,}", f"{pages_total:,}", f"{diff_raw:,}",
              f"{expected:,}", f"{diff_ratio:.3f}", f"{diff.stored_bytes / best_full.stored_bytes:.3f}")
    console.print(t)
    console.print(
        f"overhead = whole files {whole:,} B (vm/fsm forks, new relation files, non-relation files) + WAL "
        f"{wal:,} B ({diff.detail['start_wal']}..{diff.detail['end_wal']}); changed pages bytes = "
        f"{pages_changed:,} x 8192 = {pages_changed * PAGE:,} B. diff wall {diff.wall_s:.2f} s "
        f"(process {diff.detail['process_s']:.2f} s), stored {diff.stored_bytes:,} B, peak RSS "
        f"{diff.rss_kib / 1024:.1f} MiB. pgbench: {info['pgbench_tps']}")

    rel = info["rel_pages"]
    t = make_table(f"Independent scan after the diff: pages with LSN >= the full's start "
                   f"({info['full_start_lsn']})", ["relation", "pages changed", "pages total", "fraction"])
    sum_c = sum_t = 0
    for name, (c, tot) in rel.items():
        sum_c += c
        sum_t += tot
        t.add_row(name, f"{c:,}", f"{tot:,}", f"{c / tot:.1%}" if tot else "-")
    t.add_row("all pgbench relations", f"{sum_c:,}", f"{sum_t:,}", f"{sum_c / sum_t:.1%}" if sum_t else "-")
    console.print(t)

    rss_rows: list[tuple[str, Run]] = [(f"scale {b.args.scale}", max(fulls, key=lambda r: r.rss_kib))]
    if info.get("small") is not None:
        rss_rows.append((f"scale {b.args.small_scale}", info["small"]))
    t = make_table("drkit full peak RSS vs database size", ["database", "db size", "raw bytes", "wall s (that run)",
                                                            "peak RSS MiB"])
    for label, r in rss_rows:
        size = info["db_bytes"] if label == f"scale {b.args.scale}" else info["small_db_bytes"]
        t.add_row(label, mib(size), f"{r.detail['raw_bytes']:,}", f"{r.wall_s:.2f}", f"{r.rss_kib / 1024:.1f}")
    console.print(t)

    peak = max([*(r.rss_kib for r in fulls), diff.rss_kib, *(
        [info["small"].rss_kib] if info.get("small") else [])]) / 1024
    time_ratio = best_full.wall_s / best_raw.wall_s
    proc_ratio = min(r.detail["process_s"] for r in fulls) / best_raw.wall_s
    t = make_table("Targets", ["target", "measured", "result"])
    t.add_row(f"drkit full time <= {TARGET_TIME_RATIO}x raw pipe (best vs best)",
              f"{time_ratio:.2f}x ({best_full.wall_s:.2f} s vs {best_raw.wall_s:.2f} s); median "
              f"{med_full / med_raw:.2f}x; whole process {proc_ratio:.2f}x", verdict(time_ratio <= TARGET_TIME_RATIO))
    t.add_row(f"diff raw bytes <= {TARGET_DIFF_RATIO}x (changed-page bytes + fixed overhead)",
              f"{diff_ratio:.3f}x", verdict(diff_ratio <= TARGET_DIFF_RATIO))
    t.add_row(f"peak RSS <= {TARGET_RSS_MIB} MiB (every drkit backup process)", f"{peak:.1f} MiB",
              verdict(peak <= TARGET_RSS_MIB))
    console.print(t)

    if info.get("profile"):
        print_profile(info["profile"], console)


# ------------------------------------------------------------------------------------------- main


def bench_main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        log("warning: not root; the sandbox's server then runs as you")
    b = Bench(args)
    info: dict[str, Any] = {}
    try:
        b.setup()
        log(f"pgbench -i -s {args.scale} (port {b.port})")
        info["load"] = b.load(args.scale)
        info["db_bytes"] = b.db_bytes()
        log(f"loaded {mib(info['db_bytes'])} in {info['load']['init_s']:.1f} s; "
            f"VACUUM ANALYZE {info['load']['vacuum_s']:.1f} s")

        info["raw_runs"], info["full_runs"], info["order"] = [], [], []
        for i in range(args.runs):
            r = b.raw_pipe(i)
            info["raw_runs"].append(r)
            info["order"].append(r)
            log(f"raw pipe #{i + 1}: {r.wall_s:.2f} s, {r.stored_bytes:,} B, RSS {r.rss_kib / 1024:.1f} MiB")
            b.wait_archiver()
            f = b.drkit("full")
            info["full_runs"].append(f)
            info["order"].append(f)
            log(f"drkit full #{i + 1}: {f.wall_s:.2f} s (process {f.detail['process_s']:.2f} s), "
                f"{f.stored_bytes:,} B, RSS {f.rss_kib / 1024:.1f} MiB")
            b.wait_archiver()
        last_full = info["full_runs"][-1]  # the diff's base: the newest full
        info["full_start_lsn_int"] = int(last_full.detail["start_lsn"])
        from drkit.engines.postgres.lsn import format_lsn

        info["full_start_lsn"] = format_lsn(info["full_start_lsn_int"])

        clients = 4
        per_client = max(1, math.ceil(args.transactions / clients))
        info["txns"] = per_client * clients
        log(f"pgbench -n -c {clients} -j 2 -t {per_client}")
        t0 = time.perf_counter()
        out = b.run_pgbench("-n", "-c", str(clients), "-j", "2", "-t", str(per_client)).stdout
        tps = next((ln.split("=")[1].split("(")[0].strip() for ln in out.splitlines() if ln.startswith("tps")), "?")
        info["pgbench_tps"] = f"{info['txns']:,} txns in {time.perf_counter() - t0:.1f} s ({tps} tps)"
        b.wait_archiver()
        d = b.drkit("diff")
        info["diff"] = d
        log(f"drkit diff: {d.wall_s:.2f} s, raw {d.detail['raw_bytes']:,} B, stored {d.stored_bytes:,} B, "
            f"pages {d.detail['meta'].get('pages_changed')}/{d.detail['meta'].get('pages_scanned')}")
        info["rel_pages"] = pgbench_relation_pages(b, info["full_start_lsn_int"])

        if args.profile:
            b.wait_archiver()
            prof = b.root / "full.pstats"
            log("profiling one more drkit full under cProfile")
            b.drkit("full", profile_out=prof)
            info["profile"] = prof

        if not args.no_small:
            log(f"re-initialising at scale {args.small_scale} for the RSS comparison")
            b.load(args.small_scale)
            info["small_db_bytes"] = b.db_bytes()
            s = b.drkit("full")
            info["small"] = s
            log(f"drkit full at scale {args.small_scale}: {s.wall_s:.2f} s, RSS {s.rss_kib / 1024:.1f} MiB")

        report(b, info)
        if args.profile and args.keep:
            log(f"profile kept in {info['profile']}")
    finally:
        b.teardown()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.backup", description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=int, default=60, help="pgbench scale (60 is about 900 MiB)")
    p.add_argument("--transactions", type=int, default=20000, help="total pgbench transactions before the diff")
    p.add_argument("--runs", type=int, default=2, help="runs of each full contender, alternating (best is shown)")
    p.add_argument("--small-scale", type=int, default=10, help="scale of the extra full for the RSS comparison")
    p.add_argument("--no-small", action="store_true", help="skip the small-scale RSS comparison")
    p.add_argument("--profile", action="store_true", help="also run one drkit full under cProfile and print it")
    p.add_argument("--keep", action="store_true", help="keep /tmp/drkit-bench-<pid> (the server is stopped)")
    p.add_argument("--child", choices=["full", "diff"], help=argparse.SUPPRESS)
    p.add_argument("--policy", help=argparse.SUPPRESS)
    p.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args.child, args.policy, args.profile_out)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
