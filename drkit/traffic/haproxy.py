"""HAProxy as a traffic router, driven through its runtime API (the admin stats socket).

Facts this module relies on (measured on HAProxy 2.6):

* The runtime API is a Unix socket; one command per connection, the answer is read to EOF. A successful
  ``set server`` / ``shutdown sessions`` answers an empty line; errors answer text ("No such server.",
  "Absolute weight can only be between 0 and 256 inclusive.", "Unknown command, ..."). Names are
  validated before they go into a command, because ``;`` separates commands on that socket.
* Weights are 0..256 and apply to the next request, even on an existing keep-alive client connection.
  Raising a server from weight 0 gives it a burst of consecutive requests before roundrobin settles
  (hundreds of requests); between non-zero weights the split is exact within a few requests.
* ``set server be/srv state maint`` sends the very next connection elsewhere, but existing TCP sessions stay
  where they are until ``shutdown sessions server be/srv``.
* Runtime changes are lost on reload unless the config has ``server-state-file`` (global) and
  ``load-server-state-from-file global`` (defaults) and the controller writes ``show servers state`` to that
  file before the reload: this router writes it after every change (:meth:`HAProxyRouter.save_state`).
  A weight *in the config* that changed between reloads wins over the state file; admin states (maint,
  ready) are restored either way.
* ``show stat`` counters (``stot``: sessions, or requests in HTTP mode) reset on every reload.

The application backend is HTTP and split by weight (percent → HAProxy weight 0..100). The database backend
is TCP and never split: exactly one server is out of maintenance.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from drkit.traffic.base import TrafficError, check_app_weights, check_name

__all__ = ["HAProxyRouter", "ServerState", "render_config", "validate_config"]

log = logging.getLogger(__name__)

# Linux: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

# srv_admin_state bits (HAProxy include/haproxy/server-t.h).
_ADMF_FMAINT = 0x01  # forced into maintenance (runtime API, or `disabled` in the config)
_ADMF_IMAINT = 0x02  # maintenance inherited from a tracked server
_ADMF_CMAINT = 0x04  # `disabled` in the config (kept after leaving maintenance, as a marker)
_ADMF_FDRAIN = 0x08  # forced into drain
_ADMF_IDRAIN = 0x10  # drain inherited from a tracked server
_ADMF_RMAINT = 0x20  # address resolution failed
_ADMF_MAINT = _ADMF_FMAINT | _ADMF_IMAINT | _ADMF_RMAINT
_ADMF_DRAIN = _ADMF_FDRAIN | _ADMF_IDRAIN

_OP_STATES = {0: "stopped", 1: "starting", 2: "running", 3: "stopping"}

# The first words of HAProxy's answers to a runtime command it refused.
_ERROR_PREFIXES = (
    "unknown command",
    "no such",
    "can't find",
    "permission denied",
    "require ",
    "invalid ",
    "absolute weight",
    "relative weight",
    "unknown ",
    "missing ",
    "backend is using",
    "'",
)


@dataclass(frozen=True)
class ServerState:
    """One server as ``show servers state`` reports it."""

    backend: str
    name: str
    address: str
    port: int | None
    op_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_state: int  # bit field, see _ADMF_*
    weight: int  # srv_uweight: the weight in force now
    initial_weight: int  # srv_iweight: the weight from the config

    @property
    def in_maintenance(self) -> bool:
        return bool(self.admin_state & _ADMF_MAINT)

    @property
    def draining(self) -> bool:
        return bool(self.admin_state & _ADMF_DRAIN)

    @property
    def takes_new_connections(self) -> bool:
        """Out of maintenance and drain, with a non-zero weight (health checks aside)."""
        return not self.in_maintenance and not self.draining and self.weight > 0

    @property
    def admin(self) -> str:
        if self.in_maintenance:
            return "maint"
        if self.draining:
            return "drain"
        return "ready"

    @property
    def operational(self) -> str:
        return _OP_STATES.get(self.op_state, str(self.op_state))


class HAProxyRouter:
    """A :class:`~drkit.traffic.base.Router` over HAProxy's runtime API.

    ``socket_path`` is the ``stats socket`` (``level admin``); ``app_backend`` the HTTP backend whose servers
    are split by weight; ``db_backend`` the TCP backend where one server at a time is active. ``state_file`` is
    the ``server-state-file`` of the config: when given, the whole ``show servers state`` is written there after
    every change, so a reload keeps the weights and the active database server.
    """

    def __init__(
        self,
        socket_path: Path,
        *,
        app_backend: str,
        db_backend: str,
        state_file: Path | None,
        name: str = "haproxy",
        timeout: float = 5.0,
        connect_attempts: int = 5,
    ) -> None:
        self.socket_path = Path(socket_path)
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            raise TrafficError(
                f"HAProxy socket path {self.socket_path} is longer than {MAX_SOCKET_PATH} bytes, "
                "the limit of a Unix socket path; use a shorter directory (e.g. under /run or /tmp)"
            )
        self.app_backend = check_name("backend", app_backend)
        self.db_backend = check_name("backend", db_backend)
        self.state_file = None if state_file is None else Path(state_file)
        self.name = name
        self.timeout = timeout
        self.connect_attempts = max(1, connect_attempts)

    def describe(self) -> str:
        return (
            f"HAProxy at {self.socket_path} (application backend {self.app_backend}, "
            f"database backend {self.db_backend})"
        )

    def __repr__(self) -> str:
        return f"HAProxyRouter({self.describe()})"

    # -- the runtime API ---------------------------------------------------------------------------

    def command(self, command: str) -> str:
        """Send one runtime API command and return HAProxy's answer; TrafficError naming it on failure.

        The answer to a command HAProxy refused ("No such server.", "Unknown command, ...") raises too. Commands
        chained with `;` run in order on one connection; a failing one does not stop the ones after it.
        """
        if not command or "\n" in command or "\r" in command:
            raise TrafficError(f"refusing to send a malformed HAProxy runtime command {command!r}")
        answer = self._exchange(command)
        first = answer.strip().splitlines()[0] if answer.strip() else ""
        if first.lower().startswith(_ERROR_PREFIXES):
            raise TrafficError(
                f"HAProxy at {self.socket_path} refused `{command}`: {_shorten(answer)}"
            )
        return answer

    def _action(self, command: str) -> None:
        """A command that answers nothing on success (set server, shutdown sessions)."""
        answer = self.command(command)
        if answer.strip():
            raise TrafficError(f"HAProxy at {self.socket_path} refused `{command}`: {_shorten(answer)}")

    def _exchange(self, command: str) -> str:
        delay = 0.05
        for attempt in range(1, self.connect_attempts + 1):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                try:
                    sock.connect(os.fspath(self.socket_path))
                except (FileNotFoundError, ConnectionRefusedError) as exc:
                    # Nothing was sent: retry (the socket is re-created during a reload).
                    if attempt < self.connect_attempts:
                        time.sleep(delay)
                        delay = min(delay * 2, 1.0)
                        continue
                    raise TrafficError(
                        f"cannot reach the HAProxy runtime API at {self.socket_path} for `{command}`: "
                        f"{exc.strerror or exc}; is haproxy running with `stats socket {self.socket_path} "
                        "level admin`?"
                    ) from exc
                sock.sendall(command.encode() + b"\n")
                chunks: list[bytes] = []
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
                return b"".join(chunks).decode(errors="replace")
            except OSError as exc:
                raise TrafficError(
                    f"HAProxy runtime API at {self.socket_path} failed during `{command}`: {exc}"
                ) from exc
            finally:
                sock.close()
        raise AssertionError("unreachable")  # pragma: no cover

    # -- state -------------------------------------------------------------------------------------

    def servers(self, backend: str) -> dict[str, ServerState]:
        """The servers of ``backend`` (name → state), from ``show servers state``."""
        check_name("backend", backend)
        answer = self.command(f"show servers state {backend}")
        servers = {s.name: s for s in _parse_servers_state(answer) if s.backend == backend}
        if not servers:
            raise TrafficError(f"HAProxy backend {backend} has no servers (answer: {_shorten(answer)})")
        return servers

    def save_state(self) -> None:
        """Write ``show servers state`` to the state file (atomically), so a reload restores it.

        Called after every change; call it again right before a reload to carry health-check states too.
        Does nothing without a state file.
        """
        if self.state_file is None:
            return
        answer = self.command("show servers state")
        if not answer.startswith("1\n"):
            raise TrafficError(f"unexpected `show servers state` answer from HAProxy: {_shorten(answer)}")
        directory = self.state_file.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.state_file.name}.", dir=directory)
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(answer.rstrip("\n") + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.state_file)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise TrafficError(f"cannot write the HAProxy server-state file {self.state_file}: {exc}") from exc

    # -- application traffic -----------------------------------------------------------------------

    def set_app_weights(self, weights: Mapping[str, int]) -> None:
        servers = self.servers(self.app_backend)
        full = check_app_weights(weights, servers, router=self.describe())
        parked = [n for n, w in full.items() if w > 0 and (servers[n].in_maintenance or servers[n].draining)]
        if parked:
            raise TrafficError(
                f"{self.describe()}: server(s) {', '.join(parked)} of {self.app_backend} are in maintenance or drain "
                "and would get no traffic; put them back with `set server "
                f"{self.app_backend}/{parked[0]} state ready` first (nothing was changed)"
            )
        # Raise first, lower second: the backend never has less capacity than before or after.
        order = sorted(full, key=lambda n: full[n] <= servers[n].weight)
        for name in order:
            if servers[name].weight != full[name]:
                self._action(f"set server {self.app_backend}/{name} weight {full[name]}")
        log.info("%s: application weights now %s", self.describe(), full)
        self.save_state()

    def app_weights(self) -> dict[str, int]:
        """The application split in percent: each server's weight share (0 for servers in maintenance/drain)."""
        servers = self.servers(self.app_backend)
        effective = {n: (0 if s.in_maintenance or s.draining else s.weight) for n, s in servers.items()}
        total = sum(effective.values())
        if total == 0:
            return dict.fromkeys(effective, 0)
        return {n: round(100 * w / total) for n, w in effective.items()}

    def backend_stats(self, backend: str) -> dict[str, dict[str, str]]:
        """``show stat`` rows of the servers of ``backend``: server name → CSV fields (stot, hrsp_5xx, status...)."""
        check_name("backend", backend)
        answer = self.command(f"show stat {backend} 4 -1")
        text = answer.lstrip()
        if not text.startswith("# "):
            raise TrafficError(f"unexpected `show stat` answer from HAProxy: {_shorten(answer)}")
        rows = csv.DictReader(io.StringIO(text[2:]))
        out: dict[str, dict[str, str]] = {}
        for row in rows:
            if row.get("pxname") == backend and row.get("svname") not in (None, "", "FRONTEND", "BACKEND"):
                out[str(row["svname"])] = {k: v for k, v in row.items() if k}
        return out

    def app_stats(self) -> dict[str, int]:
        """Total sessions (``stot``; requests, in HTTP mode) per application server since HAProxy started.

        Counters reset on a reload: compare deltas taken from one process.
        """
        return {name: int(row.get("stot") or 0) for name, row in self.backend_stats(self.app_backend).items()}

    # -- database traffic --------------------------------------------------------------------------

    def switch_database(self, active: str) -> None:
        """Make ``active`` the only server of the database backend that takes new connections.

        One runtime-API connection carries, in order, ``state maint`` for every other server (from the next
        connection on, nothing reaches it) and ``weight`` / ``state ready`` for ``active``; then the other servers'
        existing sessions are shut down. Old server first: a connection arriving in the microseconds between the two
        is refused rather than sent to the old server, because a database must never take writes in two places.
        Re-running it changes nothing harmful (servers already in the wanted state are not touched; shutting down
        the sessions of a server in maintenance finds none).
        """
        servers = self.servers(self.db_backend)
        if active not in servers:
            raise TrafficError(
                f"{self.describe()}: no server {active!r} in {self.db_backend}; known: {', '.join(servers)}"
            )
        others = [n for n in servers if n != active]
        target = servers[active]
        batch = [f"set server {self.db_backend}/{n} state maint" for n in others if not servers[n].in_maintenance]
        if target.weight == 0:
            batch.append(f"set server {self.db_backend}/{active} weight {max(1, target.initial_weight)}")
        if target.in_maintenance or target.draining:
            batch.append(f"set server {self.db_backend}/{active} state ready")
        if batch:
            # `;` chains commands on one connection; each successful one answers an empty line.
            self._action("; ".join(batch))
        for name in others:
            self._action(f"shutdown sessions server {self.db_backend}/{name}")
        if target.op_state == 0 and not target.in_maintenance:
            log.warning(
                "%s: %s/%s fails its health checks; new database connections are refused until it is up",
                self.describe(), self.db_backend, active,
            )
        log.info("%s: database traffic now goes to %s only", self.describe(), active)
        self.save_state()

    def active_database(self) -> str | None:
        servers = self.servers(self.db_backend)
        active = [n for n, s in servers.items() if s.takes_new_connections]
        if len(active) > 1:
            raise TrafficError(
                f"{self.describe()}: {' and '.join(active)} all take new database connections in "
                f"{self.db_backend}; a database must not take writes in two places: run switch_database to pick one"
            )
        return active[0] if active else None


