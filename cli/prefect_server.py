"""The Prefect API a ``drkit`` command talks to, and a local Prefect server started on demand.

Where the API is: ``PREFECT_API_URL`` (the environment, else the active Prefect profile) when set.
Otherwise drkit uses a local server of its own, beside the policy file in ``var/prefect-local/`` (its own
``PREFECT_HOME``, ``server.pid``, ``server.url``, ``server.log``): the first command that runs a flow
starts it (about 10 s, one line on stderr says so and how to stop it) and leaves it running, so later
commands reuse it instead of Prefect starting a temporary server per command. ``drkit server stop``
(or ``make stop``) stops it. ``make demo`` runs its own, the same way, on a fixed port for its UI link.

Nothing here imports Prefect at import time: read-only commands (``drkit approvals``) read the API over
plain HTTP, and each flow command calls :func:`connect_prefect` (through ``cli.common.use_prefect``) just
before it imports its flows, so commands that run no flow never start a server.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

LOCAL_DIR = Path("var") / "prefect-local"
"""The local server's directory, relative to the policy file's directory."""

START_TIMEOUT_S = 120.0


# -- where the API is --------------------------------------------------------------------------------


def _profile_setting(name: str) -> str | None:
    """A setting of the active Prefect profile (``$PREFECT_HOME/profiles.toml``), read without Prefect."""
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active")
    profile = data.get("profiles", {}).get(active or "", {})
    value = profile.get(name) if isinstance(profile, dict) else None
    return str(value) if value else None


def _setting(name: str) -> str | None:
    """A Prefect setting as Prefect itself sees it: its settings when this process imported Prefect already
    (they may be a temporary context), else the environment, else the active profile."""
    if "prefect" in sys.modules:
        from prefect.settings import get_current_settings

        api = get_current_settings().api
        value = {"PREFECT_API_URL": api.url, "PREFECT_API_KEY": api.key,
                 "PREFECT_API_AUTH_STRING": api.auth_string}[name]
        if value is not None and hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        return str(value) if value else None
    return os.environ.get(name) or _profile_setting(name)


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` (Prefect's settings, the environment or the active profile); None when unset."""
    return _setting("PREFECT_API_URL")


