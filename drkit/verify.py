"""Verification restores: prove a backup by restoring it and checking what comes back.

Steps, as an operator would do them by hand: check every piece's stored
SHA-256 (no key needed); restore into a scratch data directory (reached through
the Unix socket in it only, see ``drkit.engines.postgres.pgrestore``) with
``archive_mode=off``; run ``pg_amcheck --heapallindexed``, ``pg_visibility``'s
``pg_check_visible``/``pg_check_frozen`` on every table (stale visibility-map bits
pass amcheck, checksums and content hashes), and the policy's SQL checks; always
tear the scratch cluster down. Extensions the checks need are dropped again
where they were missing, and database names are quoted into conninfo strings,
never pasted. The result is a
:class:`VerifyReport`; :func:`verify_backup` records it in the catalog
(verified or corrupt, plus an audit event with the numbers).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drkit.binding import require_key, stream_context
from drkit.catalog.records import BackupRecord
from drkit.config import resolve_dsn
from drkit.copies import CopyPicker
from drkit.engines.postgres.chain import RestorePiece, RestorePlan, plan_for_backup, plan_restore
from drkit.engines.postgres.pgctl import LocalCluster, make_owned_dir
from drkit.errors import DrkitError, IntegrityError, RestoreError, RestorePlanError, StoreError
from drkit.pipeline import verify_stored
from drkit.restore import restore
from drkit.runtime import Runtime
from drkit.tiers import DATA_OBJECT, write_descriptor

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
    warnings: list[str] = field(default_factory=list)  # copies found missing or corrupt (recorded so)

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
            "corrupt_pieces": self.corrupt_pieces, "error": self.error, "warnings": self.warnings,
        }

    def markdown(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        lines = [f"# Verification of {self.subject} ({self.database}): **{verdict}**", ""]
        if self.error:
            lines += [f"**Error:** {self.error}", ""]
        lines += [f"**Warning:** {w}" for w in self.warnings] + ([""] if self.warnings else [])
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


def conninfo(host: str, port: int, dbname: str = "postgres") -> str:
    """A restored cluster's conninfo (``host`` is its socket directory); names are quoted, never pasted."""
    return make_conninfo(host=host, port=str(port), user="postgres", dbname=dbname)


