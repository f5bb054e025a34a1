"""Restore benchmark: drkit restore (full + diff + logs, and full + logs) against a raw untar + WAL replay, on PG 15.

Run from the project root (as root, so every server runs as the ``postgres`` OS user)::

    .venv/bin/python -m bench.restore [--scale 60] [--wal-mib 300] [--runs 2] [--keep] [--profile]

Steps: make a sandbox under ``/tmp/drkit-bench-<pid>`` (as ``bench.backup`` does) and load ``pgbench -i -s SCALE``;
take a drkit full and, right after it, a raw peer full (``pg_basebackup -Ft -X fetch | zstd -T0 -3``, kept on disk);
run pgbench until at least ``--wal-mib`` MiB of WAL is written, taking a drkit diff half way; ``pg_switch_wal()``,
wait for the archiver and hard-link the spool's segments into ``raw_wal/`` (drkit's log backup prunes the spool);
take a drkit log backup, and copy into ``raw_wal/`` any segment it shipped that the copy lacks, so that both sides
end at the same WAL segment. Then, ``--runs`` times, alternating: the raw restore (``zstd -d | tar -x``, chown,
recovery config, ``pg_ctl start -w``, poll until ``pg_is_in_recovery()`` is false), drkit's restore of full + logs
(the diff dropped from the plan: the like-for-like row) and drkit's restore of full + diff + logs. Every drkit
restore runs ``restore(..., keep_running=True)`` in a child process (``--child restore``) under ``/usr/bin/time``,
so its peak RSS is its own; the PostgreSQL server's memory is counted for neither side. Nothing here is a test:
it prints tables and the issue's targets with PASS/FAIL. See bench/README.md for caveats.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.backup import (
    _CLEAN_ENV,
    MIB,
    PROJECT_ROOT,
    TARGET_RSS_MIB,
    TARGET_TIME_RATIO,
    Bench,
    Measured,
    log,
    make_table,
    mib,
    tool,
    verdict,
)

WORKLOAD_ENV = {**_CLEAN_ENV, "PGOPTIONS": "-c synchronous_commit=off"}
POLL_S = 0.2  # how often the raw side asks pg_is_in_recovery(): as often as drkit's recover() does

RAW = "raw untar + replay"
DK_LOGS = "drkit full + logs"
DK_DIFF = "drkit full + diff + logs"


# ------------------------------------------------------------------------------------------- child mode


def _runtime(policy_path: str) -> Any:
    from drkit.config import load_policy
    from drkit.runtime import Runtime

    return Runtime(load_policy(policy_path))


def child_log(policy_path: str) -> int:
    """One ``take_log_backup`` and a JSON line on stdout."""
    from drkit.engines.postgres.backup import take_log_backup

    rt = _runtime(policy_path)
    db = next(iter(rt.policy.databases))
    t0 = time.perf_counter()
    rec = take_log_backup(rt, db)
    call_s = time.perf_counter() - t0
    rt.close()
    if rec is None:
        sys.stdout.write(json.dumps({"none": True, "call_s": call_s}) + "\n")
        return 0
    out = {"id": rec.id, "call_s": call_s, "raw_bytes": rec.raw_bytes, "stored_bytes": rec.stored_bytes,
           "start_wal": rec.start_wal, "end_wal": rec.end_wal, "start_lsn": rec.start_lsn, "end_lsn": rec.end_lsn,
           "meta": dict(rec.meta)}
    sys.stdout.write(json.dumps(out, default=str) + "\n")
    return 0


def child_restore(policy_path: str, into: str, no_diff: bool, profile_out: str | None) -> int:
    """One ``restore(..., keep_running=True)`` (latest point) and a JSON line on stdout; the server is left up."""
    t_import = time.perf_counter()
    from drkit.engines.postgres.chain_model import POSTGRES_CHAIN
    from drkit.engines.postgres.restore import restore
    from drkit.restore import make_plan

    import_s = time.perf_counter() - t_import
    rt = _runtime(policy_path)
    db = next(iter(rt.policy.databases))
    plan = make_plan(rt, db, POSTGRES_CHAIN, None)
    if no_diff and plan.diff is not None:
        logs = plan.logs
        if not logs:
            raise SystemExit("the plan has no log backups to replay from the full")
        from drkit.engines.postgres.lsn import parse_segment_name

        seg = int(logs[0].backup.meta.get("segment_size", 16 * MIB))
        assert logs[0].backup.start_wal and plan.full.backup.start_lsn is not None
        if parse_segment_name(logs[0].backup.start_wal, seg)[1] > plan.full.backup.start_lsn // seg:
            raise SystemExit("the first log backup starts after the full: full + logs cannot skip the diff")
        plan = dataclasses.replace(plan, pieces=tuple(p for p in plan.pieces if p.role != "diff"))
    profiler = None
    if profile_out:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t0 = time.perf_counter()
    res = restore(rt, db, into=Path(into), plan=plan, keep_running=True)
    call_s = time.perf_counter() - t0
    if profiler is not None and profile_out:
        profiler.disable()
        profiler.dump_stats(profile_out)
    rt.close()
    out = {
        "call_s": call_s, "import_s": import_s, "port": res.port, "timeline": res.timeline,
        "bytes_extracted": res.bytes_read, "recovery": plan.recovery, "steps": res.steps,
        "pieces": [{"role": p.role, "id": p.backup.id, "stored_bytes": p.stored_bytes} for p in plan.pieces],
        "stored_bytes": plan.total_bytes, "data_dir": str(res.data_dir),
        "self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "minflt": resource.getrusage(resource.RUSAGE_SELF).ru_minflt,  # minor page faults (see README)
    }
    sys.stdout.write(json.dumps(out, default=str) + "\n")
    sys.stdout.flush()
    return 0


# ------------------------------------------------------------------------------------------- server log


_LSN = r"([0-9A-F]+/[0-9A-F]+)"


def _lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def redo_info(log_path: Path) -> dict[str, Any]:
    """What the restored server's log says about redo: LSN range, redo elapsed, segments restored."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return {}
    info: dict[str, Any] = {"restored_segments": len(re.findall(r'restored log file "[0-9A-F]{24}"', text))}
    stamps: dict[str, float] = {}
    for key, pattern in (("start", r"LOG:  starting PostgreSQL"), ("archive", r"LOG:  starting archive recovery"),
                         ("ready", r"LOG:  database system is ready to accept connections")):
        m = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \S+ \[\d+\] " + pattern, text, re.M)
        if m:
            stamps[key] = datetime.fromisoformat(m.group(1)).timestamp()
    if "start" in stamps and "archive" in stamps:
        info["startup_sync_s"] = stamps["archive"] - stamps["start"]  # incl. fsync of the data directory
    if "start" in stamps and "ready" in stamps:
        info["server_s"] = stamps["ready"] - stamps["start"]  # postmaster start → accepting writes
    m1 = re.search(r"redo starts at " + _LSN, text)
    m2 = re.search(r"redo done at " + _LSN + r".*?elapsed: ([0-9.]+) s", text)
    if m1 and m2:
        info["redo_bytes"] = _lsn(m2.group(1)) - _lsn(m1.group(1))
        info["redo_start"], info["redo_end"] = m1.group(1), m2.group(1)
        info["redo_elapsed_s"] = float(m2.group(2))
    return info


