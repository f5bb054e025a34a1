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
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drkit.binding import require_key
from drkit.config import resolve_dsn
from drkit.engines.postgres.chain_model import POSTGRES_CHAIN
from drkit.engines.postgres.pgctl import LocalCluster, make_owned_dir
from drkit.engines.postgres.restore import restore
from drkit.errors import DrkitError
from drkit.plans import RestorePlan
from drkit.runtime import Runtime
from drkit.verify import (
    CheckResult,
    VerifyReport,
    check_stored,
    record_verification,
    stored_error,
    timed,
    verify_target,
)

BUILTIN_CHECKS = ("amcheck", "visibility")
CHECK_ERRORS = (psycopg.Error, OSError, subprocess.SubprocessError, DrkitError)
"""What a check against a restored cluster may raise: it fails the check, it does not stop the verification."""


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
    for check in cfg.verify.checks_for(BUILTIN_CHECKS):
        if check == "amcheck":
            results.append(timed("amcheck", lambda: check_amcheck(host, port, rt.bin_dir(db)), CHECK_ERRORS))
        elif check == "visibility":
            results.append(timed("visibility map", lambda: check_visibility(host, port), CHECK_ERRORS))
        else:
            results.append(timed(f"sql: {check[:60]}", partial(check_sql, host, port, str(dbname), check),
                                 CHECK_ERRORS))
    return results


def scratch_root(rt: Runtime, db: str) -> Path:
    root = rt.policy.resolve(rt.policy.scratch_dir) / db
    make_owned_dir(root.parent, None, 0o755)
    make_owned_dir(root, None, 0o755)
    return root


def discard_scratch(rt: Runtime, db: str, into: Path, port: int | None) -> None:
    """Stop a scratch cluster (pg_ctl, by the PID in its data directory) and delete it, its WAL and its log."""
    LocalCluster(into, port or 0, rt.bin_dir(db), rt.os_user(db)).stop("immediate")
    shutil.rmtree(into, ignore_errors=True)
    shutil.rmtree(into.parent / f".{into.name}.drkit-wal", ignore_errors=True)
    (into.parent / f"{into.name}.log").unlink(missing_ok=True)


def verify_plan(rt: Runtime, db: str, plan: RestorePlan, subject: str) -> VerifyReport:
    """Checksums, scratch restore, checks, teardown.

    The catalog changes only where a copy is found missing or corrupt: that copy is recorded so, and
    the next tier's copy is verified instead (see :func:`drkit.verify.check_stored`).
    """
    require_key(rt, [p.backup for p in plan.pieces])  # a wrong key is refused, never reported as corruption
    t0 = time.monotonic()
    report = VerifyReport(database=db, subject=subject, pieces=[p.backup.id for p in plan.pieces],
                          reaches=plan.reaches, stored_bytes=plan.total_bytes)
    checked, unreadable = check_stored(rt, plan.pieces, report, subject)
    if report.corrupt_pieces or unreadable:
        report.error = stored_error(report.corrupt_pieces, unreadable)
        report.total_seconds = time.monotonic() - t0
        return report
    plan = replace(plan, pieces=tuple(checked))  # restore exactly the copies just checked
    into = scratch_root(rt, db) / f"verify-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    cluster: LocalCluster | None = None
    try:
        res = restore(rt, db, into=into, plan=plan, keep_running=True)
        assert res.port is not None  # a PostgreSQL restore always runs on a port of its own
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
        discard_scratch(rt, db, into, cluster.port if cluster else None)
    report.total_seconds = time.monotonic() - t0
    return report


def verify_backup(rt: Runtime, db: str, backup_id: str | None = None, *, actor: str = "drkit-verify") -> VerifyReport:
    """Verify one backup (default: the newest full) and record verified/corrupt."""
    rt.policy.database(db)
    backups = rt.catalog.list_backups(db)
    target = verify_target(rt, db, backups, backup_id)
    plan = POSTGRES_CHAIN.plan_for_backup(target, backups, rt.catalog.all_copies(db),
                                              tier_order=rt.tier_order)
    report = verify_plan(rt, db, plan, target.id)
    record_verification(rt, db, report, [target], actor)
    return report


def verify_chain(rt: Runtime, db: str, *, actor: str = "drkit-verify") -> VerifyReport:
    """Restore the newest chain (full + diff + logs to the latest point) and check it end to end."""
    rt.policy.database(db)
    backups = rt.catalog.list_backups(db)
    plan = POSTGRES_CHAIN.plan_restore(db, backups, rt.catalog.all_copies(db), target=None,
                                           now=datetime.now(UTC), tier_order=rt.tier_order)
    report = verify_plan(rt, db, plan, f"chain to {plan.reaches.isoformat(timespec='seconds')}")
    pieces = [p.backup for p in plan.pieces]
    if report.passed:
        record_verification(rt, db, report, pieces, actor)
    else:
        # Only pieces whose stored bytes are proven bad are marked corrupt; any other failure is
        # reported (verify_failed) without blaming a particular piece.
        record_verification(rt, db, report, [b for b in pieces if b.id in report.corrupt_pieces], actor)
    return report
