"""The ``drkit`` command: operators' entry point.

Commands that change something run as Prefect flows, so they show in the UI
with their artifacts; read-only commands (backups, restore-plan, status,
check) read the catalog and the server directly. ``--json`` output is stable:
see README "JSON output".

Output contract (README "Exit status"): the result on stdout; an error is one
line ``error: ...`` on stderr with exit status 2 (bad input) or 1 (the
operation failed), never a traceback (``--verbose`` adds it). Prefect's own
console log lines are off unless ``--verbose``: flow runs still log to the
Prefect API, so the UI shows them. Nothing typed by the user or carried by
an error is read as rich markup: both consoles have markup and emoji codes off.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from uuid import UUID

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup
from typer.exceptions import TyperException

from drkit.config import load_policy
from drkit.engines import chain_for, open_engine
from drkit.errors import ConfigError, DrkitError, EncryptionKeyError, VerificationError
from drkit.runtime import Runtime

if TYPE_CHECKING:
    from drkit.catalog_check import CheckReport


class _Commands(TyperGroup):
    """The top-level group: the last-resort guard around every command (and its subcommands).

    Any exception a command lets through becomes one ``error:`` line and an exit status, as in `_guard`.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # exits, Ctrl-C and usage errors: typer's own
            raise
        except Exception as exc:
            raise typer.Exit(_report(exc)) from None


app = typer.Typer(cls=_Commands, no_args_is_help=True, add_completion=False,
                  help="Database backup and disaster recovery.")
console = Console(markup=False, emoji=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)
T = TypeVar("T")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="policy file (default $DRKIT_CONFIG, ./drkit.yaml)")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v",
                                          help="also show Prefect's log lines and tracebacks on stderr")]
_state: dict[str, Any] = {"config": None, "verbose": False}


@app.callback()
def main(ctx: typer.Context, config: ConfigOpt = None, verbose: VerboseOpt = False) -> None:
    _state["config"] = str(config) if config else None
    _state["verbose"] = verbose
    # `serve` is a service, its log is its output; `demo` shows the runs as they go and starts a Prefect
    # server that must not inherit the quiet setting (its log file is kept).
    if not verbose and ctx.invoked_subcommand not in ("serve", "demo"):
        ctx.call_on_close(_quiet_prefect_console())


# -- output and errors ---------------------------------------------------------------------------------

# Prefect's stderr handlers (logging.yml: `console` on the root logger, `debug` on prefect._internal), raised
# above everything they would print. Set in the environment before Prefect is first imported (a fresh
# `drkit` process); the `api` handler that sends run logs to the server is not touched.
_QUIET_PREFECT_ENV = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
                      "PREFECT_LOGGING_HANDLERS_DEBUG_LEVEL": "CRITICAL"}


def _quiet_prefect_console() -> Callable[[], None]:
    """Turn Prefect's console logging off for this command; returns the undo (the environment and, when
    Prefect was already imported and configured in this process, its stream handlers' levels)."""
    saved_env = {k: os.environ.get(k) for k in _QUIET_PREFECT_ENV}
    for k, v in _QUIET_PREFECT_ENV.items():
        os.environ.setdefault(k, v)
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    handlers = {h for lg in loggers for h in lg.handlers
                if isinstance(h, logging.StreamHandler) and type(h).__module__.startswith("prefect.")}
    saved_levels = [(h, h.level) for h in handlers]
    for h in handlers:
        h.setLevel(logging.CRITICAL + 1)
    # Prefect's API log shipper writes "--- Error logging to API ---" and the error, with no final newline,
    # straight to stderr while the API is unreachable, unless logging's own error reports are off; they
    # would be glued to the command's one error line.
    # Not undone: the shipper flushes at interpreter exit, after the command has ended.
    logging.raiseExceptions = False

    def undo() -> None:
        for h, level in saved_levels:
            h.setLevel(level)
        for k, old in saved_env.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old
    return undo


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _error(message: str) -> None:
    """One ``error: ...`` line on stderr; the message is plain text, never markup."""
    err.print(Text.assemble(("error:", "red"), " ", _one_line(message)))