# ------------------------------------------------------------------------------------------- the benchmark


@dataclass
class RestoreRun:
    contender: str
    wall_s: float
    process_s: float
    rss_kib: int
    cpu_s: float
    bytes_read: int
    detail: dict[str, Any] = field(default_factory=dict)


class RestoreBench(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.raw_full = self.root / "raw_full.tar.zst"
        self.raw_wal = self.root / "raw_wal"
        self.restored: list[Path] = []  # every data dir a server may have been started in
        self.seg_size = 16 * MIB

    # -- helpers

    def lsn_now(self) -> int:
        return int(self.sql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0])

    def segment_size(self) -> int:
        return int(self.sql("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'")[0][0])

    def pgbench_round(self, seconds: int) -> float:
        """One ``pgbench -n -c 4 -j 2 -T seconds`` (synchronous_commit off, to make WAL quickly); returns tps."""
        cmd = [tool("pgbench"), "-n", "-c", "4", "-j", "2", "-T", str(seconds), *self.pg_args(), "postgres"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=WORKLOAD_ENV, cwd="/")
        if proc.returncode != 0:
            raise SystemExit(f"pgbench failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        tps = next((ln.split("=")[1].split("(")[0].strip() for ln in proc.stdout.splitlines()
                    if ln.startswith("tps")), "0")
        return float(tps)

    def child(self, argv: list[str], tag: str) -> tuple[dict[str, Any], float, int, float]:
        """Run ``python -m bench.restore --child ...`` under /usr/bin/time: (JSON, wall s, peak RSS KiB, CPU s)."""
        cmd = [sys.executable, "-m", "bench.restore", *argv, "--policy", str(self.sb.policy_path)]
        err_path = self.root / f"child-{tag}.stderr"
        t0 = time.perf_counter()
        with open(err_path, "wb") as err_fh:
            ch = Measured(cmd, self.root, stdout=subprocess.PIPE, stderr=err_fh, env=self.sb.environ(),
                          cwd=str(PROJECT_ROOT))
            assert ch.proc.stdout is not None
            out = ch.proc.stdout.read()
            ch.proc.stdout.close()
            rc, rss, cpu = ch.wait()
        wall = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"child {tag} failed (rc={rc}):\n{err_path.read_text(errors='replace')[-3000:]}")
        return json.loads(out.decode().strip().splitlines()[-1]), wall, rss, cpu

    def stop_cluster(self, data_dir: Path) -> None:
        from drkit.engines.postgres.pgctl import LocalCluster

        os_user = "postgres" if os.geteuid() == 0 else None
        LocalCluster(data_dir, 0, Path(tool("pg_ctl")).parent, os_user).stop("fast")

    def teardown_all(self) -> None:
        """Stop every restored server still up, then the primary; delete the directory unless --keep."""
        for d in self.restored:
            if (d / "postmaster.pid").exists():
                try:
                    self.stop_cluster(d)
                except Exception as exc:  # noqa: BLE001 - report and go on to cleanup
                    log(f"stopping the restored server in {d} failed: {exc}")
        self.teardown()

    def discard(self, data_dir: Path) -> None:
        """Stop the restored server; delete its directory unless --keep."""
        self.stop_cluster(data_dir)
        if not self.args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)

    # -- backups

    def take_raw_full(self) -> dict[str, Any]:
        pb_cmd = [tool("pg_basebackup"), *self.pg_args(), "-c", "fast", "-D", "-", "-Ft", "-X", "fetch", "-v"]
        zstd = shutil.which("zstd")
        if not zstd:
            raise SystemExit("zstd not found on PATH")
        t0 = time.perf_counter()
        with open(self.raw_full, "wb") as fh:
            pb = Measured(pb_cmd, self.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_CLEAN_ENV, cwd="/")
            assert pb.proc.stdout is not None and pb.proc.stderr is not None
            zs = Measured([zstd, "-T0", "-3", "-q"], self.root, stdin=pb.proc.stdout, stdout=fh, env=_CLEAN_ENV,
                          cwd="/")
            pb.proc.stdout.close()
            rc_z, _, _ = zs.wait()
            err = pb.proc.stderr.read().decode(errors="replace")
            rc_p, _, _ = pb.wait()
            fh.flush()
            os.fsync(fh.fileno())
        wall = time.perf_counter() - t0
        if rc_p or rc_z:
            raise SystemExit(f"raw full failed: pg_basebackup rc={rc_p} zstd rc={rc_z}: {err.strip()[-1000:]}")
        m = re.search(r"write-ahead log start point: " + _LSN, err)
        return {"wall_s": wall, "stored_bytes": self.raw_full.stat().st_size,
                "start_lsn": _lsn(m.group(1)) if m else None}

    def copy_spool_to_raw(self) -> int:
        """Hard-link (or copy) every archived segment in the spool into raw_wal/; returns how many were new."""
        from drkit.engines.postgres.lsn import is_segment_name

        self.raw_wal.mkdir(exist_ok=True)
        n = 0
        for name in sorted(os.listdir(self.sb.spool)):
            if not (is_segment_name(name) or name.endswith(".history")):
                continue
            dst = self.raw_wal / name
            if dst.exists():
                continue
            try:
                os.link(self.sb.spool / name, dst)
            except OSError:
                shutil.copy2(self.sb.spool / name, dst)
            n += 1
        return n

    def complete_raw_wal(self, end_wal: str, seg_size: int) -> list[str]:
        """Copy the segments drkit's log shipped after our spool copy (its own switch) from the primary's pg_wal."""
        from drkit.engines.postgres.lsn import parse_segment_name, segment_name

        tli, last = parse_segment_name(end_wal, seg_size)
        have = sorted(n for n in os.listdir(self.raw_wal) if len(n) == 24)
        first = parse_segment_name(have[-1], seg_size)[1] + 1 if have else last
        copied = []
        for segno in range(first, last + 1):
            name = segment_name(tli, segno, seg_size)
            src = self.sb.primary.data_dir / "pg_wal" / name
            if not src.exists():
                raise SystemExit(f"{name} is neither in the raw WAL copy nor in the primary's pg_wal")
            shutil.copy2(src, self.raw_wal / name)
            copied.append(name)
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres:postgres", str(self.raw_wal)], check=True)
        os.chmod(self.raw_wal, 0o750)
        return copied

    # -- restores

    def raw_restore(self, i: int) -> RestoreRun:
        from drkit.engines.postgres.pgctl import free_port

        target = self.root / f"restore-raw-{i}"
        log_path = self.root / f"restore-raw-{i}.log"
        shutil.rmtree(target, ignore_errors=True)
        log_path.unlink(missing_ok=True)
        port = free_port()
        zstd = shutil.which("zstd")
        assert zstd
        t0 = time.perf_counter()
        target.mkdir(mode=0o700)
        zs = Measured([zstd, "-d", "-c", "-q", str(self.raw_full)], self.root, stdout=subprocess.PIPE,
                      env=_CLEAN_ENV, cwd="/")
        assert zs.proc.stdout is not None
        tr = Measured(["tar", "-x", "-C", str(target)], self.root, stdin=zs.proc.stdout, env=_CLEAN_ENV, cwd="/")
        zs.proc.stdout.close()
        rc_t, rss_t, cpu_t = tr.wait()
        rc_z, rss_z, cpu_z = zs.wait()
        if rc_t or rc_z:
            raise SystemExit(f"raw untar failed: zstd rc={rc_z} tar rc={rc_t}")
        t_untar = time.perf_counter() - t0
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres:postgres", str(target)], check=True)
        os.chmod(target, 0o700)
        conf = (f"\n# bench.restore (raw peer)\nport = {port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{target}'\narchive_mode = off\n"
                f"restore_command = 'cp {self.raw_wal}/%f %p'\nrecovery_target_action = 'promote'\n")
        with open(target / "postgresql.auto.conf", "a") as fh:
            fh.write(conf)
        (target / "recovery.signal").touch()
        if os.geteuid() == 0:
            os.chown(target / "recovery.signal", *_pg_ids())
            log_path.touch()
            os.chown(log_path, *_pg_ids())
        t_config = time.perf_counter() - t0
        self.restored.append(target)
        start = [tool("pg_ctl"), "-D", str(target), "-l", str(log_path), "-w", "-t", "1800", "start"]
        if os.geteuid() == 0:
            start = ["runuser", "-u", "postgres", "--", *start]
        proc = subprocess.run(start, capture_output=True, text=True, env=_CLEAN_ENV, cwd="/")
        if proc.returncode != 0:
            raise SystemExit(f"raw restore: pg_ctl start failed: {proc.stderr.strip()} | "
                             + " | ".join(log_path.read_text(errors='replace').splitlines()[-6:]))
        t_started = time.perf_counter() - t0
        self.wait_promoted(port, log_path)
        wall = time.perf_counter() - t0
        wal_bytes = redo_info(log_path)
        read = self.raw_full.stat().st_size + wal_bytes.get("restored_segments", 0) * self.seg_size
        return RestoreRun(RAW, wall, wall, rss_t + rss_z, cpu_t + cpu_z, read, {
            "untar_s": t_untar, "config_s": t_config, "started_s": t_started, "rss_tar_kib": rss_t,
            "rss_zstd_kib": rss_z, "redo": wal_bytes, "data_dir": str(target), "port": port})

    def wait_promoted(self, port: int, log_path: Path, timeout: float = 1800) -> None:
        import psycopg

        deadline = time.perf_counter() + timeout
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        while True:
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                    if row is not None and not row[0]:
                        return
            except psycopg.OperationalError:
                pass
            if time.perf_counter() > deadline:
                raise SystemExit(f"raw restore did not finish recovery: {log_path}")
            time.sleep(self.args.poll_s)

    def drkit_restore(self, i: int, *, no_diff: bool, profile_out: Path | None = None) -> RestoreRun:
        tag = f"drkit-{'logs' if no_diff else 'diff'}-{i}"
        target = self.root / f"restore-{tag}"
        shutil.rmtree(target, ignore_errors=True)
        (self.root / f"{target.name}.log").unlink(missing_ok=True)
        argv = ["--child", "restore", "--into", str(target)]
        if no_diff:
            argv.append("--no-diff")
        if profile_out:
            argv += ["--profile-out", str(profile_out)]
        self.restored.append(target)
        res, wall, rss, cpu = self.child(argv, tag)
        res["redo"] = redo_info(self.root / f"{target.name}.log")
        recovery_at = next((t for what, t in res["steps"] if what == "recovery"), None)
        res["extract_s"] = recovery_at
        contender = DK_LOGS if no_diff else DK_DIFF
        return RestoreRun(contender, res["call_s"], wall, rss, cpu, int(res["stored_bytes"]), res)


