"""A real ``prefect server start`` (with its background services: lease repossession, zombie detection).

The test harness (``prefect_test_harness``) runs the API without those services, so an expired concurrency
lease is never taken back there; tests about crashed lock holders need this one. Stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from drkit.engines.pgctl import free_port


@dataclass(frozen=True)
class PrefectServer:
    url: str  # http://127.0.0.1:PORT
    home: Path

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def environ(self, **extra: str) -> dict[str, str]:
        """This process's environment without its PREFECT_* settings, pointed at this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_API_URL=self.api_url, PREFECT_HOME=str(self.home / "client"),
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", **extra)
        return env


@contextmanager
def running_prefect_server(startup_timeout: float = 120) -> Iterator[PrefectServer]:
    home = Path(tempfile.mkdtemp(prefix="drkit-pf-", dir="/tmp"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_UI_ENABLED="false")
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the Prefect server did not start:\n"
                                     + (home / "server.log").read_text(errors="replace")[-3000:])
            time.sleep(0.3)
        yield PrefectServer(url, home)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)
