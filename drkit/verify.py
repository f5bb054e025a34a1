"""Verification restores: prove a backup by restoring it and checking what comes back.

Steps, as an operator would do them by hand: check every piece's stored
SHA-256 (no key needed); restore into a scratch data directory on a free
loopback port with ``archive_mode=off``; run ``pg_amcheck --heapallindexed``,
``pg_visibility``'s ``pg_check_visible``/``pg_check_frozen`` on every table (stale
visibility-map bits pass amcheck, checksums and content hashes), and the
policy's SQL checks; always tear the scratch cluster down. The result is a
:class:`VerifyReport`; :func:`verify_backup` records it in the catalog
(verified or corrupt, plus an audit event with the numbers).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from drkit.catalog.records import BackupRecord
from drkit.chain import RestorePlan, plan_for_backup, plan_restore
from drkit.config import resolve_dsn
from drkit.engines.pgctl import LocalCluster, make_owned_dir
from drkit.errors import DrkitError, IntegrityError, RestorePlanError
from drkit.pipeline import verify_stored
from drkit.restore import restore
from drkit.runtime import Runtime
from drkit.tiers import write_descriptor

BUILTIN_CHECKS = ("amcheck", "visibility")


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class VerifyReport:
    database: str
    subject: str  # the backup id, or "chain to <time>"
    pieces: list[str]
    passed: bool = False
    checks: list[CheckResult] = field(default_factory=list)
    restore_seconds: float = 0.0
    total_seconds: float = 0.0
    bytes_read: int = 0
    stored_bytes: int = 0
    corrupt_pieces: list[str] = field(default_factory=list)
    error: str | None = None
    reaches: datetime | None = None

    @property
    def throughput_mib_s(self) -> float:
        """Restored (uncompressed) MiB per second."""
        return self.bytes_read / 2**20 / self.restore_seconds if self.restore_seconds else 0.0

    @property
    def stored_throughput_mib_s(self) -> float:
        """Stored (compressed, encrypted) MiB read per second: what restore-time estimates use."""
        return self.stored_bytes / 2**20 / self.restore_seconds if self.restore_seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "subject": self.subject, "pieces": self.pieces,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail[:500], "seconds": round(c.seconds, 2)}
                       for c in self.checks],
            "restore_seconds": round(self.restore_seconds, 2), "total_seconds": round(self.total_seconds, 2),
            "bytes_read": self.bytes_read, "throughput_mib_s": round(self.throughput_mib_s, 1),
            "stored_bytes": self.stored_bytes,
            "stored_throughput_mib_s": round(self.stored_throughput_mib_s, 1),
            "corrupt_pieces": self.corrupt_pieces, "error": self.error,
        }

    def markdown(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        lines = [f"# Verification of {self.subject} ({self.database}): **{verdict}**", ""]
        if self.error:
            lines += [f"**Error:** {self.error}", ""]
        lines += [f"* pieces: {', '.join(self.pieces)}",
                  f"* restored {self.bytes_read / 2**20:.1f} MiB in {self.restore_seconds:.1f} s "
                  f"({self.throughput_mib_s:.0f} MiB/s); whole verification {self.total_seconds:.1f} s",
                  f"* reaches: {self.reaches.isoformat() if self.reaches else '—'}", "",
                  "| check | result | seconds | detail |", "|---|---|---|---|"]
        for c in self.checks:
            detail = c.detail.replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {c.name} | {'ok' if c.ok else 'FAILED'} | {c.seconds:.2f} | {detail} |")
        return "\n".join(lines)


def _timed(name: str, fn: Any) -> CheckResult:
    t0 = time.monotonic()
    try:
        ok, detail = fn()
    except (psycopg.Error, OSError, subprocess.SubprocessError, DrkitError) as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return CheckResult(name, ok, detail, time.monotonic() - t0)


def _databases(port: int) -> list[str]:
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname").fetchall()]


def check_amcheck(port: int, bin_dir: Path) -> tuple[bool, str]:
    proc = subprocess.run(
        [str(bin_dir / "pg_amcheck"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "--all",
         "--heapallindexed", "--install-missing", "--no-password"],
        capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode == 0:
        return True, "pg_amcheck --heapallindexed: all heap and btree relations of every database clean"
    return False, (proc.stdout + proc.stderr).strip()[-2000:] or f"pg_amcheck exited {proc.returncode}"


def check_visibility(port: int) -> tuple[bool, str]:
    bad: list[str] = []
    tables = 0
    for db in _databases(port):
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname={db}", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_visibility")
            rels = [r[0] for r in conn.execute(
                "SELECT c.oid FROM pg_class c WHERE c.relkind IN ('r', 'm', 't') "
                "AND c.relpersistence <> 't'").fetchall()]
            for oid in rels:
                tables += 1
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM pg_check_visible(%s::oid::regclass)), "
                    "(SELECT count(*) FROM pg_check_frozen(%s::oid::regclass)), %s::oid::regclass::text",
                    [oid, oid, oid]).fetchone()
                assert row is not None
                if row[0] or row[1]:
                    bad.append(f"{db}.{row[2]}: {row[0]} not-visible and {row[1]} not-frozen TIDs marked so")
    if bad:
        return False, "visibility map lies: " + "; ".join(bad[:20])
    return True, f"pg_check_visible and pg_check_frozen clean on {tables} relations"


def check_sql(port: int, dbname: str, query: str) -> tuple[bool, str]:
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname={dbname}", autocommit=True) as conn:
        cur = conn.execute(sql.SQL(query))  # the operator's own check, from the policy file
        row = cur.fetchone() if cur.description else None
    value = None if row is None else row[0]
    if value is False:
        return False, f"returned false: {query}"
    return True, f"{query} → {value}"


def run_checks(rt: Runtime, db: str, port: int) -> list[CheckResult]:
    cfg = rt.policy.database(db)
    dbname = conninfo_to_dict(resolve_dsn(db, cfg, rt.environ)).get("dbname") or "postgres"
    results = []
    for check in cfg.verify.checks_for(cfg.engine):
        if check == "amcheck":
            results.append(_timed("amcheck", lambda: check_amcheck(port, rt.bin_dir(db))))
        elif check == "visibility":
            results.append(_timed("visibility map", lambda: check_visibility(port)))
        else:
            results.append(_timed(f"sql: {check[:60]}", lambda q=check: check_sql(port, str(dbname), q)))
    return results


def scratch_root(rt: Runtime, db: str) -> Path:
    root = rt.policy.resolve(rt.policy.scratch_dir) / db
    make_owned_dir(root.parent, None, 0o755)
    make_owned_dir(root, None, 0o755)
    return root


def verify_plan(rt: Runtime, db: str, plan: RestorePlan, subject: str) -> VerifyReport:
    """Checksums, scratch restore, checks, teardown. Changes nothing in the catalog."""
    t0 = time.monotonic()
    report = VerifyReport(database=db, subject=subject, pieces=[p.backup.id for p in plan.pieces],
                          reaches=plan.reaches, stored_bytes=plan.total_bytes)
    for piece in plan.pieces:
        started = time.monotonic()
        try:
            if not piece.sha256:
                raise IntegrityError(f"{piece.backup.id} has no recorded SHA-256")
            with rt.store(piece.tier).reader(piece.store_key) as src:
                n = verify_stored(src, piece.sha256)
            report.checks.append(CheckResult(f"sha256 {piece.backup.id}", True,
                                             f"{n} bytes match in tier {piece.tier}", time.monotonic() - started))
        except DrkitError as exc:
            report.corrupt_pieces.append(piece.backup.id)
            report.checks.append(CheckResult(f"sha256 {piece.backup.id}", False, str(exc), time.monotonic() - started))
    if report.corrupt_pieces:
        report.error = "stored bytes do not match their SHA-256: " + ", ".join(report.corrupt_pieces)
        report.total_seconds = time.monotonic() - t0
        return report
    into = scratch_root(rt, db) / f"verify-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    cluster: LocalCluster | None = None
    try:
        res = restore(rt, db, into=into, plan=plan, keep_running=True)
        cluster = LocalCluster(res.data_dir, res.port, rt.bin_dir(db), rt.os_user(db))
        report.restore_seconds, report.bytes_read = res.seconds, res.bytes_read
        report.checks.append(CheckResult("restore", True, f"recovered to timeline {res.timeline}", res.seconds))
        report.checks.extend(run_checks(rt, db, res.port))
        report.passed = all(c.ok for c in report.checks)
        if not report.passed:
            report.error = "; ".join(f"{c.name}: {c.detail[:200]}" for c in report.checks if not c.ok)
    except DrkitError as exc:
        report.checks.append(CheckResult("restore", False, str(exc), time.monotonic() - t0))
        report.error = f"restore failed: {exc}"
    finally:
        if cluster is None:
            cluster = LocalCluster(into, 0, rt.bin_dir(db), rt.os_user(db))
        cluster.stop("immediate")
        shutil.rmtree(into, ignore_errors=True)
        shutil.rmtree(into.parent / f".{into.name}.drkit-wal", ignore_errors=True)
        (into.parent / f"{into.name}.log").unlink(missing_ok=True)
    report.total_seconds = time.monotonic() - t0
    return report


def _record(rt: Runtime, db: str, report: VerifyReport, targets: list[BackupRecord], actor: str) -> None:
    """Audit the numbers; mark ``targets`` verified (pass) or corrupt (fail)."""
    rt.catalog.audit(actor=actor, action="backup.verify", database=db, subject=report.subject,
                     detail=report.summary())
    status = "verified" if report.passed else "corrupt"
    reason = (f"verification restore passed ({report.subject})" if report.passed
              else (report.error or "verification failed")[:500])
    for b in targets:
        if rt.catalog.get(b.id).status != status:
            write_descriptor(rt, rt.catalog.set_status(b.id, status, actor=actor, reason=reason))


def verify_target(rt: Runtime, db: str, backups: list[BackupRecord], backup_id: str | None) -> BackupRecord:
    """The backup ``drkit verify`` checks: the one named, else the newest full (corrupt ones included)."""
    if backup_id is None:
        fulls = [b for b in backups if b.kind == "full" and b.status in ("completed", "verified", "corrupt")]
        if not fulls:
            raise RestorePlanError(f"no full backup of {db!r} to verify; run `drkit backup full {db}` first")
        return max(fulls, key=lambda b: b.end_time or b.started_at)
    target = rt.catalog.get(backup_id)
    if target.database != db:
        raise RestorePlanError(f"backup {backup_id} belongs to {target.database!r}, not {db!r}")
    return target


def verify_backup(rt: Runtime, db: str, backup_id: str | None = None, *, actor: str = "drkit-verify") -> VerifyReport:
    """Verify one backup (default: the newest full) and record verified/corrupt."""
    rt.policy.database(db)
    backups = rt.catalog.list_backups(db)
    target = verify_target(rt, db, backups, backup_id)
    plan = plan_for_backup(target, backups, rt.catalog.all_copies(db), tier_order=rt.tier_order)
    report = verify_plan(rt, db, plan, target.id)
    _record(rt, db, report, [target], actor)
    return report


def verify_chain(rt: Runtime, db: str, *, actor: str = "drkit-verify") -> VerifyReport:
    """Restore the newest chain (full + diff + logs to the latest point) and check it end to end."""
    rt.policy.database(db)
    backups = rt.catalog.list_backups(db)
    plan = plan_restore(db, backups, rt.catalog.all_copies(db), target=None, now=datetime.now(UTC),
                        tier_order=rt.tier_order)
    report = verify_plan(rt, db, plan, f"chain to {plan.reaches.isoformat(timespec='seconds')}")
    pieces = [p.backup for p in plan.pieces]
    if report.passed:
        _record(rt, db, report, pieces, actor)
    else:
        # Only pieces whose stored bytes are proven bad are marked corrupt; any other failure is
        # reported (verify_failed) without blaming a particular piece.
        _record(rt, db, report, [b for b in pieces if b.id in report.corrupt_pieces], actor)
    return report