def _pg_ids() -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


# ------------------------------------------------------------------------------------------- output


def report(b: RestoreBench, info: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(width=180)
    runs: list[RestoreRun] = info["order"]
    by: dict[str, list[RestoreRun]] = {}
    for r in runs:
        by.setdefault(r.contender, []).append(r)
    best = {k: min(v, key=lambda r: r.wall_s) for k, v in by.items()}
    med = {k: statistics.median(r.wall_s for r in v) for k, v in by.items()}
    raw_best, raw_med = best[RAW].wall_s, med[RAW]
    load = info["load"]
    console.print(
        f"\nPostgreSQL 15, pgbench scale {b.args.scale}: database {mib(info['db_bytes'])}, {os.cpu_count()} CPUs; "
        f"load {load['init_s']:.1f} s. WAL written by the workload: {mib(info['wal_written'])} "
        f"({info['workload']}). Best of {b.args.runs} alternating runs (wall); median beside it.")

    t = make_table("Backups taken (inputs of the restores)", ["backup", "wall s", "stored bytes", "WAL range"])
    t.add_row("drkit full", f"{info['full'].wall_s:.2f}", f"{info['full'].stored_bytes:,}",
              f"{info['full'].detail['start_wal']}..{info['full'].detail['end_wal']}")
    t.add_row("raw pg_basebackup | zstd -T0 -3 (peer)", f"{info['raw_full']['wall_s']:.2f}",
              f"{info['raw_full']['stored_bytes']:,}", f"starts at {info['raw_full_start']}")
    t.add_row("drkit diff (half way through the workload)", f"{info['diff'].wall_s:.2f}",
              f"{info['diff'].stored_bytes:,}", f"{info['diff'].detail['start_wal']}..{info['diff'].detail['end_wal']}")
    lg = info["log"]
    t.add_row("drkit log (end)", f"{lg['call_s']:.2f}", f"{lg['stored_bytes']:,}",
              f"{lg['start_wal']}..{lg['end_wal']} ({lg['meta'].get('segments')} segments, raw "
              f"{lg['raw_bytes']:,} B)")
    console.print(t)
    console.print(f"raw WAL copy: {info['raw_wal_linked']} segments hard-linked from the spool before the log "
                  f"backup pruned it, + {len(info['raw_wal_copied'])} copied from the primary's pg_wal afterwards "
                  f"({', '.join(info['raw_wal_copied']) or '-'}), so both sides end at {lg['end_wal']}.")

    t = make_table(f"Restore to the latest point (wall s = best of {b.args.runs})",
                   ["contender", "wall s", "ratio vs raw", "median wall s", "median ratio", "process s",
                    "peak RSS MiB", "CPU s (tool)", "bytes read", "WAL replayed", "redo s (PG)"])
    for name in (RAW, DK_LOGS, DK_DIFF):
        if name not in best:
            continue
        r = best[name]
        redo = r.detail["redo"]
        t.add_row(name, f"{r.wall_s:.2f}", f"{r.wall_s / raw_best:.2f}x", f"{med[name]:.2f}",
                  f"{med[name] / raw_med:.2f}x", f"{r.process_s:.2f}",
                  f"{max(x.rss_kib for x in by[name]) / 1024:.1f}", f"{r.cpu_s:.2f}", f"{r.bytes_read:,}",
                  mib(redo.get("redo_bytes", 0)), f"{redo.get('redo_elapsed_s', float('nan')):.2f}")
    console.print(t)
    console.print(
        "wall s: raw = mkdir → zstd -d | tar -x → chown -R → recovery config → pg_ctl start -w → "
        f"pg_is_in_recovery() false (polled every {b.args.poll_s} s); drkit = the restore(keep_running=True) call in "
        "the child (its recover() polls every 0.2 s); process s adds interpreter start, imports and policy load. "
        "Peak RSS is the restore tool's own (raw: zstd + tar, which run at once; drkit: the Python child), the "
        "largest over the runs; the PostgreSQL server's memory is counted for neither side. CPU s is the tool's "
        "(not the server's). bytes read = from backup storage: raw = raw_full.tar.zst + WAL segments restored "
        "by restore_command (uncompressed, from raw_wal/); drkit = stored (compressed, encrypted) bytes of every "
        "piece in the plan (a log piece is read whole even when the diff makes most of it unnecessary).")
    wal_line = "; ".join(
        f"{name}: {mib(best[name].detail['redo'].get('redo_bytes', 0))} "
        f"({best[name].detail['redo'].get('redo_start', '?')}..{best[name].detail['redo'].get('redo_end', '?')}, "
        f"{best[name].detail['redo'].get('restored_segments', 0)} segments restored)"
        for name in (RAW, DK_LOGS, DK_DIFF) if name in best)
    console.print(f"WAL replayed (server log, 'redo starts at' .. 'redo done at'): {wal_line}")

    t = make_table("Every run (in order), with where the time went",
                   ["run", "contender", "wall s", "process s", "lay down s", "start → promoted s",
                    "server: startup+fsync / redo / start→ready s", "peak RSS MiB", "RSS detail"])

    def server(d: dict[str, Any]) -> str:
        redo = d["redo"]
        return (f"{redo.get('startup_sync_s', float('nan')):.2f} / {redo.get('redo_elapsed_s', float('nan')):.2f}"
                f" / {redo.get('server_s', float('nan')):.2f}")

    for i, r in enumerate(runs, 1):
        d = r.detail
        if r.contender == RAW:
            t.add_row(str(i), r.contender, f"{r.wall_s:.2f}", f"{r.process_s:.2f}",
                      f"{d['config_s']:.2f} (untar {d['untar_s']:.2f})", f"{r.wall_s - d['config_s']:.2f}",
                      server(d), f"{r.rss_kib / 1024:.1f}",
                      f"tar {d['rss_tar_kib'] / 1024:.1f} + zstd {d['rss_zstd_kib'] / 1024:.1f}")
        else:
            ext = d.get("extract_s") or 0.0
            t.add_row(str(i), r.contender, f"{r.wall_s:.2f}", f"{r.process_s:.2f}", f"{ext:.2f}",
                      f"{r.wall_s - ext:.2f}", server(d), f"{r.rss_kib / 1024:.1f}",
                      f"import {d['import_s']:.2f} s; {d.get('minflt', 0):,} minor faults")
    console.print(t)
    console.print("lay down = everything before the server starts (raw: untar, chown -R, recovery config; drkit: "
                  "read, decrypt, decompress and extract every piece, incl. the log pieces' WAL into a side "
                  "directory, recovery config, chown). The server columns come from its log: postmaster start → "
                  "'starting archive recovery' (mostly the fsync of the whole data directory PostgreSQL does when "
                  "it starts from a base backup), 'redo done … elapsed', postmaster start → 'ready to accept "
                  "connections'. A `sync` runs before every restore, so no run pays for the previous one's "
                  "dirty pages.")
    steps = best[DK_LOGS].detail["steps"] if DK_LOGS in best else []
    if steps:
        console.print("drkit full + logs steps (s since the call began): "
                      + ", ".join(f"{what.split(' from ')[0]} @ {at:.2f}" for what, at in steps))

    peak = max(r.rss_kib for r in runs if r.contender != RAW) / 1024
    ratio = best[DK_LOGS].wall_s / raw_best
    ratio_diff = best[DK_DIFF].wall_s / raw_best
    t = make_table("Targets", ["target", "measured", "result"])
    t.add_row(f"drkit restore time <= {TARGET_TIME_RATIO}x raw (full + logs, like for like; best vs best)",
              f"{ratio:.2f}x ({best[DK_LOGS].wall_s:.2f} s vs {raw_best:.2f} s); median "
              f"{med[DK_LOGS] / raw_med:.2f}x; whole process {best[DK_LOGS].process_s / raw_best:.2f}x",
              verdict(ratio <= TARGET_TIME_RATIO))
    t.add_row(f"(also) drkit full + diff + logs <= {TARGET_TIME_RATIO}x raw",
              f"{ratio_diff:.2f}x ({best[DK_DIFF].wall_s:.2f} s); median {med[DK_DIFF] / raw_med:.2f}x",
              verdict(ratio_diff <= TARGET_TIME_RATIO))
    t.add_row(f"peak RSS <= {TARGET_RSS_MIB} MiB (every drkit restore process)", f"{peak:.1f} MiB",
              verdict(peak <= TARGET_RSS_MIB))
    console.print(t)
    if info.get("profile"):
        print_profile(info["profile"], console)


def print_profile(path: Path, console: Any, top: int = 22) -> None:
    import io
    import pstats

    for order in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(str(path), stream=buf).sort_stats(order).print_stats(top)
        text = buf.getvalue()
        start = text.find("   ncalls")
        console.print(f"\n[bold]cProfile of one drkit full + logs restore, top {top} by {order}[/bold]")
        console.print(text[start:].rstrip(), markup=False, highlight=False)


# ------------------------------------------------------------------------------------------- main


def bench_main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the raw restore chowns to postgres and starts servers with runuser")
    b = RestoreBench(args)
    info: dict[str, Any] = {}
    t_all = time.perf_counter()
    try:
        b.setup()
        b.seg_size = b.segment_size()
        log(f"pgbench -i -s {args.scale} (port {b.port})")
        info["load"] = b.load(args.scale)
        info["db_bytes"] = b.db_bytes()
        log(f"loaded {mib(info['db_bytes'])} in {info['load']['init_s']:.1f} s")

        full = b.drkit("full")
        info["full"] = full
        log(f"drkit full: {full.wall_s:.2f} s, {full.stored_bytes:,} B ({full.detail['start_wal']}.."
            f"{full.detail['end_wal']})")
        info["raw_full"] = b.take_raw_full()
        from drkit.engines.postgres.lsn import format_lsn

        info["raw_full_start"] = (format_lsn(info["raw_full"]["start_lsn"])
                                  if info["raw_full"]["start_lsn"] is not None else "?")
        log(f"raw full: {info['raw_full']['wall_s']:.2f} s, {info['raw_full']['stored_bytes']:,} B, "
            f"start {info['raw_full_start']}")

        target = args.wal_mib * MIB
        start_lsn = b.lsn_now()
        diff_done = False
        tps: list[float] = []
        t0 = time.perf_counter()
        while True:
            tps.append(b.pgbench_round(args.round_s))
            written = b.lsn_now() - start_lsn
            log(f"workload: {mib(written)} of WAL so far")
            if not diff_done and written >= target / 2:
                b.wait_archiver()
                d = b.drkit("diff")
                info["diff"] = d
                diff_done = True
                log(f"drkit diff: {d.wall_s:.2f} s, {d.stored_bytes:,} B ({d.detail['start_wal']}.."
                    f"{d.detail['end_wal']})")
            if written >= target and diff_done:
                break
        info["wal_written"] = b.lsn_now() - start_lsn
        info["workload"] = (f"pgbench -n -c 4 -j 2, {len(tps)} rounds of {args.round_s} s, synchronous_commit=off, "
                            f"~{statistics.mean(tps):,.0f} tps, {time.perf_counter() - t0:.0f} s incl. the diff")
        b.sql("SELECT pg_switch_wal()")
        b.wait_archiver()
        info["raw_wal_linked"] = b.copy_spool_to_raw()
        lg, _, _, _ = b.child(["--child", "log"], "log")
        if lg.get("none"):
            raise SystemExit("take_log_backup shipped nothing")
        info["log"] = lg
        info["raw_wal_copied"] = b.complete_raw_wal(lg["end_wal"], b.seg_size)
        log(f"drkit log: {lg['call_s']:.2f} s, {lg['meta'].get('segments')} segments "
            f"({lg['start_wal']}..{lg['end_wal']}), {lg['stored_bytes']:,} B stored")
        log("stopping the sandbox primary (restores do not need it)")
        b.sb.stop()

        info["order"] = []
        for i in range(args.runs):
            for kind in (RAW, DK_LOGS, DK_DIFF):
                os.sync()  # not timed: flush the previous run's (and the deletions') dirty pages first
                r = b.raw_restore(i) if kind == RAW else b.drkit_restore(i, no_diff=kind == DK_LOGS)
                info["order"].append(r)
                redo = r.detail["redo"]
                log(f"{kind} #{i + 1}: {r.wall_s:.2f} s (process {r.process_s:.2f} s), RSS "
                    f"{r.rss_kib / 1024:.1f} MiB, redo {mib(redo.get('redo_bytes', 0))} in "
                    f"{redo.get('redo_elapsed_s', float('nan')):.2f} s")
                b.discard(Path(r.detail["data_dir"]))
        if args.profile:
            prof = b.root / "restore.pstats"
            log("profiling one more drkit full + logs restore under cProfile (not timed)")
            os.sync()
            r = b.drkit_restore(args.runs, no_diff=True, profile_out=prof)
            b.discard(Path(r.detail["data_dir"]))
            info["profile"] = prof
        report(b, info)
        log(f"whole benchmark: {time.perf_counter() - t_all:.0f} s")
    finally:
        b.teardown_all()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.restore", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--scale", type=int, default=60, help="pgbench scale (60 is about 900 MiB)")
    p.add_argument("--wal-mib", type=int, default=300, help="WAL to generate after the fulls (MiB, at least)")
    p.add_argument("--runs", type=int, default=2, help="runs of each restore contender, alternating (best shown)")
    p.add_argument("--round-s", type=int, default=2, help="length of one pgbench round of the workload (s)")
    p.add_argument("--poll-s", type=float, default=POLL_S,
                   help="how often the raw side polls pg_is_in_recovery() (drkit's recover() uses 0.2 s)")
    p.add_argument("--profile", action="store_true", help="also run one drkit full + logs restore under cProfile")
    p.add_argument("--keep", action="store_true", help="keep /tmp/drkit-bench-<pid> (every server is stopped)")
    p.add_argument("--child", choices=["log", "restore"], help=argparse.SUPPRESS)
    p.add_argument("--policy", help=argparse.SUPPRESS)
    p.add_argument("--into", help=argparse.SUPPRESS)
    p.add_argument("--no-diff", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "log":
        return child_log(args.policy)
    if args.child == "restore":
        return child_restore(args.policy, args.into, args.no_diff, args.profile_out)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
