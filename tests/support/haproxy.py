"""A real HAProxy (Debian package) in front of tiny local backends, for traffic-router tests.

* :class:`NamedHttpBackend` — an HTTP server thread answering every GET with 200 and its name as the body
  (``"primary"`` / ``"dr"``); ``delay`` (seconds) and ``status`` can be changed while it runs, for latency and
  error-rate tests. ``/health`` (HAProxy's check) is not counted in ``requests``.
* :class:`NamedTcpServer` — a TCP server thread that greets every connection with ``name + "\\n"`` and then echoes
  what it receives: enough to see where HAProxy's database frontend sends a connection, and whether it stays open.
* :class:`HAProxyProcess` — writes a config with :func:`drkit.traffic.haproxy.render_config` into
  ``/tmp/drkit-hap-XXXX`` (short: a Unix socket path must stay under 108 bytes), validates it (``haproxy -c -q``),
  starts ``haproxy -D -p PIDFILE -f CFG`` on free ports below 32768, reloads it with ``-sf OLDPID`` (after writing
  the server-state file), and stops every process it started by PID. ``router`` is the
  :class:`~drkit.traffic.haproxy.HAProxyRouter` on its admin socket.
* :func:`running_haproxy` — backends + HAProxy for a with-block; :func:`haproxy_env` the same as a fixture.

Daemonised HAProxy processes are re-parented to PID 1, which does not reap them in this container: a zombie
counts as stopped.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from drkit.traffic.haproxy import HAProxyRouter, render_config, validate_config
from tests.support.azurite import free_port

HOST = "127.0.0.1"


def haproxy_binary() -> str:
    path = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
    if path is None:
        raise FileNotFoundError("haproxy is not installed: run `make install` (scripts/install-system.sh installs it)")
    return path


# -- backends -----------------------------------------------------------------------------------------


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # HAProxy closes check and aborted connections early (resets, broken pipes): not a test failure.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class NamedHttpBackend:
    """HTTP backend on 127.0.0.1:<port> answering ``name`` (200) after ``delay`` seconds."""

    def __init__(self, name: str, *, delay: float = 0.0, status: int = 200) -> None:
        self.name = name
        self.delay = delay
        self.status = status
        self.requests = 0
        self._lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path != "/health":
                    with backend._lock:
                        backend.requests += 1
                    if backend.delay:
                        time.sleep(backend.delay)
                body = backend.name.encode()
                self.send_response(200 if self.path == "/health" else backend.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        last: OSError | None = None
        for _ in range(10):
            try:
                self.server = _HttpServer((HOST, free_port()), Handler)
                break
            except OSError as exc:  # taken between the probe and the bind
                last = exc
        else:
            raise RuntimeError(f"no port for backend {name}: {last}")
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"http-{name}", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class NamedTcpServer:
    """TCP server on 127.0.0.1:<port>: greets each connection with ``name\\n``, then echoes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.accepted = 0
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = False
        last: OSError | None = None
        for _ in range(10):
            try:
                self._listener = socket.create_server((HOST, free_port()))
                break
            except OSError as exc:
                last = exc
        else:
            raise RuntimeError(f"no port for TCP server {name}: {last}")
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, name=f"tcp-{name}", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
                self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.sendall(f"{self.name}\n".encode())
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()