def _databases(host: str, port: int) -> list[str]:
    with psycopg.connect(conninfo(host, port), autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname").fetchall()]


@contextmanager
def borrowed_extension(host: str, port: int, name: str) -> Iterator[dict[str, str]]:
    """Extension ``name`` in every database for the length of a check; yields {database: its schema}.

    Where it was missing it is created (in pg_catalog) and dropped again afterwards, so validation
    leaves the restored cluster as it was restored; where the user had installed it, it stays.
    """
    created: list[str] = []
    schemas: dict[str, str] = {}
    try:
        for db in _databases(host, port):
            with psycopg.connect(conninfo(host, port, db), autocommit=True) as conn:
                row = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                                   "WHERE e.extname = %s", [name]).fetchone()
                if row is None:
                    conn.execute(sql.SQL("CREATE EXTENSION {} WITH SCHEMA pg_catalog").format(sql.Identifier(name)))
                    created.append(db)
                schemas[db] = row[0] if row else "pg_catalog"
        yield schemas
    finally:
        for db in created:
            with psycopg.connect(conninfo(host, port, db), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP EXTENSION IF EXISTS {}").format(sql.Identifier(name)))


def check_amcheck(host: str, port: int, bin_dir: Path) -> tuple[bool, str]:
    with borrowed_extension(host, port, "amcheck"):
        proc = subprocess.run(
            [str(bin_dir / "pg_amcheck"), "-h", host, "-p", str(port), "-U", "postgres", "--all",
             "--heapallindexed", "--no-password"],
            capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode == 0:
        return True, "pg_amcheck --heapallindexed: all heap and btree relations of every database clean"
    return False, (proc.stdout + proc.stderr).strip()[-2000:] or f"pg_amcheck exited {proc.returncode}"


def check_visibility(host: str, port: int) -> tuple[bool, str]:
    bad: list[str] = []
    tables = 0
    with borrowed_extension(host, port, "pg_visibility") as schemas:
        for db, schema in schemas.items():
            visible = sql.Identifier(schema, "pg_check_visible")
            frozen = sql.Identifier(schema, "pg_check_frozen")
            query = sql.SQL("SELECT (SELECT count(*) FROM {}(%s::oid::regclass)), "
                            "(SELECT count(*) FROM {}(%s::oid::regclass)), %s::oid::regclass::text").format(
                                visible, frozen)
            with psycopg.connect(conninfo(host, port, db), autocommit=True) as conn:
                rels = [r[0] for r in conn.execute(
                    "SELECT c.oid FROM pg_class c WHERE c.relkind IN ('r', 'm', 't') "
                    "AND c.relpersistence <> 't'").fetchall()]
                for oid in rels:
                    tables += 1
                    row = conn.execute(query, [oid, oid, oid]).fetchone()
                    assert row is not None
                    if row[0] or row[1]:
                        bad.append(f"{db}.{row[2]}: {row[0]} not-visible and {row[1]} not-frozen TIDs marked so")
    if bad:
        return False, "visibility map lies: " + "; ".join(bad[:20])
    return True, f"pg_check_visible and pg_check_frozen clean on {tables} relations"


def check_sql(host: str, port: int, dbname: str, query: str) -> tuple[bool, str]:
    with psycopg.connect(conninfo(host, port, dbname), autocommit=True) as conn:
        cur = conn.execute(sql.SQL(query))  # the operator's own check, from the policy file
        row = cur.fetchone() if cur.description else None
    value = None if row is None else row[0]
    if value is False:
        return False, f"returned false: {query}"
    return True, f"{query} → {value}"


def run_checks(rt: Runtime, db: str, port: int, host: str) -> list[CheckResult]:
    """The policy's checks against a restored cluster: ``host`` is its socket directory (its data directory)."""
    cfg = rt.policy.database(db)
    dbname = conninfo_to_dict(resolve_dsn(db, cfg, rt.environ)).get("dbname") or "postgres"
    results = []
    for check in cfg.verify.checks_for(cfg.engine):
        if check == "amcheck":
            results.append(_timed("amcheck", lambda: check_amcheck(host, port, rt.bin_dir(db))))
        elif check == "visibility":
            results.append(_timed("visibility map", lambda: check_visibility(host, port)))
        else:
            results.append(_timed(f"sql: {check[:60]}", lambda q=check: check_sql(host, port, str(dbname), q)))
    return results


def scratch_root(rt: Runtime, db: str) -> Path:
    root = rt.policy.resolve(rt.policy.scratch_dir) / db
    make_owned_dir(root.parent, None, 0o755)
    make_owned_dir(root, None, 0o755)
    return root


def _check_stored(rt: Runtime, plan: RestorePlan, report: VerifyReport, subject: str
                  ) -> tuple[list[RestorePiece], list[str]]:
    """Check each piece's stored SHA-256 (no key needed), from its first copy that matches.

    The plan's copy is checked first. A copy found missing or corrupt is recorded so
    (:mod:`drkit.copies`) and the next tier's copy is checked: the backup is sound if one copy is. A
    piece is corrupt when every copy tried proved missing or corrupt; unreadable when some copy could
    not be read at all (the store failed): nothing is then concluded about the backup. Returns the
    copies that matched, and the unreadable pieces; corrupt pieces go into ``report.corrupt_pieces``.
    """
    picker = CopyPicker(rt, actor="drkit-verify", found_by=f"verification of {subject}")
    checked: list[RestorePiece] = []
    unreadable: list[str] = []
    for piece in plan.pieces:
        started = time.monotonic()
        name, seen = f"sha256 {piece.backup.id}", len(picker.warnings)
        if not piece.sha256:
            report.corrupt_pieces.append(piece.backup.id)
            report.checks.append(CheckResult(name, False, f"{piece.backup.id} has no recorded SHA-256", 0.0))
            continue
        while True:
            try:
                copy = picker.pick(piece)
            except RestoreError as exc:  # no copy left
                (report.corrupt_pieces if picker.damaged_only(piece.backup.id) else unreadable).append(
                    piece.backup.id)
                report.checks.append(CheckResult(name, False, str(exc), time.monotonic() - started))
                break
            try:
                with rt.store(copy.tier).reader(copy.store_key) as src:
                    n = verify_stored(src, copy.sha256 or piece.sha256 or "",
                                      expected_context=stream_context(piece.backup, DATA_OBJECT))
            except (IntegrityError, StoreError) as exc:
                picker.failed(copy, exc)
                continue
            bad = picker.warnings[seen:]
            report.checks.append(CheckResult(name, True, f"{n} bytes match in tier {copy.tier}"
                                             + (f" ({'; '.join(bad)})" if bad else ""), time.monotonic() - started))
            checked.append(copy)
            break
    report.warnings += picker.warnings
    return checked, unreadable


def verify_plan(rt: Runtime, db: str, plan: RestorePlan, subject: str) -> VerifyReport:
    """Checksums, scratch restore, checks, teardown.

    The catalog changes only where a copy is found missing or corrupt: that copy is recorded so, and
    the next tier's copy is verified instead (see :func:`_check_stored`).
    """
    require_key(rt, [p.backup for p in plan.pieces])  # a wrong key is refused, never reported as corruption
    t0 = time.monotonic()
    report = VerifyReport(database=db, subject=subject, pieces=[p.backup.id for p in plan.pieces],
                          reaches=plan.reaches, stored_bytes=plan.total_bytes)
    checked, unreadable = _check_stored(rt, plan, report, subject)
    if report.corrupt_pieces or unreadable:
        problems = []
        if report.corrupt_pieces:
            problems.append("stored bytes do not match their SHA-256: " + ", ".join(report.corrupt_pieces))
        if unreadable:
            problems.append("no copy could be read: " + ", ".join(unreadable))
        report.error = "; ".join(problems)
        report.total_seconds = time.monotonic() - t0
        return report
    plan = replace(plan, pieces=tuple(checked))  # restore exactly the copies just checked
    into = scratch_root(rt, db) / f"verify-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    cluster: LocalCluster | None = None
    try:
        res = restore(rt, db, into=into, plan=plan, keep_running=True)
        report.warnings += res.warnings
        cluster = LocalCluster(res.data_dir, res.port, rt.bin_dir(db), rt.os_user(db), socket_dir=res.data_dir)
        report.restore_seconds, report.bytes_read = res.seconds, res.bytes_read
        report.checks.append(CheckResult("restore", True, f"recovered to timeline {res.timeline}", res.seconds))
        report.checks.extend(run_checks(rt, db, res.port, str(res.data_dir)))
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
