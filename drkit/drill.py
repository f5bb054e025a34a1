"""DR drills, engine-neutral and pure: what a drill measured, whether it met the policy's targets, its report.

A drill restores the newest restorable chain to its newest point into a throwaway place, checks it the
way a verification restore does, and measures two figures (``flows/drill.py`` runs it):

* **RTO**: from the drill's start to a writable, validated copy (restore done and every check passed);
* **RPO**: from the data point the restore reached to the drill's start, the data a loss at that
  moment would have cost.

Each is compared with the database's ``rto_target`` / ``rpo_target``. The catalog's audit records
(``drill.completed``, ``drill.failed``) carry the figures the metrics exporter reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from drkit.errors import DrkitError, safe_summary
from drkit.verify import CheckResult

COMPLETED = "drill.completed"
FAILED = "drill.failed"
EVENT_MISSED = "drill_missed"
"""The notification event (policy ``notifications``) sent when a drill misses a target."""
EVENT_FAILED = "drill_failed"
"""The notification event sent when a drill could not restore or validate a copy."""


def fmt_seconds(seconds: float) -> str:
    """``42.1 s``, ``12 min 5 s``, ``3 h 2 min``: a duration as a report line says it."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


@dataclass(frozen=True)
class DrillResult:
    """One drill's measurements against the policy's targets."""

    database: str
    backup_id: str
    """The full backup the restored chain starts from."""
    pieces: tuple[str, ...]
    """Every backup the restore read, in order."""
    location: str
    """Where the throwaway copy was restored (removed after the drill)."""
    started: datetime
    writable_at: datetime
    """When the restored copy was recovered and took writes."""
    validated_at: datetime
    """When every validation check had passed."""
    reached: datetime
    """The newest data point the restore reached."""
    rto_target: timedelta
    rpo_target: timedelta
    checks: tuple[CheckResult, ...] = ()

    @property
    def rto_seconds(self) -> float:
        return (self.validated_at - self.started).total_seconds()

    @property
    def rpo_seconds(self) -> float:
        return max(0.0, (self.started - self.reached).total_seconds())

    @property
    def rto_met(self) -> bool:
        return self.rto_seconds <= self.rto_target.total_seconds()

    @property
    def rpo_met(self) -> bool:
        return self.rpo_seconds <= self.rpo_target.total_seconds()

    @property
    def met(self) -> bool:
        return self.rto_met and self.rpo_met

    @property
    def reasons(self) -> list[str]:
        """Why the drill missed (empty when it met both targets)."""
        out = []
        if not self.rto_met:
            out.append(f"RTO {fmt_seconds(self.rto_seconds)} is above the target of "
                       f"{fmt_seconds(self.rto_target.total_seconds())} (rto_target)")
        if not self.rpo_met:
            out.append(f"RPO {fmt_seconds(self.rpo_seconds)} is above the target of "
                       f"{fmt_seconds(self.rpo_target.total_seconds())} (rpo_target): the newest restorable "
                       f"point was {self.reached.isoformat(timespec='seconds')}")
        return out

    def audit_detail(self) -> dict[str, Any]:
        """The ``drill.completed`` audit detail (the metrics exporter reads these keys)."""
        return {"rto_seconds": round(self.rto_seconds, 3), "rpo_seconds": round(self.rpo_seconds, 3),
                "rto_target_seconds": self.rto_target.total_seconds(),
                "rpo_target_seconds": self.rpo_target.total_seconds(),
                "met": self.met, "backup_id": self.backup_id, "reached": self.reached.isoformat()}

    def summary(self) -> dict[str, Any]:
        """What the flow returns and ``drkit drill`` prints: the audit figures and a little more."""
        return {**self.audit_detail(), "database": self.database, "pieces": list(self.pieces),
                "location": self.location, "started": self.started.isoformat(),
                "writable_seconds": round((self.writable_at - self.started).total_seconds(), 3),
                "rto_met": self.rto_met, "rpo_met": self.rpo_met, "reasons": self.reasons,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail[:500]} for c in self.checks]}

    def markdown(self) -> str:
        verdict = "MET" if self.met else "MISSED"
        lines = [f"# DR drill of {self.database}: targets **{verdict}**", ""]
        lines += [f"**Missed:** {r}" for r in self.reasons] + ([""] if self.reasons else [])
        lines += ["| figure | measured | target | |", "|---|---|---|---|",
                  f"| RTO (start to a writable, validated copy) | {fmt_seconds(self.rto_seconds)} | "
                  f"{fmt_seconds(self.rto_target.total_seconds())} | {'ok' if self.rto_met else 'MISSED'} |",
                  f"| RPO (data a loss at the start would cost) | {fmt_seconds(self.rpo_seconds)} | "
                  f"{fmt_seconds(self.rpo_target.total_seconds())} | {'ok' if self.rpo_met else 'MISSED'} |",
                  "",
                  f"* started: {self.started.isoformat(timespec='seconds')}",
                  f"* writable after {fmt_seconds((self.writable_at - self.started).total_seconds())}, "
                  f"validated after {fmt_seconds(self.rto_seconds)}",
                  f"* reached: {self.reached.isoformat(timespec='seconds')}",
                  f"* chain: {', '.join(self.pieces)} (full {self.backup_id})",
                  f"* restored into `{self.location}`, removed after the drill"]
        if self.checks:
            lines += ["", "| validation | result | detail |", "|---|---|---|"]
            lines += [f"| {c.name} | {'ok' if c.ok else 'FAILED'} | {_cell(c.detail)} |" for c in self.checks]
        return "\n".join(lines)


