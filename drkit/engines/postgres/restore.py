"""Point-in-time restore: execute a RestorePlan into a new data directory and bring it up.

The plan (``drkit.engines.postgres.chain``) says what to read; this module reads each piece
through the pipeline (checking its SHA-256 and every chunk's tag on the way),
lays the data directory down, and lets PostgreSQL replay WAL to the target.

Each piece is read from the plan's copy if it is there and sound, else from the
next tier's complete copy (:mod:`drkit.copies`, which records the bad copy
``missing`` or ``corrupt``); the fallback is a step and a warning of the result.
A copy that fails after extraction began has written into the data directory,
so that lay-down is discarded and started again without it.
"""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo

from drkit.binding import require_key, stream_context
from drkit.copies import CopyPicker
from drkit.engines.postgres.chain_model import POSTGRES_CHAIN
from drkit.engines.postgres.lsn import format_lsn
from drkit.engines.postgres.manifest import check_manifest
from drkit.engines.postgres.pgctl import LocalCluster, free_port, run_as
from drkit.engines.postgres.pgrestore import (
    ExtractStats,
    extract_archive,
    finish_ownership,
    prepare_for_diff,
    reconcile_with_manifest,
    recover,
    socket_path_problem,
    write_recovery_config,
)
from drkit.errors import DrkitError, EngineError, IntegrityError, RestoreError, StoreError
from drkit.pipeline import DecryptingReader
from drkit.plans import RestorePiece, RestorePlan, RestoreResult
from drkit.restore import make_plan
from drkit.runtime import Runtime
from drkit.safedir import claim_empty_dir, clear_file_name, empty_dir, fresh_private_dir, trusted_path
from drkit.tiers.naming import DATA_OBJECT

StepCallback = Callable[[str, float], None]  # (what is happening, fraction done 0..1)


def connect_hint(data_dir: Path | str, port: int) -> str:
    """How an operator (root or the OS user) connects to a restored cluster."""
    return f"psql -h {shlex.quote(str(data_dir))} -p {port} -U postgres"


def _read_piece(
    rt: Runtime, piece: RestorePiece, target: Path, stats: ExtractStats, skip_wal_before: str | None = None
) -> dict[str, Any]:
    """Extract one copy of a piece (the tier and key in ``piece``) into ``target``; returns its manifest."""
    with rt.store(piece.tier).reader(piece.store_key) as src:
        reader = DecryptingReader(src, rt.key, expected_sha256=piece.sha256,
                                  expected_context=stream_context(piece.backup, DATA_OBJECT))
        manifest = extract_archive(reader, target, stats, skip_wal_before=skip_wal_before)
        while reader.read(1 << 20):
            pass  # read to the end so the final tag and the SHA-256 are checked
    return manifest


class _CopyFailed(Exception):
    """A copy failed after its extraction began: the lay-down must start again (internal)."""


def _extract(rt: Runtime, picker: CopyPicker, piece: RestorePiece, target: Path, stats: ExtractStats,
             step: StepCallback, frac: float, skip_wal_before: str | None = None) -> dict[str, Any]:
    """Extract ``piece`` from its first good copy; _CopyFailed when that copy fails mid-way.

    Every copy found bad on the way is a step the operator sees ("warning: ...").
    """
    seen = len(picker.warnings)
    try:
        copy = picker.pick(piece)  # RestoreError naming every copy tried when none is left
    finally:
        for line in picker.warnings[seen:]:
            step(f"warning: {line}", frac)
    step(f"{piece.role} {piece.backup.id} from {copy.tier}", frac)
    try:
        manifest = _read_piece(rt, copy, target, stats, skip_wal_before)
    except (IntegrityError, StoreError) as exc:
        picker.failed(copy, exc)
        step(f"warning: {picker.warnings[-1]}", frac)
        raise _CopyFailed from None
    check_manifest(piece.backup, manifest)  # against the catalog's record: the same for every copy
    return manifest


