"""Start a real Azurite blob service (installed by scripts/install-azurite.sh) for tests.

Azurite 3.37.0 runs on 127.0.0.1 with ``--skipApiVersionCheck`` (mandatory with
azure-storage-blob 12.31.1, which sends an API version Azurite does not know) and
``--inMemoryPersistence``. It is stopped by its PID: SIGTERM, then SIGTERM again
(Azurite registers its handlers with ``once`` and often survives the first one,
as measured), then SIGKILL.

Usage: the ``azurite`` fixture (module scoped) yields an :class:`Azurite`; its
``connection_string`` is the well-known development account's.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from drkit.engines.postgres.pgctl import free_port as _free_port

REPO = Path(__file__).resolve().parents[2]
AZURITE_BIN_ENV = "DRKIT_AZURITE_BIN"
DEFAULT_BIN = REPO / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"

# The development account every Azurite accepts (public, documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def connection_string(host: str, port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://{host}:{port}/{ACCOUNT};"
    )


def free_port(low: int = 20000, high: int = 32000) -> int:
    """A port in [low, high] that nothing listens on right now (below Linux's ephemeral range)."""
    return _free_port(low, high)


def azurite_binary() -> Path:
    path = Path(os.environ.get(AZURITE_BIN_ENV) or DEFAULT_BIN)
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"Azurite is not installed at {path}: run `make install` (or scripts/install-azurite.sh), "
            f"or point {AZURITE_BIN_ENV} at an azurite-blob executable"
        )
    return path


class Azurite:
    """One azurite-blob process on 127.0.0.1:<port>; restartable on the same port (data is lost in memory mode)."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, *, port: int | None = None, in_memory: bool = True) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.in_memory = in_memory
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "azurite.log"
        self.remove_workdir = False  # set by start_azurite when it made a temporary one

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return connection_string(self.host, self.port)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        args = [
            str(azurite_binary()),
            "--blobHost", self.host,
            "--blobPort", str(self.port),
            "--skipApiVersionCheck",
        ]
        if self.in_memory:
            args.append("--inMemoryPersistence")
        else:
            data = self.workdir / "data"
            data.mkdir(parents=True, exist_ok=True)
            args += ["--location", str(data)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed right after
        try:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                start_new_session=True,
            )
        finally:
            log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"azurite-blob exited with {self.proc.returncode} before it was ready; "
                    f"log:\n{self.log_tail()}"
                )
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
                conn.request("GET", f"/{ACCOUNT}?comp=list")
                conn.getresponse().read()  # any answer (403 for an anonymous list) means it serves
                conn.close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"azurite-blob did not answer on {self.host}:{self.port} in {timeout}s")

    def stop(self) -> None:
        """Stop the process by its PID: SIGTERM, a second SIGTERM after 1.5 s, SIGKILL after 3 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            for sig, wait in ((signal.SIGTERM, 1.5), (signal.SIGTERM, 1.5), (signal.SIGKILL, 5.0)):
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                    return
                except subprocess.TimeoutExpired:
                    continue
            proc.wait(5)
        finally:
            if self.remove_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL by PID (a crash): in-memory data is gone."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def start_azurite(workdir: Path | None = None, *, in_memory: bool = True) -> Azurite:
    """Start Azurite on a free port (retrying a few ports if one is taken in the meantime)."""
    temporary = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="drkit-azurite-"))
    last: Exception | None = None
    for _ in range(3):
        az = Azurite(workdir, in_memory=in_memory)
        try:
            az.start()
            az.remove_workdir = temporary
            return az
        except RuntimeError as exc:  # e.g. EADDRINUSE: someone took the port after we probed it
            last = exc
            az.stop()
    if temporary:
        shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError(f"could not start Azurite: {last}")


@contextmanager
def running_azurite(workdir: Path | None = None, *, in_memory: bool = True) -> Iterator[Azurite]:
    """Azurite for the duration of a with-block; fails the test run clearly if it is not installed."""
    try:
        azurite_binary()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    az = start_azurite(workdir, in_memory=in_memory)
    try:
        yield az
    finally:
        az.stop()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A module-scoped in-memory Azurite (import this fixture into a test module or conftest)."""
    with running_azurite(tmp_path_factory.mktemp("azurite")) as az:
        yield az
