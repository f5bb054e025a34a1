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

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from drkit.errors import ConfigError, DrkitError, EncryptionKeyError

if TYPE_CHECKING:
    from rich.console import Console

    from drkit.runtime import Runtime


class _Group(TyperGroup):
    """A group of commands whose ``--help`` lists each command with the whole first paragraph of its help.

    Help is click's plain text, not rich's panels (which cost ``drkit --help`` about 0.1 s of imports and
    rendering); click alone would cut each description at its first sentence or 45 characters."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            text = cmd.short_help or (cmd.help or "").split("\n\n")[0]
            rows.append((name, " ".join(text.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def group(help: str) -> typer.Typer:
    """A group of subcommands (``drkit retention ...``), with the same plain help as the top level."""
    return typer.Typer(cls=_Group, no_args_is_help=True, rich_markup_mode=None, help=help)


class _Commands(_Group):
    """The top-level group: the last-resort guard around every command (and its subcommands).

    Any exception a command lets through becomes one ``error:`` line and an exit status, as in `guard`.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # exits, Ctrl-C and usage errors: typer's own
            raise
        except Exception as exc:
            raise typer.Exit(report(exc)) from None


class _App(typer.Typer):
    """The `drkit` process: after a command that ran flows, it ends as soon as Prefect has delivered the
    runs' logs and events (see :func:`cli.prefect_server.exit_now`), not after the interpreter has torn
    down every module and thread Prefect started (about 0.7 s more)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as exc:
            if "prefect" in sys.modules:  # a command that ran flows
                from cli.prefect_server import exit_now
                exit_now(exc.code)
            raise


class _LazyConsole:
    """A rich Console made on first use: commands that print no table or error never import rich."""

    __slots__ = ("_console", "_options")  # no __dict__: every other attribute is the Console's

    def __init__(self, **options: Any) -> None:
        object.__setattr__(self, "_options", options)
        object.__setattr__(self, "_console", None)

    def _get(self) -> Console:
        if self._console is None:
            from rich.console import Console
            object.__setattr__(self, "_console", Console(**self._options))
        console: Console = self._console
        return console

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # the proxy's own protocol (it has no __dict__), not the Console's
            raise AttributeError(name)
        return getattr(self._get(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._get(), name, value)


app = _App(cls=_Commands, no_args_is_help=True, add_completion=False, rich_markup_mode=None,
           help="Database backup and disaster recovery.")
console: Console = _LazyConsole(markup=False, emoji=False)  # type: ignore[assignment]
err: Console = _LazyConsole(stderr=True, soft_wrap=True, markup=False, emoji=False,  # type: ignore[assignment]
                            highlight=False)
T = TypeVar("T")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="policy file (default $DRKIT_CONFIG, ./drkit.yaml)")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v",
                                          help="also show Prefect's log lines and tracebacks on stderr")]
state: dict[str, Any] = {"config": None, "verbose": False}


@app.callback()
def main(ctx: typer.Context, config: ConfigOpt = None, verbose: VerboseOpt = False) -> None:
    state["config"] = str(config) if config else None
    state["verbose"] = verbose
    # `serve` is a service, its log is its output; `demo` shows the runs as they go and starts a Prefect
    # server that must not inherit the quiet setting (its log file is kept).
    if not verbose and ctx.invoked_subcommand not in ("serve", "demo"):
        ctx.call_on_close(_quiet_prefect_console())


def use_prefect() -> None:
    """Call in a flow command once its input is checked, before it imports its flows: with no
    PREFECT_API_URL configured, flows then use the local server beside the policy file, started on first
    use (one line on stderr says so) and left running (see cli.prefect_server.connect_prefect)."""
    from cli.prefect_server import connect_prefect
    connect_prefect(policy_dir, lambda line: err.print(line))


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


def error(message: str) -> None:
    """One ``error: ...`` line on stderr; the message is plain text, never markup."""
    from rich.text import Text
    err.print(Text.assemble(("error:", "red"), " ", _one_line(message)))


def _key_unusable() -> bool:
    """True when the configured backup key is missing or malformed (bad input, exit 2), as opposed to a
    well-formed key that is not the one a backup was written with (a failed operation, exit 1)."""
    from drkit.config import load_policy
    from drkit.pipeline import EncryptionKey
    try:
        EncryptionKey.from_env(load_policy(state["config"]).encryption.key_env)
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


def report(exc: Exception) -> int:
    """Print ``exc`` as one error line (and its traceback with --verbose); return the exit status."""
    if state.get("verbose"):
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
    error(message)
    return code


def policy_dir() -> Path:
    """The directory of the policy file (where drkit keeps its local Prefect server)."""
    return Path(config_path()).parent


def config_path() -> str:
    from drkit.config import find_config
    return str(find_config(state["config"]).resolve())


def guard(fn: Callable[[], T]) -> T:
    """Run a command's body: any error becomes one ``error:`` line and exit status 2 (bad input) or 1."""
    try:
        return fn()
    except (typer.Exit, typer.Abort, TyperException):
        raise
    except Exception as exc:
        raise typer.Exit(report(exc)) from None


def runtime() -> Runtime:
    from drkit.config import load_policy
    from drkit.runtime import Runtime
    return Runtime(load_policy(state["config"]))


def parse_time(value: str, option: str = "--to") -> datetime:
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{option} {value!r} is not a timestamp; use ISO 8601, e.g. 2026-11-28T10:00:03Z") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def human_bytes(n: int) -> str:
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if f < 1024 or unit == "TiB":
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return str(n)


def span(b: Any, short: bool = False) -> str:
    """What a backup covers: its WAL segments (PostgreSQL), else its log positions."""
    if b.start_wal or b.end_wal:
        return f"{b.start_wal or ''}..{(b.end_wal or '')[-8:] if short else b.end_wal or ''}"
    if b.start_lsn is not None or b.end_lsn is not None:
        return f"{'' if b.start_lsn is None else b.start_lsn}..{'' if b.end_lsn is None else b.end_lsn}"
    return ""