def _key_unusable() -> bool:
    """True when the configured backup key is missing or malformed (bad input, exit 2), as opposed to a
    well-formed key that is not the one a backup was written with (a failed operation, exit 1)."""
    from drkit.pipeline import EncryptionKey
    try:
        EncryptionKey.from_env(load_policy(_state["config"]).encryption.key_env)
    except DrkitError:
        return True
    return False


def _prefect_unreachable(exc: BaseException) -> str | None:
    """The one-line message for a connection to the Prefect API that failed (``exc`` or what it was raised
    from, as in Prefect's "Failed to reach API"), else None."""
    if "httpx" not in sys.modules or "prefect" not in sys.modules:  # no API was called
        return None
    import httpx
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, httpx.TransportError):
        cause = cause.__cause__
    if not isinstance(cause, httpx.TransportError):
        return None
    try:
        url = cause.request.url
    except RuntimeError:  # no request attached
        return None
    from flows.approvals import api_url
    api = api_url()
    where = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
    if not api or not api.startswith(where):
        return None
    return (f"cannot reach the Prefect API at {where}: {type(cause).__name__}: {str(cause) or 'no answer'}; "
            "start the Prefect server, or point PREFECT_API_URL at a running one")


def _report(exc: Exception) -> int:
    """Print ``exc`` as one error line (and its traceback with --verbose); return the exit status."""
    if _state.get("verbose"):
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, ConfigError):
        code, message = 2, str(exc)
    elif isinstance(exc, EncryptionKeyError):
        code, message = (2 if _key_unusable() else 1), str(exc)
    elif isinstance(exc, DrkitError):
        code, message = 1, str(exc)
    elif (unreachable := _prefect_unreachable(exc)) is not None:
        code, message = 1, unreachable
    else:
        code, message = 1, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    _error(message)
    return code


def _config_path() -> str:
    from drkit.config import find_config
    return str(find_config(_state["config"]).resolve())


def _guard(fn: Callable[[], T]) -> T:
    """Run a command's body: any error becomes one ``error:`` line and exit status 2 (bad input) or 1."""
    try:
        return fn()
    except (typer.Exit, typer.Abort, TyperException):
        raise
    except Exception as exc:
        raise typer.Exit(_report(exc)) from None


def _runtime() -> Runtime:
    return Runtime(load_policy(_state["config"]))


def parse_time(value: str, option: str = "--to") -> datetime:
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{option} {value!r} is not a timestamp; use ISO 8601, e.g. 2026-11-28T10:00:03Z") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _human_bytes(n: int) -> str:
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if f < 1024 or unit == "TiB":
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return str(n)


# -- prerequisites -------------------------------------------------------------------------------------


@app.command()
def check(db: str) -> None:
    """Prerequisites for backing up DB, each with its fix. Exit 1 if any is missing."""
    def run() -> bool:
        rt = _runtime()
        items = open_engine(rt, db).check()
        table = Table(title=f"prerequisites of {db}")
        for col in ("", "check", "now", "needs", "fix"):
            table.add_column(col)
        for i in items:
            table.add_row("✔" if i.ok else "✘", i.name, i.current, i.expected, "" if i.ok else i.fix)
        console.print(table)
        return all(i.ok for i in items)
    if not _guard(run):
        raise typer.Exit(1)


@app.command()
def setup(db: str) -> None:
    """Apply what can be applied (ALTER SYSTEM, WAL spool, archive_command) and say if a restart is needed."""
    def run() -> None:
        res = open_engine(_runtime(), db).setup()
        for a in res.applied:
            console.print(f"applied: {a}")
        if not res.applied:
            console.print("nothing to change")
        if res.restart_needed:
            console.print(Text(f"restart PostgreSQL for {db} to finish (a setting is pending restart)", "yellow"))
        for i in res.remaining:
            console.print(Text.assemble(("still missing:", "red"), f" {i.name}: {i.fix}"))
    _guard(run)