# -- HAProxy -----------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class HAProxyProcess:
    """HAProxy daemon with an HTTP application frontend, a TCP database frontend and a stats page."""

    app_backend = "app"  # the defaults of TrafficConfig (drkit.config)
    db_backend = "db"

    def __init__(
        self,
        app_servers: dict[str, str],
        db_servers: dict[str, str],
        *,
        check_inter: str = "500ms",
        hard_stop_after: str = "5s",
    ) -> None:
        self.binary = haproxy_binary()
        self.app_servers = app_servers
        self.db_servers = db_servers
        self.check_inter = check_inter
        self.hard_stop_after = hard_stop_after
        self.dir = Path(tempfile.mkdtemp(prefix="drkit-hap-", dir="/tmp"))
        self.socket_path = self.dir / "admin.sock"
        self.state_file = self.dir / "server-state"
        self.config_path = self.dir / "haproxy.cfg"
        self.pidfile = self.dir / "haproxy.pid"
        self.log_path = self.dir / "haproxy.log"
        self.app_port = self.db_port = self.stats_port = 0
        self.pids: list[int] = []  # every process started, oldest first
        self.router = HAProxyRouter(
            self.socket_path, app_backend=self.app_backend, db_backend=self.db_backend, state_file=self.state_file
        )

    # -- lifecycle

    @property
    def pid(self) -> int | None:
        return self.pids[-1] if self.pids else None

    def write_config(self) -> None:
        self.config_path.write_text(
            render_config(
                socket_path=self.socket_path,
                state_file=self.state_file,
                app_bind=f"{HOST}:{self.app_port}",
                app_servers=self.app_servers,
                db_bind=f"{HOST}:{self.db_port}",
                db_servers=self.db_servers,
                stats_bind=f"{HOST}:{self.stats_port}",
                app_backend=self.app_backend,
                db_backend=self.db_backend,
                check_inter=self.check_inter,
                hard_stop_after=self.hard_stop_after,
            )
        )
        validate_config(self.config_path, haproxy=self.binary)

    def _pick_ports(self) -> None:
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.app_port, self.db_port, self.stats_port = sorted(ports)

    def _spawn(self, extra: list[str]) -> int:
        old = self.pid
        with open(self.log_path, "ab") as log:
            proc = subprocess.run(
                [self.binary, "-D", "-p", str(self.pidfile), "-f", str(self.config_path), *extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=30, check=False,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"haproxy exited with {proc.returncode}; log:\n{self.log_tail()}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                pid = int(self.pidfile.read_text().split()[0])
                if pid != old and _alive(pid):
                    self.pids.append(pid)
                    return pid
            time.sleep(0.02)
        raise RuntimeError(f"haproxy wrote no new pid to {self.pidfile}; log:\n{self.log_tail()}")

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.app_port), timeout=1):
                    pass
                self.router.command("show info")
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.02)
        raise RuntimeError(f"haproxy did not accept connections in {timeout}s; log:\n{self.log_tail()}")

    def start(self) -> None:
        last: Exception | None = None
        for _ in range(3):
            self._pick_ports()
            self.write_config()
            try:
                self._spawn([])
                self._wait_ready()
                self.router.save_state()
                return
            except RuntimeError as exc:  # e.g. a port taken between the probe and haproxy's bind
                last = exc
                self.stop(remove=False)
        raise RuntimeError(f"could not start haproxy: {last}")

    def reload(self, *, wait_old: float = 10.0) -> int:
        """Seamless reload (``-sf OLDPID``) after saving the server state; returns the new PID.

        Waits until the old process has exited (it finishes its open sessions, ``hard-stop-after`` at most).
        """
        old = self.pid
        self.router.save_state()
        self._spawn(["-sf", str(old)] if old else [])
        self._wait_ready()
        deadline = time.monotonic() + wait_old
        while old is not None and _alive(old) and time.monotonic() < deadline:
            time.sleep(0.05)
        if old is not None and _alive(old):
            raise RuntimeError(f"the old haproxy {old} is still running {wait_old}s after the reload")
        return self.pid or 0

    def stop(self, *, remove: bool = True) -> None:
        """Stop every haproxy this object started, by PID (SIGTERM, then SIGKILL)."""
        for pid in self.pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in self.pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in self.pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.pids.clear()
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # -- clients

    @property
    def app_url(self) -> str:
        return f"http://{HOST}:{self.app_port}/"

    def send(self, n: int, *, client: httpx.Client | None = None) -> collections.Counter[str]:
        """Send ``n`` GETs through the application frontend; count the bodies (the backend names) and failures."""
        counts: collections.Counter[str] = collections.Counter()
        own = client is None
        client = client or httpx.Client(timeout=10)
        try:
            for _ in range(n):
                response = client.get(self.app_url)
                counts[response.text if response.status_code == 200 else f"HTTP {response.status_code}"] += 1
        finally:
            if own:
                client.close()
        return counts

    def connect_db(self, timeout: float = 5.0) -> tuple[socket.socket, str]:
        """A TCP connection through the database frontend and the name its server greeted with."""
        sock = socket.create_connection((HOST, self.db_port), timeout=timeout)
        greeting = b""
        while not greeting.endswith(b"\n"):
            data = sock.recv(100)
            if not data:
                sock.close()
                raise ConnectionError(f"the database frontend closed the connection (got {greeting!r})")
            greeting += data
        return sock, greeting.decode().strip()


@dataclass
class HAProxyEnv:
    """HAProxy plus its backends: ``http["primary"]``, ``http["dr"]``, ``tcp["primary"]``, ``tcp["dr"]``."""

    haproxy: HAProxyProcess
    http: dict[str, NamedHttpBackend]
    tcp: dict[str, NamedTcpServer]

    @property
    def router(self) -> HAProxyRouter:
        return self.haproxy.router


@contextlib.contextmanager
def running_haproxy(names: tuple[str, ...] = ("primary", "dr")) -> Iterator[HAProxyEnv]:
    """Backends named ``names`` and an HAProxy in front of them (application 100/0, database on the first)."""
    try:
        haproxy_binary()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    http: dict[str, NamedHttpBackend] = {}
    tcp: dict[str, NamedTcpServer] = {}
    hap: HAProxyProcess | None = None
    try:
        for name in names:
            http[name] = NamedHttpBackend(name)
            tcp[name] = NamedTcpServer(name)
        hap = HAProxyProcess({n: b.address for n, b in http.items()}, {n: s.address for n, s in tcp.items()})
        hap.start()
        yield HAProxyEnv(hap, http, tcp)
    finally:
        if hap is not None:
            hap.stop()
        for backend in http.values():
            backend.close()
        for server in tcp.values():
            server.close()


@pytest.fixture(scope="module")
def haproxy_env() -> Iterator[HAProxyEnv]:
    """A module-scoped :func:`running_haproxy` (import this fixture into a test module or conftest)."""
    with running_haproxy() as env:
        yield env
