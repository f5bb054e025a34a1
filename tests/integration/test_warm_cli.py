"""The warm process (cli/warm.py) runs a `drkit` command exactly as the command's own process does.

The in-process path (DRKIT_WARM=0) is the reference: the same command through `drkit server start`'s warm
process gives the same exit status and output, and does the same thing (the catalog gains the backup). The
warm process refuses another user, ignores and replaces a stale socket, and is bypassed when the code changed.

Everything runs as an operator runs it: `drkit` processes, a real Prefect server, a PostgreSQL sandbox. The
code runs from a copy made for this module, so edits elsewhere in the tree cannot make the warm process stale
(its fingerprint covers the project's .py files) in the middle of a test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.prefect_server import LOCAL_DIR, stop_local_server
from cli.warm import LOG_NAME, PACKAGES, PID_NAME, SOCKET_NAME, WARM_DIR
from drkit.sandbox import KEY_ENV, Sandbox

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
DRKIT = str(Path(sys.executable).with_name("drkit"))
BACKUP_ID = re.compile(r"app-(full|diff|log)-\d{8}T\d{6,}Z")


@dataclass
class World:
    sandbox: Sandbox
    code: Path  # the copy of the project's packages every process here runs
    home: Path  # the local Prefect server's directory

    @property
    def warm(self) -> Path:
        return self.home / WARM_DIR

    def env(self, warm: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DRKIT_"))}
        env.update({"PYTHONPATH": str(self.code), KEY_ENV: self.sandbox.key_b64,
                    "DRKIT_CONFIG": str(self.sandbox.policy_path),
                    "PREFECT_HOME": str(self.sandbox.root / "prefect-home")})
        if not warm:
            env["DRKIT_WARM"] = "0"
        return env

    def drkit(self, *args: str, warm: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DRKIT, *args], cwd=self.sandbox.root, env=self.env(warm), capture_output=True,
                              text=True, timeout=600, check=False)

    def log(self) -> list[str]:
        return (self.warm / LOG_NAME).read_text().splitlines()

    def ran(self, before: int, command: str) -> list[str]:
        """The warm process's log lines, since line ``before``, for commands it ran."""
        return [line for line in self.log()[before:] if f" drkit {command}: exit " in line]

    def wait_ready(self, pid: int | None = None, timeout: float = 300) -> int:
        """Poll the warm process's log until it (``pid``, or any) says it is ready; its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.warm / LOG_NAME).exists():
                for line in self.log():
                    m = re.match(r"warm: ready in .* s, pid (\d+), ", line)
                    if m and (pid is None or int(m.group(1)) == pid) and (self.warm / SOCKET_NAME).exists():
                        return int(m.group(1))
            time.sleep(0.2)
        raise AssertionError(f"the warm process did not start: {self.log() if self.warm.exists() else ''}")


def _copy_code(dest: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def world(sandbox: Sandbox) -> Iterator[World]:
    code = _copy_code(sandbox.root.parent / "code")
    w = World(sandbox, code, sandbox.root / LOCAL_DIR)
    started = w.drkit("server", "start")
    try:
        assert started.returncode == 0, started.stderr
        assert re.search(r"warm drkit process pid \d+", started.stdout), started.stdout
        w.wait_ready()
        yield w
    finally:
        stopped = w.drkit("server", "stop")
        stop_local_server(w.home)
        assert "stopped the warm drkit process" in stopped.stdout or not (w.warm / PID_NAME).exists()


def _normalized(text: str) -> list[str]:
    return [BACKUP_ID.sub("ID", line) for line in text.splitlines()]


def test_a_backup_through_the_warm_process_is_the_same_as_in_process(world: World) -> None:
    before = len(world.log())
    reference = world.drkit("backup", "full", "app", warm=False)
    assert reference.returncode == 0, reference.stderr
    assert world.ran(before, "backup") == []  # the reference ran in its own process

    warm = world.drkit("backup", "full", "app")
    assert warm.returncode == 0, warm.stderr
    assert world.ran(before, "backup") != []  # ... and this one in the warm process
    assert _normalized(warm.stdout) == _normalized(reference.stdout) == ["ID"]
    assert warm.stderr == reference.stderr == ""

    listed = json.loads(world.drkit("backups", "app", "--json", warm=False).stdout)
    ids = {b["id"] for b in listed if b["status"] == "verified"}
    assert {reference.stdout.strip(), warm.stdout.strip()} <= ids  # the catalog gained both backups


def test_bad_input_gives_the_same_one_line_error_and_exit_2(world: World) -> None:
    before = len(world.log())
    for args in (["backup", "weekly", "app"], ["backup", "full", "nosuchdb"], ["restore-plan", "app", "--to", "x"]):
        reference = world.drkit(*args, warm=False)
        warm = world.drkit(*args)
        assert warm.returncode == reference.returncode == 2, (args, warm.stderr, reference.stderr)
        assert warm.stderr == reference.stderr and warm.stderr.startswith("error: ")
        assert len(warm.stderr.splitlines()) == 1 and warm.stdout == reference.stdout == ""
    assert len(world.ran(before, "backup")) == 2 and len(world.ran(before, "restore-plan")) == 1


def test_read_only_commands_give_the_same_output(world: World) -> None:
    before = len(world.log())
    for args in (["backups", "app", "--json"], ["backups", "app"], ["restore-plan", "app", "--json"],
                 ["approvals", "--json"]):
        reference = world.drkit(*args, warm=False)
        warm = world.drkit(*args)
        assert (warm.returncode, warm.stdout, warm.stderr) == (reference.returncode, reference.stdout,
                                                                reference.stderr), args
    assert len(world.ran(before, "backups")) == 2 and len(world.ran(before, "approvals")) == 1


def _commands_of(warm_pid: int) -> list[int]:
    """The warm process's command processes: the children of its sessions (its own children)."""
    def children(pid: int) -> list[int]:
        try:
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []
    return [command for session in children(warm_pid) for command in children(session)]