# -- backups --------------------------------------------------------------------------------------------


@app.command()
def backup(kind: Annotated[str, typer.Argument(help="full, diff or log")], db: str) -> None:
    """Run the backup flow for DB and print the backup id."""
    if kind not in ("full", "diff", "log"):
        _error(f"backup kind must be full, diff or log, not {kind!r}")
        raise typer.Exit(2)

    def run() -> str | None:
        rt = _runtime()
        rt.policy.database(db)
        _ = rt.key
        from flows.backup import BACKUP_FLOWS
        result: str | None = BACKUP_FLOWS[kind](db=db, config=_config_path())
        return result
    bid = _guard(run)
    if bid is None:
        err.print("no new WAL since the last log backup; nothing shipped")
        return
    console.print(bid)
    status = _guard(lambda: _runtime().catalog.get(bid).status)
    if status == "corrupt":
        _error(f"backup {bid} failed its verification restore and is marked corrupt; "
               "see the verify report in the Prefect UI")
        raise typer.Exit(1)


@app.command()
def backups(db: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The catalog for DB, newest first."""
    def run() -> None:
        rt = _runtime()
        rt.policy.database(db)
        rows = rt.catalog.list_backups(db)
        if as_json:
            _print_json([{
                "id": b.id, "kind": b.kind, "status": b.status, "base": b.base_id, "timeline": b.timeline,
                "start_wal": b.start_wal, "end_wal": b.end_wal, "start_position": b.start_lsn,
                "end_position": b.end_lsn, "started_at": b.started_at,
                "finished_at": b.finished_at, "end_time": b.end_time, "raw_bytes": b.raw_bytes,
                "stored_bytes": b.stored_bytes, "sha256": b.sha256, "error": b.error,
                "copies": [{"tier": c.tier, "status": c.status} for c in rt.catalog.copies(b.id)],
            } for b in rows])
            return
        table = Table(title=f"backups of {db}")
        for col in ("id", "kind", "status", "covers", "covers until", "stored", "copies"):
            table.add_column(col)
        for b in rows:
            tiers = ",".join(c.tier for c in rt.catalog.copies(b.id) if c.status == "complete")
            table.add_row(b.id, b.kind, b.status, _span(b, short=True),
                          b.end_time.isoformat(timespec="seconds") if b.end_time else (b.error or "")[:60],
                          _human_bytes(b.stored_bytes), tiers)
        console.print(table)
    _guard(run)


# -- restore --------------------------------------------------------------------------------------------


def _span(b: Any, short: bool = False) -> str:
    """What a backup covers: its WAL segments (PostgreSQL), else its log positions."""
    if b.start_wal or b.end_wal:
        return f"{b.start_wal or ''}..{(b.end_wal or '')[-8:] if short else b.end_wal or ''}"
    if b.start_lsn is not None or b.end_lsn is not None:
        return f"{'' if b.start_lsn is None else b.start_lsn}..{'' if b.end_lsn is None else b.end_lsn}"
    return ""


@app.command("restore-plan")
def restore_plan(db: str, to: Annotated[str | None, typer.Option("--to", help="ISO 8601 timestamp")] = None,
                 lsn: Annotated[str | None, typer.Option("--lsn", help="a WAL position like 0/3000028")] = None,
                 as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What a restore to TIME or LSN (default: latest) would read, from where, and how long. Touches nothing."""
    from drkit.restore import estimated_seconds

    def run() -> None:
        rt = _runtime()
        plan = open_engine(rt, db).plan_restore(parse_time(to) if to else None, position=lsn)
        seconds, basis = estimated_seconds(rt, db, plan)
        if as_json:
            _print_json({"database": db, "target": plan.target_time, "target_lsn": lsn, "recovery": plan.recovery,
                         "reaches": plan.reaches, "total_bytes": plan.total_bytes,
                         "estimated_seconds": round(seconds, 1), "estimate_basis": basis,
                         "pieces": [{"backup": p.backup.id, "kind": p.role, "tier": p.tier,
                                     "bytes": p.stored_bytes, "wal": [p.backup.start_wal, p.backup.end_wal],
                                     "positions": [p.backup.start_lsn, p.backup.end_lsn]}
                                    for p in plan.pieces],
                         "reasons": list(plan.reasons)})
            return
        table = Table(title=f"restore plan for {db} → {to or 'latest'} (recovery: {plan.recovery})")
        for col in ("piece", "backup", "tier", "bytes", "covers"):
            table.add_column(col)
        for p in plan.pieces:
            table.add_row(p.role, p.backup.id, p.tier, _human_bytes(p.stored_bytes), _span(p.backup))
        console.print(table)
        for r in plan.reasons:
            console.print(f"• {r}")
        console.print(f"{_human_bytes(plan.total_bytes)} to read; about {seconds:.0f} s {basis}")
    _guard(run)


@app.command()
def restore(
    db: str,
    into: Annotated[str, typer.Option("--into", help="PostgreSQL: a new, empty directory; SQL Server: a new "
                                                     "database name")],
    to: Annotated[str | None, typer.Option("--to", help="ISO 8601 timestamp")] = None,
    lsn: Annotated[str | None, typer.Option("--lsn", help="a WAL position like 0/3000028")] = None,
    latest: Annotated[bool, typer.Option("--latest")] = False,
    port: Annotated[int | None, typer.Option("--port")] = None,
    keep_running: Annotated[bool, typer.Option("--keep-running")] = False,
) -> None:
    """Restore DB (full + diff + logs) into DIR, to TIME or the latest point; runs the restore flow."""
    if sum(map(bool, (to, lsn, latest))) != 1:
        _error("give exactly one of --to TIME, --lsn LSN or --latest")
        raise typer.Exit(2)

    def run() -> dict[str, Any]:
        target = parse_time(to) if to else None
        open_engine(_runtime(), db).plan_restore(target, position=lsn)  # fail fast, before a flow run
        from flows.restore import restore_point_in_time
        result: dict[str, Any] = restore_point_in_time(
            db=db, into=into, target=target, target_lsn=lsn, port=port,
            keep_running=keep_running, config=_config_path())
        return result
    out = _guard(run)
    for line in out.get("warnings") or []:  # a copy found missing or corrupt: read from the next tier
        err.print(f"warning: {line}")
    where = f"running; to connect: {out['connect']}" if out["running"] else "stopped"
    console.print(f"restored {db} to {out['reaches']} in {out['seconds']} s into {out['into']} ({where})")


@app.command()
def verify(
    db: str,
    backup_id: Annotated[str | None, typer.Option("--backup", help="default: the newest full")] = None,
    chain: Annotated[bool, typer.Option("--chain", help="the newest chain end to end")] = False,
) -> None:
    """Verification restore into a scratch cluster, with amcheck, visibility and SQL checks. Exit 1 on failure."""
    def run() -> dict[str, Any]:
        rt = _runtime()
        rt.policy.database(db)
        from flows.verify import verify_backup_flow, verify_latest_chain
        state = (verify_latest_chain(db=db, config=_config_path(), return_state=True) if chain else
                 verify_backup_flow(db=db, backup_id=backup_id, config=_config_path(), return_state=True))
        if state.is_failed():
            raise VerificationError(state.message or "verification failed")
        result: dict[str, Any] = state.result()
        return result
    summary = _guard(run)
    table = Table(title=f"verification of {summary['subject']}: PASS")
    for col in ("check", "result", "seconds", "detail"):
        table.add_column(col)
    for c in summary["checks"]:
        table.add_row(c["name"], "ok" if c["ok"] else "FAILED", str(c["seconds"]), c["detail"][:80])
    console.print(table)


@app.command()
def recover(
    db: str,
    before: Annotated[str, typer.Option("--before", help="ISO 8601: the last good moment")],
    into: Annotated[Path | None, typer.Option("--into")] = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
) -> None:
    """Corruption recovery: restore to BEFORE on a standby, validate, wait for approval, switch."""
    def run() -> dict[str, Any]:
        target = parse_time(before, "--before")
        engine = open_engine(_runtime(), db)
        if not engine.features.standby_restore:
            raise ConfigError(f"corruption recovery switches clients to a restored server on this host, which "
                              f"{db!r}'s engine cannot provide; restore to a new database with `drkit restore "
                              f"{db} --into NAME --to TIME` and repoint clients yourself")
        engine.plan_restore(target)
        from flows.corruption import recover_from_corruption
        result: dict[str, Any] = recover_from_corruption(
            db=db, before=target, into=str(into.resolve()) if into else None, port=port, config=_config_path())
        return result
    out = _guard(run)
    console.print(("switched" if out["switched"] else "not switched") + f" (by {out['approver']}: {out['reason']})")


retention_app = typer.Typer(no_args_is_help=True, help="Tiered retention: plan and apply.")
hold_app = typer.Typer(no_args_is_help=True, help="Legal holds: a held backup is never deleted.")
catalog_app = typer.Typer(no_args_is_help=True, help="The catalog itself.")
app.add_typer(retention_app, name="retention")
app.add_typer(hold_app, name="hold")
app.add_typer(catalog_app, name="catalog")


@retention_app.command("plan")
def retention_plan(now: Annotated[str | None, typer.Option("--now", help="rehearse at this time")] = None,
                   as_json: Annotated[bool, typer.Option("--json")] = False,
                   all_keeps: Annotated[bool, typer.Option("--all", help="list routine keeps too")] = False) -> None:
    """The actions retention would take now (or at --now), each with its reason. Changes nothing."""
    from drkit.tiers.moves import plan_retention

    def run() -> list[Any]:
        rt = _runtime()
        return plan_retention(rt, parse_time(now, "--now") if now else datetime.now(UTC),
                              chains=lambda db: chain_for(rt, db),
                              routine_keeps=all_keeps)
    actions = _guard(run)
    if as_json:
        _print_json([{"action": a.kind, "backup": a.backup_id, "database": a.database, "from": a.tier_from,
                      "to": a.tier_to, "reason": a.reason} for a in actions])
        return
    table = Table(title=f"retention plan at {now or 'now'}")
    for col in ("action", "backup", "from", "to", "reason"):
        table.add_column(col)
    for a in actions:
        table.add_row(a.kind, a.backup_id, a.tier_from, a.tier_to or "", a.reason)
    console.print(table)


@retention_app.command("apply")
def retention_apply(now: Annotated[str | None, typer.Option("--now", help="rehearse at this time")] = None) -> None:
    """Run the retention sweep flow (copies, moves, deletes)."""
    def run() -> list[dict[str, str]]:
        from flows.retention import retention_sweep
        rows: list[dict[str, str]] = retention_sweep(config=_config_path(),
                                                          now=parse_time(now, "--now") if now else None)
        return rows
    rows = _guard(run)
    for r in rows:
        console.print(f"{r['action']:6} {r['backup']}: {r['done']} ({r['reason']})")
    console.print(f"{len(rows)} change(s)")


@hold_app.command("add")
def hold_add(backup_id: str, reason: Annotated[str, typer.Option("--reason")],
             actor: Annotated[str, typer.Option("--as", help="who places it (audited)")] = "operator") -> None:
    """Place a legal hold: the backup (and what its restore needs) is never deleted while held."""
    _guard(lambda: _runtime().catalog.add_hold(backup_id, reason=reason, actor=actor))
    console.print(f"hold placed on {backup_id}")


@hold_app.command("remove")
def hold_remove(backup_id: str, reason: Annotated[str, typer.Option("--reason")],
                actor: Annotated[str, typer.Option("--as", help="who lifts it (audited)")] = "operator") -> None:
    """Lift a legal hold (the history stays in the catalog)."""
    _guard(lambda: _runtime().catalog.remove_hold(backup_id, actor=actor, reason=reason))
    console.print(f"hold on {backup_id} removed")


@catalog_app.command("rebuild")
def catalog_rebuild(from_tier: Annotated[str, typer.Option("--from", help="the tier to read")]) -> None:
    """Rebuild the catalog (the policy's `catalog:` URL) from one store's backup descriptors alone.

    Descriptors that fail authentication are refused, one line each on stderr, and the exit status is 1.
    """
    def run() -> dict[str, int]:
        from drkit.tiers.rebuild import rebuild_catalog
        return rebuild_catalog(_runtime(), from_tier, report=lambda line: sys.stderr.write(f"refused: {line}\n"))
    counts = _guard(run)
    console.print(f"imported {counts['imported']}, already present {counts['present']}, "
                  f"skipped {counts['skipped']} (descriptor without data), refused {counts['refused']}")
    if counts["refused"]:
        raise typer.Exit(1)


@catalog_app.command("check")
def catalog_check(
    deep: Annotated[bool, typer.Option("--deep", help="also hash every readable copy (reads all of them)")] = False,
    repair: Annotated[bool, typer.Option("--repair", help="mark, fail and remove what the findings say")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Does every copy the catalog counts on exist? Stale runs, orphans, lost restore points. Exit 1 on findings."""
    def run() -> CheckReport:
        from drkit.catalog_check import run_check
        return run_check(_runtime(), deep=deep, repair=repair)
    report = _guard(run)
    _print_check(report, as_json)
    if not report.clean:
        raise typer.Exit(1)


def _print_check(report: CheckReport, as_json: bool) -> None:
    if as_json:
        _print_json(report.as_json())
        return
    if report.outcomes:
        table = Table(title="catalog check")
        for col in ("finding", "database", "subject", "tier", "detail", "repair"):
            table.add_column(col)
        for o in report.outcomes:
            f = o.finding
            fix = f.repair.describe() if f.repair else "needs a person"
            if report.repair and f.repair:
                fix = ("done: " if o.repaired else "not done: ") + o.note
            table.add_row(*(Text(str(c)) for c in (f.kind, f.database or "", f.subject, f.tier or "", f.detail, fix)))
        console.print(table)
    console.print(Text(report.summary()))


@app.command()
def failover(db: str) -> None:
    """Unplanned failover runbook: probes, P1, approval pause, promote the replica, repoint clients."""
    def run() -> dict[str, Any]:
        _runtime().policy.database(db)
        from flows.dr import dr_failover
        result: dict[str, Any] = dr_failover(db=db, config=_config_path())
        return result
    out = _guard(run)
    if out.get("failed_over"):
        rto = out["time_to_recover_seconds_excluding_approval"]
        console.print(f"{db} failed over to {out['endpoint']} (approved by {out['approver']}); data-loss window "
                      f"≈ {out['data_loss_window_seconds']} s, recovered in {rto} s")
    else:
        console.print(f"no failover: {out.get('why')}")


@app.command()
def failback(db: str) -> None:
    """Planned failback runbook: choice pause, resync, switch back, traffic 10% → 50% → 100%."""
    def run() -> dict[str, Any]:
        _runtime().policy.database(db)
        from flows.dr import dr_failback
        result: dict[str, Any] = dr_failback(db=db, config=_config_path())
        return result
    out = _guard(run)
    console.print("failed back" if out.get("failed_back") else f"stayed on DR ({out.get('resync')})")


@app.command("import-history")
def import_history(db: str) -> None:
    """Record the backups the server remembers (SQL Server's msdb), so drkit can plan restores from them."""
    console.print(_guard(lambda: open_engine(_runtime(), db).import_history()))


@app.command()
def approvals(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Flow runs paused for a human decision."""
    def run() -> list[dict[str, Any]]:
        from flows.approvals import paused_runs
        return paused_runs()
    runs = _guard(run)
    if as_json:
        _print_json(runs)
        return
    table = Table(title="waiting for approval")
    for col in ("run id", "name", "since", "parameters"):
        table.add_column(col)
    for r in runs:
        table.add_row(r["id"], r["name"], str(r["since"]), json.dumps(r["parameters"], default=str)[:60])
    console.print(table)


@app.command()
def approve(
    run_id: str,
    as_name: Annotated[str, typer.Option("--as", help="your name, as on approvals.approvers")],
    reason: Annotated[str, typer.Option("--reason")],
    reject: Annotated[bool, typer.Option("--reject")] = False,
) -> None:
    """Answer a paused run (the same form as the Prefect UI's Resume)."""
    def run() -> None:
        try:
            UUID(run_id)
        except ValueError:
            raise ConfigError(f"run id {run_id!r} is not a flow run id (a UUID); `drkit approvals` lists the "
                              "runs waiting for an answer") from None
        approvers = load_policy(_state["config"]).approvals.approvers
        if as_name not in approvers:
            raise ConfigError(f"{as_name!r} is not on approvals.approvers ({', '.join(approvers) or 'none'})")
        from flows.approvals import answer
        answer(run_id, approve=not reject, approver=as_name, reason=reason)
    _guard(run)
    console.print(f"{'rejected' if reject else 'approved'} run {run_id} as {as_name}")


# -- status ---------------------------------------------------------------------------------------------


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Per database: newest backup of each kind, its age, the worst-case data-loss window now, last catalog check."""
    from drkit.status import check_status, database_status

    def run() -> None:
        rt = _runtime()
        now = datetime.now(UTC)
        from drkit.tiers.naming import tier_location
        locations = {t: tier_location(rt.policy, t) for t in rt.tier_order}
        rows = [database_status(db, rt.catalog.list_backups(db), rt.catalog.all_copies(db), now=now,
                                tier_order=rt.tier_order, chain=chain_for(rt, db), locations=locations)
                for db in rt.policy.databases]
        from drkit.dr import lag_summary
        lags = {db: lag_summary(rt, db) for db in rt.policy.databases}
        checked = rt.catalog.latest_audit("catalog.check")
        if as_json:
            _print_json([{**r.as_json(now), "replica_lag": lags[r.database],
                          "catalog_check": check_status(checked, r.database).as_json()} for r in rows])
            return
        table = Table(title="status")
        for col in ("database", "newest full", "newest diff", "newest log", "restorable until", "RPO now",
                    "3-2-1", "replica lag", "catalog check"):
            table.add_column(col)
        for r in rows:
            def age(kind: str, r: Any = r) -> str:
                b = r.newest[kind]
                if b is None:
                    return "—"
                end = b.end_time or b.started_at
                return f"{_age((now - end).total_seconds())} ago"
            table.add_row(r.database, age("full"), age("diff"), age("log"),
                          r.restorable_until.isoformat(timespec="seconds") if r.restorable_until else "—",
                          _age(r.rpo_seconds) if r.rpo_seconds is not None else "no restorable backup",
                          r.rule_321, _lag_text(lags[r.database]), check_status(checked, r.database).text(now, _age))
        console.print(table)
    _guard(run)


def _lag_text(lag: dict[str, Any] | None) -> str:
    if lag is None:
        return "—"
    if lag.get("state") == "unknown":
        return f"unknown ({lag.get('error')})"
    flag = " TOO FAR" if lag.get("too_far") else ""
    return f"{lag.get('seconds')} s, {lag.get('bytes')} B ({lag.get('state')}){flag}"


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"


# -- long-running ---------------------------------------------------------------------------------------


@app.command()
def serve() -> None:
    """Every deployment on its schedule (needs PREFECT_API_URL pointing at a Prefect server)."""
    from deployments.serve import serve_all
    _guard(lambda: serve_all(_config_path()))


@app.command()
def demo(workdir: Annotated[Path, typer.Option("--workdir")] = Path("var/demo")) -> None:
    """Run the whole story once on a local sandbox (what `make demo` runs)."""
    from flows.demo import run_demo
    _guard(lambda: run_demo(workdir))


if __name__ == "__main__":
    app()
