"""Point-in-time restore: execute a RestorePlan into a new data directory and bring it up.

The plan (``drkit.chain``) says what to read; this module reads each piece
through the pipeline (checking its SHA-256 and every chunk's tag on the way),
lays the data directory down, and lets PostgreSQL replay WAL to the target.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drkit.chain import RestorePiece, RestorePlan, plan_restore, plan_restore_to_lsn
from drkit.engines.pgctl import LocalCluster, free_port, make_owned_dir, run_as
from drkit.engines.pgrestore import (
    ExtractStats,
    extract_archive,
    finish_ownership,
    prepare_for_diff,
    reconcile_with_manifest,
    recover,
    write_recovery_config,
)
from drkit.errors import DrkitError, RestoreError
from drkit.lsn import format_lsn
from drkit.pipeline import DecryptingReader
from drkit.runtime import Runtime

StepCallback = Callable[[str, float], None]  # (what is happening, fraction done 0..1)


@dataclass
class RestoreResult:
    plan: RestorePlan
    data_dir: Path
    port: int
    running: bool
    timeline: int | None
    seconds: float
    bytes_read: int
    steps: list[tuple[str, float]] = field(default_factory=list)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"


def make_plan(
    rt: Runtime, db: str, target: datetime | None, now: datetime | None = None, *, target_lsn: int | None = None
) -> RestorePlan:
    """The restore plan for ``db`` to a time, an LSN, or (neither) the latest point."""
    rt.policy.database(db)
    backups = rt.catalog.list_backups(db)
    copies = rt.catalog.all_copies(db)
    if target_lsn is not None:
        return plan_restore_to_lsn(db, backups, copies, target_lsn=target_lsn, tier_order=rt.tier_order)
    return plan_restore(db, backups, copies, target=target, now=now or datetime.now(UTC),
                        tier_order=rt.tier_order)


def estimated_seconds(rt: Runtime, db: str, plan: RestorePlan) -> tuple[float, str]:
    """Estimated restore time from the last verification's measured throughput (else an assumed 100 MiB/s)."""
    for event in reversed(rt.catalog.audit_events(database=db, action="backup.verify")):
        rate = float(event.detail.get("stored_throughput_mib_s") or 0)
        if rate > 0:
            return plan.total_bytes / 2**20 / rate, f"at {rate:.0f} MiB/s measured by the last verification"
    return plan.total_bytes / 2**20 / 100, "at an assumed 100 MiB/s (no verification measured yet)"


def _read_piece(
    rt: Runtime, piece: RestorePiece, target: Path, stats: ExtractStats, skip_wal_before: str | None = None
) -> dict[str, Any]:
    with rt.store(piece.tier).reader(piece.store_key) as src:
        reader = DecryptingReader(src, rt.key, expected_sha256=piece.sha256)
        manifest = extract_archive(reader, target, stats, skip_wal_before=skip_wal_before)
        while reader.read(1 << 20):
            pass  # read to the end so the final tag and the SHA-256 are checked
    return manifest


def restore(
    rt: Runtime,
    db: str,
    *,
    into: Path,
    target: datetime | None = None,
    plan: RestorePlan | None = None,
    port: int | None = None,
    keep_running: bool = False,
    on_step: StepCallback | None = None,
    recovery_timeout: float = 1800,
) -> RestoreResult:
    """Restore ``db`` into the new directory ``into``; the cluster is stopped at the end unless kept running."""
    t0 = time.monotonic()
    plan = plan or make_plan(rt, db, target)
    into = into.resolve()
    if into.exists() and any(into.iterdir()):
        raise RestoreError(f"{into} is not empty; restore into a new directory (nothing was changed)")
    os_user = rt.os_user(db)
    port = port or free_port()
    steps: list[tuple[str, float]] = []

    def step(what: str, frac: float) -> None:
        steps.append((what, round(time.monotonic() - t0, 3)))
        if on_step:
            on_step(what, frac)

    make_owned_dir(into, os_user)
    if run_as(os_user, ["test", "-w", str(into)], check=False).returncode != 0:
        into.rmdir()
        raise RestoreError(f"the {os_user} OS user cannot write {into}: make its parent directories "
                           "traversable (chmod o+x) or restore somewhere else (nothing was changed)")
    wal_root = into.parent / f".{into.name}.drkit-wal"
    shutil.rmtree(wal_root, ignore_errors=True)
    make_owned_dir(wal_root, os_user, 0o750)
    cluster = LocalCluster(into, port, rt.bin_dir(db), os_user, log_file=into.parent / f"{into.name}.log")
    stats = ExtractStats()
    n = len(plan.pieces)
    try:
        step(f"full {plan.full.backup.id} from {plan.full.tier}", 0.0)
        full_manifest = _read_piece(rt, plan.full, into, stats)
        if plan.diff is not None:
            step(f"diff {plan.diff.backup.id} from {plan.diff.tier}", 1 / n)
            prepare_for_diff(into)
            diff_manifest = _read_piece(rt, plan.diff, into, stats)
            reconcile_with_manifest(into, full_manifest, diff_manifest)
        base = (plan.diff or plan.full).backup
        for i, piece in enumerate(plan.logs):
            step(f"log {piece.backup.id} from {piece.tier}", (i + 2) / n)
            _read_piece(rt, piece, wal_root, stats, skip_wal_before=base.start_wal)
        write_recovery_config(
            into, port=port, wal_dir=wal_root / "pg_wal",
            target_time=plan.target_time if plan.recovery == "time" else None,
            target_lsn=format_lsn(plan.target_lsn) if plan.recovery == "lsn" and plan.target_lsn else None,
            immediate=plan.recovery == "immediate")
        finish_ownership(into, os_user)
        finish_ownership(wal_root, os_user)
        step("recovery", 0.9)
        info = recover(cluster, timeout=recovery_timeout)
        step("recovered", 1.0)
    except BaseException as exc:
        cluster.stop("immediate")
        shutil.rmtree(wal_root, ignore_errors=True)
        if isinstance(exc, DrkitError):
            raise type(exc)(f"{exc} (the partial restore is left in {into} for inspection)") from None
        raise
    shutil.rmtree(wal_root, ignore_errors=True)
    if not keep_running:
        cluster.stop()
    return RestoreResult(plan=plan, data_dir=into, port=port, running=keep_running,
                         timeline=info.get("timeline"), seconds=time.monotonic() - t0,
                         bytes_read=stats.bytes, steps=steps)