def test_ctrl_c_in_the_client_reaches_the_command(world: World) -> None:
    warm_pid = int((world.warm / PID_NAME).read_text())
    before = len(world.log())
    client = subprocess.Popen([DRKIT, "backup", "full", "app"], cwd=world.sandbox.root, env=world.env(True),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (commands := _commands_of(warm_pid)) and client.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert commands, "the command never started in the warm process"
    client.send_signal(signal.SIGINT)
    _, err = client.communicate(timeout=120)
    assert client.returncode != 0 and "Traceback" not in err
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in commands) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in commands)  # the command ended with the client
    assert len(world.ran(before, "backup")) == 1


def _as_postgres(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", "/usr/bin/python3", "-I", "-c", code],  # not the venv
                          capture_output=True, text=True, timeout=60, check=False)


def test_another_user_is_refused(world: World) -> None:
    path = world.warm / SOCKET_NAME
    connect = (f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(path)!r}); "
               "print(s.recv(100).decode().strip())")
    denied = _as_postgres(connect)
    assert denied.returncode != 0 and "PermissionError" in denied.stderr  # the 0700 directory
    assert (world.warm.stat().st_mode & 0o777) == 0o700

    before = len(world.log())
    os.chmod(world.warm, 0o711)  # the directory opened up by mistake: the warm process still checks the peer
    os.chmod(path, 0o777)
    try:
        refused = _as_postgres(connect)
    finally:
        os.chmod(world.warm, 0o700)
    assert refused.returncode == 0 and refused.stdout.strip() == "refused", refused.stderr
    uid = int(subprocess.run(["id", "-u", "postgres"], capture_output=True, text=True, check=True).stdout)
    assert f"warm: refused a request from uid {uid}" in world.log()[before:]


def test_a_stale_socket_is_ignored_then_replaced(world: World) -> None:
    pid = int((world.warm / PID_NAME).read_text())
    os.kill(pid, signal.SIGKILL)  # dies without removing its socket
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (world.warm / SOCKET_NAME).exists()

    before = len(world.log())
    reference = world.drkit("backups", "app", "--json", warm=False)
    stale = world.drkit("backups", "app", "--json")
    assert (stale.returncode, stale.stdout, stale.stderr) == (0, reference.stdout, "")
    assert world.ran(before, "backups") == []  # ran in its own process

    started = world.drkit("server", "start")  # the server runs; a new warm process replaces the stale socket
    assert started.returncode == 0 and "already running" in started.stdout, started.stderr
    new_pid = int(re.search(r"warm drkit process pid (\d+)", started.stdout).group(1))  # type: ignore[union-attr]
    assert new_pid != pid
    world.wait_ready(new_pid)
    again = world.drkit("backups", "app", "--json")
    assert again.stdout == reference.stdout and len(world.ran(before, "backups")) == 1


def test_changed_code_runs_in_process(world: World) -> None:
    module = world.code / "drkit" / "status.py"
    before = len(world.log())
    reference = world.drkit("backups", "app", "--json", warm=False)
    st = module.stat()
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as an edit would
    try:
        changed = world.drkit("backups", "app", "--json")
    finally:
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (changed.returncode, changed.stdout, changed.stderr) == (0, reference.stdout, "")
    assert world.ran(before, "backups") == []
    back = world.drkit("backups", "app", "--json")  # the same code again: the warm process runs it
    assert back.stdout == reference.stdout and len(world.ran(before, "backups")) == 1


def test_server_stop_stops_the_warm_process(world: World) -> None:
    pid = int((world.warm / PID_NAME).read_text())
    stopped = world.drkit("server", "stop")
    assert stopped.returncode == 0 and f"stopped the warm drkit process (pid {pid})" in stopped.stdout
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()
    assert not (world.warm / SOCKET_NAME).exists()
    gone = world.drkit("backups", "app", "--json")  # runs in its own process
    assert gone.returncode == 0, gone.stderr


def test_the_warm_process_of_drkit_serve_ends_with_it(world: World) -> None:
    """`drkit serve` starts its warm process tied to itself: it ends when serve ends, however serve ends."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from cli.warm import start_warm; "
         "print(start_warm(Path(sys.argv[1]), with_parent=True), flush=True); time.sleep(600)", str(world.home)],
        env=world.env(True), stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        world.wait_ready(pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() and not (world.warm / SOCKET_NAME).exists()