def _auth_header() -> dict[str, str]:
    """What Prefect's own client sends: an API key as a bearer token, else the server's auth string."""
    key = _setting("PREFECT_API_KEY")
    if key:
        return {"Authorization": f"Bearer {key}"}
    auth = _setting("PREFECT_API_AUTH_STRING")
    if auth:
        return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    return {}


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    """True when a Prefect API answers ``GET /health`` at ``api_url``."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as resp:  # noqa: S310 - http(s) URL of our own
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


def api_request(api_url: str, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
    """One JSON request to the Prefect API (no Prefect import); DrkitError when it fails."""
    from drkit.errors import DrkitError

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{api_url.rstrip('/')}/{path.lstrip('/')}", data=data, method=method,  # noqa: S310
                                 headers={"Content-Type": "application/json", **_auth_header()})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        hint = ("; it wants its API auth string: set PREFECT_API_AUTH_STRING (see README, Approvals)"
                if exc.code == 401 else "")
        raise DrkitError(f"the Prefect API at {api_url} answered {method} {path} with HTTP {exc.code}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DrkitError(f"cannot reach the Prefect API at {api_url.removesuffix('/api')}: {reason}; start the "
                         "Prefect server, or point PREFECT_API_URL at a running one") from None


def current_api_url(policy_dir: Path | None) -> str | None:
    """The configured API, else the local server beside the policy file if it runs; None: no server."""
    configured = configured_api_url()
    if configured:
        return configured
    known = recorded(policy_dir / LOCAL_DIR) if policy_dir is not None else None
    return known.url if known is not None and healthy(known.url) else None


def _command_policy_dir() -> Path | None:
    from cli.common import policy_dir
    from drkit.errors import ConfigError

    try:
        return policy_dir()
    except ConfigError:
        return None


def paused_runs(api_url: str | None = None) -> list[dict[str, Any]]:
    """Flow runs waiting for a human (state PAUSED): id, name, since (a datetime) and parameters.

    The same rows as ``flows.approvals.paused_runs``, read over plain HTTP so ``drkit approvals`` does
    not import Prefect. ``api_url`` defaults to :func:`current_api_url`; with no server running, no run
    can be waiting.
    """
    api_url = api_url or current_api_url(_command_policy_dir())
    if api_url is None:
        return []
    runs = api_request(api_url, "POST", "flow_runs/filter",
                       {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}, "sort": "ID_DESC"})
    out = []
    for r in runs or []:
        stamp = (r.get("state") or {}).get("timestamp")
        out.append({"id": str(r["id"]), "name": r.get("name"),
                    "since": datetime.fromisoformat(stamp) if stamp else None,
                    "parameters": r.get("parameters") or {}})
    return out


# -- a local server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalServer:
    home: Path
    url: str
    pid: int | None
    started: bool  # this call started it (else it was running already)


def _free_port() -> int:
    """A free port below the ephemeral range, where the kernel's own choice could be a client's port."""
    from drkit.host import free_port
    return free_port()


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One process at a time decides whether to start the server (two commands at once start one)."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "server.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def recorded(home: Path) -> LocalServer | None:
    """The server recorded in ``home`` (its URL and pid files), whether or not it still answers."""
    try:
        url = (home / "server.url").read_text().strip()
    except OSError:
        return None
    try:
        pid: int | None = int((home / "server.pid").read_text())
    except (OSError, ValueError):
        pid = None
    return LocalServer(home, url, pid, started=False) if url else None


def ensure_local_server(home: Path, *, port: int | None = None, announce: Callable[[str], None] | None = None,
                        stop_hint: str = "drkit server stop") -> LocalServer:
    """A Prefect server on 127.0.0.1 with ``home`` as its PREFECT_HOME: the one recorded there if it
    answers, else a new one (on ``port``, default a free one), left running after this process ends."""
    home = home.resolve()
    with _locked(home):
        known = recorded(home)
        if known is not None and healthy(known.url) and (port is None or known.url.endswith(f":{port}/api")):
            return known
        if known is not None:  # recorded but not answering: a server that died or hangs
            _stop(known.pid, home)
        port = port or _free_port()
        url = f"http://127.0.0.1:{port}/api"
        if healthy(url):  # someone else's server on the fixed port: use it, as `make serve` would
            return LocalServer(home, url, None, started=False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING_")}  # its own log
        env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "DO_NOT_TRACK": "1", "PREFECT_API_URL": url, "PREFECT_SERVER_UI_API_URL": url})
        with open(home / "server.log", "ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        (home / "server.pid").write_text(str(proc.pid))
        (home / "server.url").write_text(url + "\n")
        if announce:
            announce(f"starting a local Prefect server at {url.removesuffix('/api')} (pid {proc.pid}, data in "
                     f"{home}); it keeps running for the next commands; stop it with `{stop_hint}`")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(url, timeout=1.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc.pid, home)
                raise RuntimeError(f"the local Prefect server did not start; see {home / 'server.log'}")
            time.sleep(0.25)
        return LocalServer(home, url, proc.pid, started=True)


def _is_prefect_server(pid: int) -> bool:
    """The pid still names a Prefect server (not a process that reused the number)."""
    try:
        return b"prefect" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _stop(pid: int | None, home: Path) -> None:
    if pid is not None and _is_prefect_server(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)  # the server and what it started (its own session)
    for name in ("server.pid", "server.url"):
        with contextlib.suppress(FileNotFoundError):
            (home / name).unlink()


def stop_local_server(home: Path, timeout: float = 20.0) -> LocalServer | None:
    """Stop the server recorded in ``home`` (None: none was recorded); waits until it no longer answers."""
    known = recorded(home)
    if known is None:
        return None
    _stop(known.pid, home)
    deadline = time.monotonic() + timeout
    while known.pid is not None and healthy(known.url, timeout=0.5) and time.monotonic() < deadline:
        time.sleep(0.2)
    return known


# -- flow commands -------------------------------------------------------------------------------------


fresh_settings = False
"""True in a command's process forked by the warm process (cli.warm): Prefect is imported, but its settings are
the command's own environment's, as in a process of its own."""
_KEPT: list[Any] = []  # the settings context entered for the rest of the command (collected, it would exit)


def _quiet_heartbeats() -> None:
    """A command's flow runs in the operator's terminal, so nothing needs their heartbeats to see them
    crash; each sync flow call would otherwise wait up to 1 s at its end for the heartbeat thread."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    context = temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    context.__enter__()  # for the rest of the command
    _KEPT.append(context)


def connect_prefect(policy_dir: Callable[[], Path], announce: Callable[[str], None]) -> None:
    """Ready this process to run flows; a flow command calls it (through ``cli.common.use_prefect``) once its
    input is checked and before it imports its flows.

    With no API URL configured, Prefect is pointed at the local server beside the policy file (started if it
    is not running; a command with no policy file reports that itself). In a fresh process, the one that
    imports Prefect here, flow runs also send no heartbeats. A process that imported Prefect already (a
    test, or a second command in one process) keeps the settings it has; a command of the warm process
    (``fresh_settings``) is set up as a fresh process."""
    if "prefect" in sys.modules and not fresh_settings:
        return
    if not configured_api_url():
        try:
            home = policy_dir() / LOCAL_DIR
        except Exception:  # no policy file: the command reports that itself
            home = None
        if home is not None:
            os.environ["PREFECT_API_URL"] = ensure_local_server(home, announce=announce).url
            if "prefect" in sys.modules:  # the warm process's command: Prefect's settings were read already
                from prefect.context import refresh_global_settings_context
                refresh_global_settings_context()
    _quiet_heartbeats()


def exit_now(code: object) -> None:
    """End a process that used Prefect with ``code`` once Prefect has delivered the runs' events and logs,
    skipping the interpreter's teardown of every module and thread Prefect started (about 0.7 s). Returns
    (for a normal exit) when Prefect was not imported, or runs a temporary server of its own that must be
    stopped at exit."""
    if "prefect" not in sys.modules or not configured_api_url():
        return
    import logging

    from prefect.events.worker import EventsWorker

    # Public names for what ends Prefect's background senders: drain_all (inherited from Prefect's queue
    # service base) stops every one of them, events (task run states are events) and log lines, once each
    # has sent what it holds; logging.shutdown() then flushes the API log handler.
    EventsWorker.drain_all(timeout=30)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr, flush=True)
        status = 1
    os._exit(status)
