"""What every engine's verification shares: the report, timed checks, the stored-copy check, the backup
a verification proves, and how its outcome is recorded.

An engine's verification (PostgreSQL: :mod:`drkit.engines.postgres.verify`; SQL Server:
:mod:`drkit.engines.sqlserver.verify`) first proves each stored piece's SHA-256 with
:func:`check_stored` (no key needed; a copy found missing or corrupt is recorded so and the next
tier's copy is tried), then restores the plan its own way and runs its checks through :func:`timed`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drkit.binding import stream_context
from drkit.catalog.records import BackupRecord
from drkit.copies import CopyPicker
from drkit.errors import DrkitError, IntegrityError, RestoreError, RestorePlanError, StoreError
from drkit.pipeline import verify_stored
from drkit.plans import RestorePiece
from drkit.runtime import Runtime
from drkit.tiers.naming import DATA_OBJECT
from drkit.tiers.rebuild import write_descriptor


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


def timed(name: str, check: Callable[[], tuple[bool, str]],
          errors: tuple[type[BaseException], ...] = (DrkitError,)) -> CheckResult:
    """Run ``check`` (it returns whether it passed, and what it found) and time it.

    An exception of one of ``errors`` fails the check with its message as the detail (a drkit error's
    message says what to do; a library's is prefixed with its type); any other exception propagates.
    """
    t0 = time.monotonic()
    try:
        ok, detail = check()
    except errors as exc:
        ok, detail = False, str(exc) if isinstance(exc, DrkitError) else f"{type(exc).__name__}: {exc}"
    return CheckResult(name, ok, detail, time.monotonic() - t0)


def check_stored(rt: Runtime, pieces: Sequence[RestorePiece], report: VerifyReport, subject: str
                 ) -> tuple[list[RestorePiece], list[str]]:
    """Check each piece's stored SHA-256 (no key needed), from its first copy that matches.

    The plan's copy is checked first. A copy found missing or corrupt is recorded so
    (:mod:`drkit.copies`) and the next tier's copy is checked: the backup is sound if one copy is. A
    piece is corrupt when every copy tried proved missing or corrupt (a stored copy whose SHA-256
    differs raises :class:`~drkit.errors.IntegrityError` underneath); unreadable when some copy could
    not be read at all (the store failed): nothing is then concluded about the backup. Returns the
    copies that matched, and the unreadable pieces; corrupt pieces go into ``report.corrupt_pieces``.
    """
    picker = CopyPicker(rt, actor="drkit-verify", found_by=f"verification of {subject}")
    checked: list[RestorePiece] = []
    unreadable: list[str] = []
    for piece in pieces:
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


def stored_error(corrupt: Sequence[str], unreadable: Sequence[str]) -> str | None:
    """What :func:`check_stored` found wrong, as the report's error; None when every piece matched."""
    problems = []
    if corrupt:
        problems.append("stored bytes do not match their SHA-256: " + ", ".join(corrupt))
    if unreadable:
        problems.append("no copy could be read: " + ", ".join(unreadable))
    return "; ".join(problems) or None


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


def record_verification(rt: Runtime, db: str, report: VerifyReport, targets: Sequence[BackupRecord],
                        actor: str) -> None:
    """Audit the numbers; mark ``targets`` verified (pass) or corrupt (fail), and rewrite their descriptors."""
    rt.catalog.audit(actor=actor, action="backup.verify", database=db, subject=report.subject,
                     detail=report.summary())
    status = "verified" if report.passed else "corrupt"
    reason = (f"verification restore passed ({report.subject})" if report.passed
              else (report.error or "verification failed")[:500])
    for b in targets:
        if rt.catalog.get(b.id).status != status:
            write_descriptor(rt, rt.catalog.set_status(b.id, status, actor=actor, reason=reason))