def _lay_down(rt: Runtime, plan: RestorePlan, into: Path, wal_root: Path, stats: ExtractStats,
              picker: CopyPicker, step: StepCallback) -> None:
    """The full, the diff (reconciled with it) and the logs' WAL, each from its first good copy.

    When a copy fails mid-way, everything laid down so far is discarded and the lay-down starts again;
    the failed copy is excluded, so this ends: with every piece read, or RestoreError.
    """
    n = len(plan.pieces)
    while True:
        try:
            full_manifest = _extract(rt, picker, plan.full, into, stats, step, 0.0)
            if plan.diff is not None:
                prepare_for_diff(into)
                diff_manifest = _extract(rt, picker, plan.diff, into, stats, step, 1 / n)
                reconcile_with_manifest(into, full_manifest, diff_manifest)
            base = (plan.diff or plan.full).backup
            for i, piece in enumerate(plan.logs):
                _extract(rt, picker, piece, wal_root, stats, step, (i + 2) / n, skip_wal_before=base.start_wal)
            return
        except _CopyFailed:
            step("discarding what was laid down (a copy failed mid-way); starting again from the next copy", 0.0)
            empty_dir(into)  # through descriptors: never a link the OS user planted
            empty_dir(wal_root)
            stats.files = stats.pages = stats.bytes = 0


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
    plan = plan or make_plan(rt, db, POSTGRES_CHAIN, target)
    require_key(rt, [p.backup for p in plan.pieces])
    try:
        into = trusted_path(into)
    except EngineError as exc:
        raise RestoreError(f"{exc} (nothing was changed)") from None
    os_user = rt.os_user(db)
    port = port or free_port()
    problem = socket_path_problem(into, port)
    if problem:
        raise RestoreError(f"{problem} (nothing was changed)")
    steps: list[tuple[str, float]] = []

    def step(what: str, frac: float) -> None:
        steps.append((what, round(time.monotonic() - t0, 3)))
        if on_step:
            on_step(what, frac)

    # Root lays everything down in directories only root can use (the OS user may be able to write
    # into's parent) and hands the finished tree over at the end: no link it plants is ever followed.
    try:
        claimed = claim_empty_dir(into)
    except EngineError as exc:
        raise RestoreError(f"{exc} (nothing was changed)") from None
    if not claimed:
        raise RestoreError(f"{into} is not empty; restore into a new directory (nothing was changed)")
    if run_as(os_user, ["test", "-x", str(into.parent)], check=False).returncode != 0:
        into.rmdir()
        raise RestoreError(f"the {os_user} OS user cannot write {into}: make its parent directories "
                           "traversable (chmod o+x) or restore somewhere else (nothing was changed)")
    wal_root = into.parent / f".{into.name}.drkit-wal"
    log_file = into.parent / f"{into.name}.log"
    try:
        fresh_private_dir(wal_root)
        clear_file_name(log_file)
    except (EngineError, OSError) as exc:
        into.rmdir()
        raise RestoreError(f"cannot prepare the WAL directory and log beside {into}: {exc}") from None
    cluster = LocalCluster(into, port, rt.bin_dir(db), os_user, log_file=log_file, socket_dir=into)
    stats = ExtractStats()
    picker = CopyPicker(rt, actor="drkit-restore", found_by=f"restore of {db} into {into}")
    try:
        _lay_down(rt, plan, into, wal_root, stats, picker, step)
        write_recovery_config(
            into, port=port, wal_dir=wal_root / "pg_wal",
            target_time=plan.target_time if plan.recovery == "time" else None,
            target_lsn=format_lsn(plan.target_lsn) if plan.recovery == "lsn" and plan.target_lsn else None,
            immediate=plan.recovery == "immediate", os_user=os_user)
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
    return RestoreResult(plan=plan, location=str(into), port=port, running=keep_running,
                         connect=connect_hint(into, port),
                         timeline=info.get("timeline"), seconds=time.monotonic() - t0,
                         bytes_read=stats.bytes, steps=steps, warnings=picker.warnings,
                         read_from=dict(picker.read_from))


def restored_dsn(result: RestoreResult, dbname: str = "postgres") -> str:
    """A conninfo string for a restored cluster: through the Unix socket in its data directory (it listens on
    no TCP address)."""
    return make_conninfo(host=result.location, port=str(result.port), user="postgres", dbname=dbname)
