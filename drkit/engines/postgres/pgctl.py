"""Run PostgreSQL server binaries safely, as the right OS user.

PostgreSQL refuses to run as root, and ``runuser`` keeps root's environment,
so every server-side command (initdb, pg_ctl, pg_rewind) goes through
:func:`run_as` with a clean PATH. :class:`LocalCluster` is a small handle on a
data directory that drkit starts itself: restored clusters, verification
scratch clusters, the demo's primary and the tests' servers.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from drkit.errors import EngineError
from drkit.host import effective_os_user as effective_os_user  # re-exported for pgctl's callers
from drkit.host import free_port as free_port
from drkit.safedir import chown_fd_tree, open_leaf

_CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
    "LANG": "C.UTF-8",
}


def run_as(
    os_user: str | None,
    argv: Sequence[str],
    *,
    timeout: float = 600,
    check: bool = True,
    cwd: str | Path | None = None,
    secret_env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``os_user`` (via runuser when we are root and it is another user).

    ``secret_env`` (e.g. PGPASSWORD) is added to the clean environment: secrets go there, never into
    ``argv``, which every local user can read (ps, /proc/*/cmdline). runuser passes it through.
    """
    cmd = list(argv)
    current = pwd.getpwuid(os.geteuid()).pw_name
    if os_user and os_user != current:
        if os.geteuid() != 0:
            raise EngineError(f"cannot run {Path(cmd[0]).name} as {os_user!r}: drkit is not running as root")
        cmd = ["runuser", "-u", os_user, "--", *cmd]
    env = {**_CLEAN_ENV, **(secret_env or {})}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd or "/", check=False
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise EngineError(f"{Path(argv[0]).name} failed (exit {proc.returncode}): " + " | ".join(detail))
    return proc


def _owner_ids(os_user: str | None) -> tuple[int, int] | None:
    """(uid, gid) to hand files to, when we are root and there is another user to give them to."""
    if not os_user or os.geteuid() != 0:
        return None
    pw = pwd.getpwnam(os_user)
    return pw.pw_uid, pw.pw_gid


def chown_tree(path: Path, os_user: str | None, *, mode: int | None = None) -> None:
    """Give ``path`` (a file, or a directory recursively) to ``os_user``; data directories also need mode 0700.

    Descriptor-based: a link found on the way is changed itself, never followed (see safedir).
    """
    fd = open_leaf(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        ids = _owner_ids(os_user)
        if ids is not None:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                chown_fd_tree(fd, *ids)
            else:
                os.fchown(fd, *ids)
        if mode is not None:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def make_owned_dir(path: Path, os_user: str | None, mode: int = 0o700) -> Path:
    """Create ``path`` (and parents), give it to ``os_user`` with ``mode``; refuses a link another user planted."""
    path.mkdir(parents=True, exist_ok=True)
    fd = open_leaf(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = _owner_ids(os_user)
        if ids is not None:
            os.fchown(fd, *ids)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return path


def _open_regular(path: Path, flags: int) -> int:
    """Open a log or config file the OS user may control: no foreign link, a regular file, one name only."""
    fd = open_leaf(path, flags | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise EngineError(f"{path} is not a plain file (a device, a pipe, or a hard link to another file); "
                          "refusing to use it")
    return fd


def append_text(path: Path, text: str) -> None:
    """Append to a file in a directory the OS user owns, without following a link planted there."""
    fd = _open_regular(path, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(text.encode())
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


@dataclass
class LocalCluster:
    """A PostgreSQL data directory on this machine that drkit controls."""

    data_dir: Path
    port: int
    bin_dir: Path
    os_user: str | None = field(default_factory=lambda: effective_os_user(None))
    log_file: Path | None = None
    socket_dir: Path | None = None  # set: reached through this Unix socket directory only (restored clusters)

    @property
    def log_path(self) -> Path:
        return self.log_file or self.data_dir.with_name(self.data_dir.name + ".log")

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        host = str(self.socket_dir) if self.socket_dir is not None else "127.0.0.1"
        from psycopg.conninfo import make_conninfo  # psycopg (0.2 s) only when a DSN is made

        return make_conninfo(host=host, port=str(self.port), user=user, dbname=dbname)

    def _bin(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise EngineError(f"{name} not found in {self.bin_dir}; set bin_dir in the policy file")
        return str(path)

    def initdb(self, *, checksums: bool = True, extra_conf: str = "") -> None:
        make_owned_dir(self.data_dir, self.os_user)
        argv = [self._bin("initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        if checksums:
            argv.append("-k")
        run_as(self.os_user, argv, timeout=300)
        conf = (
            f"\n# drkit\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
            f"unix_socket_directories = '{self.data_dir}'\n" + extra_conf
        )
        append_text(self.data_dir / "postgresql.conf", conf)

    def pg_ctl(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_as(self.os_user, [self._bin("pg_ctl"), "-D", str(self.data_dir), *args],
                      timeout=timeout, check=check)

    def start(self, *, wait_seconds: int = 300) -> None:
        ids = _owner_ids(self.os_user)
        if self.log_path.parent != self.data_dir and ids is not None:
            # root makes the log where the OS user may not be able to, never through a link it planted
            fd = _open_regular(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                os.fchown(fd, *ids)
            finally:
                os.close(fd)
        proc = self.pg_ctl("-l", str(self.log_path), "-w", "-t", str(wait_seconds),
                           "-o", f"-p {self.port}", "start", check=False, timeout=wait_seconds + 30)
        if proc.returncode != 0:
            raise EngineError(
                f"PostgreSQL in {self.data_dir} did not start on port {self.port}: "
                + " | ".join(self.log_tail(8))
            )

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self.pg_ctl("-m", mode, "-w", "stop", check=False)

    def is_running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        return self.pg_ctl("status", check=False).returncode == 0

    def log_tail(self, n: int = 20) -> list[str]:
        """The log's last ``n`` lines, read without following a link (they end up in error messages)."""
        try:
            fd = _open_regular(self.log_path, os.O_RDONLY)
        except (OSError, EngineError):
            return []
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, 1 << 16, max(0, size - (1 << 16)))
        finally:
            os.close(fd)
        return data.decode(errors="replace").splitlines()[-n:]

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
