"""A real ``prefect server start`` that a test can stop and start again on the same port and database.

For faults of the orchestrator itself (the API gone during a backup flow or a paused runbook): the
server is a process of its own (new session, stopped by its PID), its SQLite database lives in its
``PREFECT_HOME``, so a restart comes back with every flow run, pause and concurrency limit it had.
Background services run (lease repossession, pause expiry), unlike under ``prefect_test_harness``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from drkit.engines.postgres.pgctl import free_port

PREFECT = Path(sys.executable).with_name("prefect")


class PrefectProcess:
    def __init__(self, home: Path | None = None, port: int | None = None, *, ui: bool = False,
                 server_env: dict[str, str] | None = None) -> None:
        self.server_env = dict(server_env or {})  # extra settings of the server (e.g. its API auth string)
        self.home = home or Path(tempfile.mkdtemp(prefix="drkit-fpf-", dir="/tmp"))
        self.ui = ui  # serve the web UI too (browser tests)
        self._own_home = home is None
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def environ(self, **extra: str) -> dict[str, str]:
        """This process's environment without its PREFECT_* settings, pointed at this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_API_URL=self.api_url, PREFECT_HOME=str(self.home / "client"),
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", **extra)
        return env

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 180) -> None:
        """Start (or start again) and wait until the API answers."""
        if self.proc is not None and self.proc.poll() is None:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(self.home / "server"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   DO_NOT_TRACK="1", PREFECT_UI_ENABLED="true" if self.ui else "false",
                   # the UI asks /ui-settings where the API is; without this it says port 4200
                   PREFECT_SERVER_UI_API_URL=self.api_url)
        env.update(self.server_env)
        (self.home / "server").mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"the Prefect server did not start on {self.url}:\n{tail}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server's process group (SIGKILL: a crash), and wait until the port is free again."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        # uvicorn's workers are in the same group; make sure nothing of it still listens
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        if self._own_home:
            shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def running_prefect_server(startup_timeout: float = 180) -> Iterator[PrefectProcess]:
    """A real Prefect server (background services included) for the duration of the block."""
    server = PrefectProcess()
    try:
        server.start(timeout=startup_timeout)
        yield server
    finally:
        server.close()