def failure_text(error: BaseException | str) -> str:
    """What the audit, the report and the notification say of a failed drill: a drkit error's own message;
    of any other exception only its class and where it was raised (a library's message may hold a secret,
    and the catalog, artifacts and notifications hold none). The run's log keeps the whole traceback."""
    if isinstance(error, DrkitError):
        return str(error)[:1000]
    return safe_summary(error) if isinstance(error, BaseException) else error[:1000]


def failed_detail(error: BaseException | str) -> dict[str, Any]:
    """The ``drill.failed`` audit detail."""
    return {"error": failure_text(error)}


def failed_markdown(database: str, started: datetime, error: BaseException | str,
                    checks: Sequence[CheckResult] = ()) -> str:
    """The report of a drill that produced no writable, validated copy."""
    lines = [f"# DR drill of {database}: **FAILED**", "",
             f"**Error:** {failure_text(error)}", "",
             f"* started: {started.isoformat(timespec='seconds')}",
             "* no writable, validated copy: RTO and RPO were not measured",
             "* the scratch copy was removed after the drill"]
    if checks:
        lines += ["", "| validation | result | detail |", "|---|---|---|"]
        lines += [f"| {c.name} | {'ok' if c.ok else 'FAILED'} | {_cell(c.detail)} |" for c in checks]
    return "\n".join(lines)


def failed_checks_error(location: str, checks: Sequence[CheckResult]) -> str | None:
    """The error of a drill whose restored copy failed a validation check; None when every one passed."""
    failed = [c for c in checks if not c.ok]
    if not failed:
        return None
    return (f"the copy restored into {location} failed validation: "
            + "; ".join(f"{c.name}: {c.detail[:200]}" for c in failed))


def notice(result: DrillResult) -> tuple[str, str]:
    """(subject, body) of the notification a missed drill sends."""
    subject = f"drkit: the DR drill of {result.database} missed its target"
    body = (f"database: {result.database}\n" + "\n".join(result.reasons)
            + f"\nRTO {fmt_seconds(result.rto_seconds)} (target {fmt_seconds(result.rto_target.total_seconds())}),"
            f" RPO {fmt_seconds(result.rpo_seconds)} (target {fmt_seconds(result.rpo_target.total_seconds())})\n"
            "see the README's 'DR drills' section for what to do")
    return subject, body


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:300]