def _shorten(answer: str, limit: int = 300) -> str:
    text = " ".join(answer.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_servers_state(answer: str) -> list[ServerState]:
    lines = answer.splitlines()
    if not lines or lines[0].strip() != "1":
        raise TrafficError(f"unexpected `show servers state` answer from HAProxy: {_shorten(answer)}")
    header: list[str] = []
    out: list[ServerState] = []
    for line in lines[1:]:
        if line.startswith("#"):
            header = line[1:].split()
            continue
        if not line.strip():
            continue
        fields = dict(zip(header, line.split(), strict=False))
        try:
            port = fields.get("srv_port", "0")
            out.append(
                ServerState(
                    backend=fields["be_name"],
                    name=fields["srv_name"],
                    address=fields.get("srv_addr", "-"),
                    port=int(port) if port.isdigit() and int(port) else None,
                    op_state=int(fields["srv_op_state"]),
                    admin_state=int(fields["srv_admin_state"]),
                    weight=int(fields["srv_uweight"]),
                    initial_weight=int(fields["srv_iweight"]),
                )
            )
        except (KeyError, ValueError) as exc:
            raise TrafficError(f"cannot parse `show servers state` line {line!r}: {exc}") from exc
    return out


# -- configuration -----------------------------------------------------------------------------------


def _check_address(what: str, address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in address):
        raise TrafficError(f"invalid {what} address {address!r}: expected host:port")
    return address


def render_config(
    *,
    socket_path: Path,
    app_bind: str,
    app_servers: Mapping[str, str],
    db_bind: str,
    db_servers: Mapping[str, str],
    state_file: Path | None = None,
    stats_bind: str | None = None,
    app_backend: str = "app",
    db_backend: str = "db",
    app_weights: Mapping[str, int] | None = None,
    db_active: str | None = None,
    app_health_path: str | None = "/health",
    db_check: bool = True,
    db_check_user: str | None = None,
    check_inter: str = "1s",
    db_idle_timeout: str = "30m",
    hard_stop_after: str = "30s",
) -> str:
    """A complete haproxy.cfg for one database and its application, ready for :class:`HAProxyRouter`.

    * ``fe_app`` on ``app_bind`` (HTTP) → ``app_backend``: the ``app_servers`` (name → host:port), roundrobin,
      ``app_weights`` in percent (default: the first server 100, the others 0), health checks on
      ``app_health_path`` unless None.
    * ``fe_db`` on ``db_bind`` (TCP) → ``db_backend``: the ``db_servers``; only ``db_active`` (default: the first)
      is in service, the others start in maintenance (``disabled``). ``db_check`` adds TCP connect checks
      (``option pgsql-check`` with ``db_check_user``). Idle database sessions live ``db_idle_timeout``.
    * ``option redispatch`` and ``retries 3`` everywhere, so a connection caught by a dead or switched server
      is retried on another server that is in service.
    * The admin stats socket at ``socket_path``; the stats page at ``stats_bind`` (``/stats``, ``/stats;csv``).
    * ``server-state-file`` = ``state_file`` + ``load-server-state-from-file global``: runtime weights and
      states survive a reload once the router has written the file. (HAProxy warns at start-up while the file
      does not exist yet; that is harmless.)
    * ``hard-stop-after``: after a reload the old process closes its remaining sessions after that long.
    """
    if len(os.fsencode(Path(socket_path))) > MAX_SOCKET_PATH:
        raise TrafficError(f"HAProxy socket path {socket_path} is longer than {MAX_SOCKET_PATH} bytes")
    check_name("backend", app_backend)
    check_name("backend", db_backend)
    if not app_servers or not db_servers:
        raise TrafficError("render_config needs at least one application server and one database server")
    for what, servers in (("application server", app_servers), ("database server", db_servers)):
        for name, address in servers.items():
            check_name(what, name)
            _check_address(f"{what} {name}", address)
    for what, bind in (("application frontend", app_bind), ("database frontend", db_bind)):
        _check_address(what, bind)
    if stats_bind is not None:
        _check_address("stats", stats_bind)
    first_app = next(iter(app_servers))
    weights = check_app_weights(
        app_weights if app_weights is not None else {first_app: 100}, app_servers, router="render_config"
    )
    active = db_active if db_active is not None else next(iter(db_servers))
    if active not in db_servers:
        raise TrafficError(f"render_config: db_active {active!r} is not one of {', '.join(db_servers)}")

    g = [
        "global",
        f"    stats socket {socket_path} mode 600 level admin",
        "    stats timeout 30s",
        f"    hard-stop-after {hard_stop_after}",
    ]
    if state_file is not None:
        g.append(f"    server-state-file {state_file}")
    d = [
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout queue 5s",
        "    option redispatch",
        "    retries 3",
    ]
    if state_file is not None:
        d.append("    load-server-state-from-file global")
    fe_app = ["frontend fe_app", "    mode http", f"    bind {app_bind}", f"    default_backend {app_backend}"]
    be_app = [f"backend {app_backend}", "    mode http", "    balance roundrobin"]
    app_check = ""
    if app_health_path is not None:
        if not app_health_path.startswith("/") or any(c.isspace() for c in app_health_path):
            raise TrafficError(f"invalid application health path {app_health_path!r}")
        be_app.append(f"    option httpchk GET {app_health_path}")
        app_check = f" check inter {check_inter} fall 3 rise 2"
    be_app += [f"    server {n} {a} weight {weights[n]}{app_check}" for n, a in app_servers.items()]
    fe_db = [
        "frontend fe_db",
        "    mode tcp",
        f"    bind {db_bind}",
        f"    timeout client {db_idle_timeout}",
        f"    default_backend {db_backend}",
    ]
    be_db = [f"backend {db_backend}", "    mode tcp", "    balance roundrobin", f"    timeout server {db_idle_timeout}"]
    db_check_opt = ""
    if db_check:
        if db_check_user is not None:
            check_name("database check user", db_check_user)
            be_db.append(f"    option pgsql-check user {db_check_user}")
        db_check_opt = f" check inter {check_inter} fall 3 rise 2"
    be_db += [
        f"    server {n} {a}{db_check_opt}{'' if n == active else ' disabled'}" for n, a in db_servers.items()
    ]
    sections = [g, d, fe_app, be_app, fe_db, be_db]
    if stats_bind is not None:
        sections.append(
            ["listen stats", "    mode http", f"    bind {stats_bind}", "    stats enable", "    stats uri /stats"]
        )
    return "\n\n".join("\n".join(s) for s in sections) + "\n"


def validate_config(path: Path, *, haproxy: str = "haproxy") -> None:
    """Check a config with ``haproxy -c -q -f PATH``; TrafficError with HAProxy's complaint if it is invalid."""
    try:
        proc = subprocess.run(
            [haproxy, "-c", "-q", "-f", os.fspath(path)], capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError as exc:
        raise TrafficError(f"cannot validate {path}: {haproxy} is not installed (apt-get install haproxy)") from exc
    except subprocess.TimeoutExpired as exc:
        raise TrafficError(f"`{haproxy} -c -q -f {path}` did not finish in 30 s") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip() or f"exit code {proc.returncode}"
        raise TrafficError(f"HAProxy config {path} is invalid: {detail}")
