"""The warm process: `drkit` commands without paying for ``import prefect`` each time.

``drkit server start`` and ``drkit serve`` also start it (``python -m cli.warm HOME``): a process that has
imported Prefect, the CLI and the flow modules, has started no thread, and listens on ``HOME/warm/warm.sock``
(``HOME`` is the local server's directory, ``var/prefect-local/`` beside the policy file; ``warm/`` is mode
0700, so only its owner can reach the socket, and the peer's uid is checked again with SO_PEERCRED).

A command in :data:`COMMANDS` first tries the socket (:func:`delegate`, stdlib only). It sends its stdin,
stdout and stderr file descriptors (SCM_RIGHTS), its argv, working directory, environment and a fingerprint
of the code; the warm process forks a session process, which forks the command's process: the same
``cli.common.app`` code path as ``drkit`` in its own process, with the client's descriptors as 0, 1, 2, its
directory and its environment (Prefect's settings and logging are rebuilt from it). The session sends the
command's pid (Ctrl-C in the client is forwarded to it) and then its exit status; a client that goes away
takes the command with it (SIGHUP). With no socket, a stale one, another user's process, or code that changed
since the warm process started (the fingerprint differs), the command runs in its own process as before.
``DRKIT_WARM=0`` skips the warm process. ``drkit server stop`` stops it (by the pid in ``warm.pid``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

TYPE_CHECKING = False  # (not typing's: the `drkit` process that only delegates does not import typing)
if TYPE_CHECKING:
    from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cli", "deployments", "drkit", "flows", "tasks")
LOCAL_DIR = Path("var") / "prefect-local"  # cli.prefect_server.LOCAL_DIR, without importing it (a test checks)
WARM_DIR = "warm"
SOCKET_NAME, PID_NAME, LOG_NAME = "warm.sock", "warm.pid", "warm.log"
COMMANDS = frozenset({  # flow commands, and the read-only ones that read the policy
    "backup", "restore", "verify", "recover", "drill", "failover", "failback",
    "status", "backups", "restore-plan", "approvals",
})
_HEADER = struct.Struct("!I")  # the request's length, before its JSON
_STREAMS = (0, 1, 2)

in_warm_child = False  # True in a command's process forked by the warm process: it never delegates again


def fingerprint() -> str:
    """The code a process runs: the interpreter, and each project module's path, size and mtime."""
    h = hashlib.sha256(f"{sys.executable}\0{sys.version}\0{ROOT}".encode())
    for package in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(ROOT / package):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".py"):
                    st = os.stat(os.path.join(dirpath, name))
                    h.update(f"{dirpath}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def warm_dir(home: Path) -> Path:
    return home / WARM_DIR


# -- the client side (stdlib only) -----------------------------------------------------------------------


def _command_and_config(args: list[str]) -> tuple[str | None, str | None]:
    """The command name and the --config value of a `drkit` argv (after the program name)."""
    config, i = None, 0
    while i < len(args):
        a = args[i]
        if a == "--config" and i + 1 < len(args):
            config, i = args[i + 1], i + 2
        elif a.startswith("--config="):
            config, i = a.removeprefix("--config="), i + 1
        elif a in ("-v", "--verbose"):
            i += 1
        elif a.startswith("-"):
            return None, config  # --help and the like: in-process
        else:
            return a, config
    return None, config


def _socket_path(config: str | None) -> Path | None:
    chosen = Path(config) if config else Path(os.environ.get("DRKIT_CONFIG") or "drkit.yaml")
    if not chosen.is_file():
        return None  # the command reports that itself
    return warm_dir(chosen.resolve().parent / LOCAL_DIR) / SOCKET_NAME


def _read_line(sock: socket.socket, buf: bytearray) -> str | None:
    while b"\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode()


def delegate(args: list[str]) -> int | None:
    """Run ``drkit ARGS`` in the warm process and return its exit status; None when it cannot (no warm process,
    a stale socket, another user's, older code, or a command it does not run): run it in this process."""
    if in_warm_child or os.environ.get("DRKIT_WARM") == "0":
        return None
    command, config = _command_and_config(args)
    if command not in COMMANDS:
        return None
    path = _socket_path(config)
    if path is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        request = json.dumps({"fingerprint": fingerprint(), "argv": ["drkit", *args], "cwd": os.getcwd(),
                              "env": dict(os.environ)}).encode()
        data = _HEADER.pack(len(request)) + request
        sent = socket.send_fds(sock, [data], list(_STREAMS))
        sock.sendall(data[sent:])
        buf = bytearray()
        answer = _read_line(sock, buf)
    except OSError:
        sock.close()
        return None
    if answer is None or not answer.startswith("pid "):  # "stale", "refused", or gone: nothing ran
        sock.close()
        return None
    return _wait(sock, buf, int(answer.removeprefix("pid ")))


def _wait(sock: socket.socket, buf: bytearray, pid: int) -> int:
    """Forward Ctrl-C (and SIGTERM) to the command's process until the warm process sends its exit status."""
    def forward(signum: int, _frame: Any) -> None:
        try:
            os.killpg(pid, signum)  # the command and what it started, as a terminal's Ctrl-C
        except ProcessLookupError:  # not its own group yet
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                line = _read_line(sock, buf)
                break
            except InterruptedError:
                continue
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        sock.close()
    if line is None or not line.startswith("exit "):
        sys.stderr.write("error: the warm drkit process ended before the command did; see its warm.log\n")
        return 1
    return int(line.removeprefix("exit "))


# -- starting and stopping it ------------------------------------------------------------------------------


def _is_warm(pid: int) -> bool:
    try:
        return b"cli.warm" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def running_pid(home: Path) -> int | None:
    """The warm process recorded in ``home`` if it still runs."""
    try:
        pid = int((warm_dir(home) / PID_NAME).read_text())
    except (OSError, ValueError):
        return None
    return pid if _is_warm(pid) else None


def start_warm(home: Path, *, with_parent: bool = False) -> int:
    """Start the warm process for the local server directory ``home`` unless one runs; its pid. It inherits this
    process's environment (in memory, never on a command line) minus Prefect's logging settings, which each
    command brings. ``with_parent``: it ends with this process (``drkit serve``)."""
    pid = running_pid(home)
    if pid is not None:
        return pid
    import subprocess

    d = _private_dir(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING_")}
    with open(d / LOG_NAME, "ab") as log:
        parent = [str(os.getpid())] if with_parent else []
        proc = subprocess.Popen([sys.executable, "-m", "cli.warm", str(home), *parent],  # noqa: S603 - ours
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd="/")
    (d / PID_NAME).write_text(str(proc.pid))  # `drkit server stop` finds it while it is still importing
    return proc.pid


def stop_warm(home: Path) -> int | None:
    """Stop the warm process recorded in ``home`` (by its pid); the pid, or None when none ran."""
    pid = running_pid(home)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return pid


def _private_dir(home: Path) -> Path:
    """``home/warm``, a directory only this user can enter (refused if it is a symlink or someone else's)."""
    home.mkdir(parents=True, exist_ok=True)
    d = warm_dir(home)
    with contextlib.suppress(FileExistsError):
        os.mkdir(d, 0o700)
    st = os.lstat(d)
    import stat
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise RuntimeError(f"{d} is not a directory of this user; remove it")
    os.chmod(d, 0o700)
    return d


# -- the warm process ---------------------------------------------------------------------------------------


def _preload() -> None:
    import pkgutil

    import prefect  # noqa: F401
    import prefect.logging.configuration  # noqa: F401

    import flows
    from cli import app  # noqa: F401  (every command)

    for module in pkgutil.iter_modules(flows.__path__):
        __import__(f"flows.{module.name}")


def _settings_inputs() -> tuple[object, ...]:
    """What Prefect reads its settings from: PREFECT_* variables, the working directory's .env, prefect.toml and
    pyproject.toml, and the profiles file (each file's mtime, or None)."""
    def mtime(path: Path) -> int | None:
        try:
            return os.stat(path).st_mtime_ns
        except OSError:
            return None
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    files = [Path(name).absolute() for name in (".env", "prefect.toml", "pyproject.toml")] + [profiles]
    return (sorted((k, v) for k, v in os.environ.items() if k.startswith("PREFECT_")),
            [mtime(f) for f in files])


_warm_settings_inputs: tuple[object, ...] = ()


def _threads() -> int:
    import threading
    return threading.active_count()


def serve(home: Path, parent: int | None = None) -> None:
    """The warm process's loop: one forked session per accepted connection, until SIGTERM (or ``parent`` ends)."""
    t0 = time.monotonic()
    _preload()
    if _threads() != 1:
        raise SystemExit(f"warm: importing Prefect and the flows started threads ({_threads()}); not forking")
    code = fingerprint()
    global _warm_settings_inputs
    _warm_settings_inputs = _settings_inputs()  # in the directory the warm process runs in, "/"
    d = _private_dir(home)
    path = d / SOCKET_NAME
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        raise SystemExit(f"warm: another warm process answers on {path}")
    except (FileNotFoundError, ConnectionRefusedError):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of a process that died
    finally:
        probe.close()
    listener.bind(str(path))
    listener.listen(16)
    (d / PID_NAME).write_text(str(os.getpid()))

    def stop(_signum: int, _frame: Any) -> None:
        with contextlib.suppress(OSError):
            if int((d / PID_NAME).read_text()) == os.getpid():
                (d / PID_NAME).unlink()
                path.unlink()
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # sessions are reaped by the kernel
    print(f"warm: ready in {time.monotonic() - t0:.1f} s, pid {os.getpid()}, {path}", flush=True)
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    parent_fd = None
    if parent is not None:
        parent_fd = os.pidfd_open(parent)
        poller.register(parent_fd, select.POLLIN)
    while True:
        ready = dict(poller.poll())
        if parent_fd is not None and parent_fd in ready:
            stop(signal.SIGTERM, None)
        if listener.fileno() not in ready:
            continue
        conn, _ = listener.accept()
        try:
            uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            if uid != os.getuid():
                print(f"warm: refused a request from uid {uid}", flush=True)
                conn.sendall(b"refused\n")
                continue
            assert _threads() == 1, "fork with threads"  # noqa: S101 - a broken invariant, not input
            if os.fork() == 0:
                status = 1
                try:
                    listener.close()
                    status = _session(conn, code)
                finally:
                    os._exit(status)
        except OSError as exc:
            print(f"warm: {exc}", flush=True)
        finally:
            conn.close()


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, len(_STREAMS))
    buf = bytearray(data)
    while len(buf) < _HEADER.size:
        buf += conn.recv(1 << 16)
    (size,) = _HEADER.unpack_from(buf)
    while len(buf) < _HEADER.size + size:
        chunk = conn.recv(1 << 16)
        if not chunk:
            raise OSError("the client went away")
        buf += chunk
    return json.loads(buf[_HEADER.size:_HEADER.size + size]), fds


def _session(conn: socket.socket, code: str) -> int:
    """A forked session: check the request, fork the command, send its pid, wait, send its exit status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    t0 = time.monotonic()
    request, fds = _receive(conn)
    if len(fds) != len(_STREAMS) or request.get("fingerprint") != code:
        conn.sendall(b"stale\n")
        return 0
    assert _threads() == 1, "fork with threads"  # noqa: S101
    pid = os.fork()
    if pid == 0:
        conn.close()
        _command(request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    conn.sendall(f"pid {pid}\n".encode())
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(conn, select.POLLIN | select.POLLHUP)
    while True:
        ready = dict(poller.poll())
        if pidfd in ready:
            break
        if conn.fileno() in ready:  # the client went away (nothing else is sent): end the command as a hangup
            os.kill(pid, signal.SIGHUP)
            poller.unregister(conn)
    _, status, usage = os.wait4(pid, 0)
    exit_code = os.waitstatus_to_exitcode(status)
    exit_code = exit_code if exit_code >= 0 else 128 - exit_code  # killed by a signal: as a shell reports it
    with contextlib.suppress(OSError):
        conn.sendall(f"exit {exit_code}\n".encode())
    command, _ = _command_and_config(request["argv"][1:])  # its name only, never an argument
    print(f"warm: pid {pid} drkit {command}: exit {exit_code} after {time.monotonic() - t0:.2f} s, "
          f"cpu {usage.ru_utime + usage.ru_stime:.2f} s", flush=True)
    return 0


def _command(request: dict[str, Any], fds: list[int]) -> None:
    """The command's process: the client's streams, directory and environment, then `drkit` as in its own."""
    status: object = 1
    try:
        for fd, target in zip(fds, _STREAMS, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.setsid()  # its own session and process group (the session's SIGHUP reaches it alone)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _reopen_streams()
        import tempfile
        tempfile.tempdir = None  # $TMPDIR is the client's

        if _settings_inputs() != _warm_settings_inputs:  # Prefect's settings as the client's process would read them
            from prefect.context import refresh_global_settings_context
            refresh_global_settings_context()
        if any(k.startswith("PREFECT_LOGGING_") for k in os.environ):  # and its logging (warm: the defaults)
            from prefect.logging.configuration import setup_logging
            setup_logging()
        global in_warm_child
        in_warm_child = True
        import cli.prefect_server
        cli.prefect_server.fresh_settings = True
        from cli import app

        sys.argv = list(request["argv"])
        try:
            app()
            status = 0
        except SystemExit as exc:
            status = exc.code
    except BaseException:  # noqa: BLE001 - the process ends here whatever happened
        import traceback
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if status is None:
            status = 0
        elif not isinstance(status, int):
            with contextlib.suppress(Exception):
                print(status, file=sys.stderr, flush=True)
            status = 1
        os._exit(status)


def _reopen_streams() -> None:
    """sys.stdin/stdout/stderr on the client's descriptors, buffered as Python buffers them in a process of its
    own: stdout line-buffered on a terminal, stderr always."""
    stdin = open(0, encoding=sys.stdin.encoding, errors=sys.stdin.errors, closefd=False)  # noqa: SIM115
    stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, encoding=sys.stdout.encoding,  # noqa: SIM115
                  errors=sys.stdout.errors, closefd=False)
    stderr = open(2, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace",  # noqa: SIM115
                  closefd=False)
    for name, stream in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


if __name__ == "__main__":  # through the module `cli.warm` (not this `__main__` copy), whose flag the CLI reads
    from cli.warm import serve as _serve
    _serve(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None)
