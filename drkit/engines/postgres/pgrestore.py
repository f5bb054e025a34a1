"""Lay a PostgreSQL data directory down from drkit archives and bring it up to a target.

Order (docs/blockdiff.md): the full's files → the diff's pages and whole
files → delete what the diff's manifest no longer lists → truncate or extend
every file to its recorded length → the diff's backup_label → WAL from the
diff's start, with ``archive_mode=off`` so the restored cluster never writes
into production's spool.

Everything is written by root into directories only root can use until the
data directory is complete; only then is it handed to the OS user
(``finish_ownership``), and every path below the target is walked through
directory descriptors that never follow a link (``drkit.safedir``).
Archive members are files and directories with relative names, nothing else.

The restored server listens on no TCP address: only on a Unix socket in its
data directory (0700, owned by the OS user), so only root and that user can
log in at all (``write_recovery_config``). A runbook that switches clients to it
first restarts it with the backup's own listen settings (``open_to_clients``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import re
import shlex
import stat
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

from drkit.engines.postgres.pgctl import LocalCluster, chown_tree, run_as
from drkit.engines.postgres.pgfiles import (
    MANIFEST_NAME,
    PAGES_PREFIX,
    apply_pages,
    parse_pages_member,
    safe_member_path,
)
from drkit.errors import DrkitError, EngineError, IntegrityError, RestoreError
from drkit.safedir import SafeDir, trusted_path

_COPY_BUF = 1 << 20
ZERO_BLOCK = bytes(512)


@dataclass
class ExtractStats:
    files: int = 0
    pages: int = 0
    bytes: int = 0


def _read_exact(stream: Any, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        block = stream.read(n - got)
        if not block:
            raise EOFError(f"stream ended {n - got} bytes early")
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def _pax_records(data: bytes) -> dict[str, str]:
    out, i = {}, 0
    while i < len(data):
        space = data.index(b" ", i)
        length = int(data[i:space])
        key, _, value = data[space + 1:i + length - 1].partition(b"=")
        out[key.decode()] = value.decode("utf-8", "surrogateescape")
        i += length
    return out


def _member(name: str) -> str:
    """A member name that stays inside the target: relative, no ``..``/``.``/empty components."""
    safe_member_path(Path("/"), name)
    if any(p in ("", ".") for p in name.split("/")):
        raise IntegrityError(f"archive member {name!r} has an unsafe path; refusing to restore it")
    return name


class _Tree:
    """The target directory during extraction: open directory handles by relative path (made on demand)."""

    def __init__(self, target: Path) -> None:
        self.root = SafeDir.open(trusted_path(target), mine=True)
        self._dirs: dict[str, SafeDir] = {}

    def dir(self, rel: str, mode: int = 0o700) -> SafeDir:
        if not rel:
            return self.root
        d = self._dirs.get(rel)
        if d is None:
            d = self._dirs[rel] = self.root.subdir(rel, create=True, mode=mode)
        return d

    def open(self, rel: str, flags: int) -> int:
        """Open the file ``rel`` (its directories made on demand) without following a link."""
        parent, _, name = rel.rpartition("/")
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.dir(parent).fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise EngineError(f"{self.root.path / rel} is a symbolic link; refusing to follow it") from None
            raise

    def close(self) -> None:
        for d in self._dirs.values():
            d.close()
        self.root.close()


def extract_archive(
    stream: Any, target: Path, stats: ExtractStats | None = None, *, skip_wal_before: str | None = None
) -> dict[str, Any]:
    """Write every member of a drkit tar stream under ``target``; returns its manifest.

    A small tar reader of our own (headers parsed by ``tarfile.TarInfo.frombuf``): file bodies
    go ``readinto`` one reused 1 MiB buffer and straight to ``os.write``. tarfile's stream mode
    allocated fresh buffers for every read and made restores ~1.6x slower than ``tar -x``.
    WAL segments named before ``skip_wal_before`` are read past, not written (never replayed).
    ``target`` must be a directory of ours (see the module docstring); members that are not plain
    files or directories, or whose names leave it, are refused.
    """
    stats = stats or ExtractStats()
    manifest: dict[str, Any] | None = None
    buf = bytearray(_COPY_BUF)
    view = memoryview(buf)
    readinto = getattr(stream, "readinto", None)

    def copy_body(fd: int | None, size: int) -> None:
        left = size
        while left:
            want = min(left, _COPY_BUF)
            if readinto is not None:
                got = readinto(view[:want])
                chunk = view[:got]
            else:
                data = stream.read(want)
                got, chunk = len(data), memoryview(data)
            if not got:
                raise EOFError(f"member body ended {left} bytes early")
            if fd is not None:
                done = 0
                while done < got:
                    done += os.write(fd, chunk[done:got])
            left -= got

    pax: dict[str, str] = {}
    tree = _Tree(target)
    try:
        while True:
            header = _read_exact(stream, 512)
            if header == ZERO_BLOCK:
                break
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
                pax = _pax_records(_read_exact(stream, info.size))
                _read_exact(stream, -info.size % 512)
                continue
            name = pax.get("path", info.name)
            size = int(pax.get("size", info.size))
            pax = {}
            pad = -size % 512
            if name == MANIFEST_NAME or name.startswith(PAGES_PREFIX):
                payload = _read_exact(stream, size)
                _read_exact(stream, pad)
                if name == MANIFEST_NAME:
                    manifest = json.loads(payload)
                else:
                    fd = tree.open(_member(parse_pages_member(name)), os.O_RDWR | os.O_CREAT)
                    try:
                        stats.pages += apply_pages(name, payload, fd=fd)
                    finally:
                        os.close(fd)
                    stats.bytes += size
                continue
            if info.isdir():
                tree.dir(_member(name.rstrip("/")))
                continue
            name = _member(name)
            if not info.isreg():
                raise IntegrityError(f"archive member {name!r} is not a plain file or directory (tar type "
                                     f"{info.type!r}); drkit archives hold no links or devices, refusing it")
            if skip_wal_before is not None and name.startswith("pg_wal/") and len(name) == 31 \
                    and name[7:] < skip_wal_before:
                copy_body(None, size + pad)
                continue
            fd = tree.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                copy_body(fd, size)
            finally:
                os.close(fd)
            _read_exact(stream, pad)
            stats.files += 1
            stats.bytes += size
    except (EOFError, tarfile.TarError, ValueError) as exc:
        raise IntegrityError(f"backup archive is damaged or truncated: {exc}") from None
    finally:
        tree.close()
    if manifest is None:
        raise IntegrityError("backup archive has no manifest (truncated or not a drkit backup)")
    return manifest


def _open_target(target: Path) -> SafeDir:
    return SafeDir.open(trusted_path(target), mine=True)


def prepare_for_diff(target: Path) -> None:
    """Drop what the full brought that the diff replaces wholesale: its WAL and its label."""
    with _open_target(target) as root:
        st = root.lstat("pg_wal")
        if st is not None and stat.S_ISDIR(st.st_mode):
            with root.subdir("pg_wal") as wal:
                for name in wal.listdir():
                    entry = wal.lstat(name)
                    if entry is not None and not stat.S_ISDIR(entry.st_mode):
                        wal.unlink(name)
        for name in ("backup_label", "tablespace_map"):
            root.unlink(name)


def reconcile_with_manifest(target: Path, full_manifest: dict[str, Any], diff_manifest: dict[str, Any]) -> None:
    """Delete files the diff no longer has, fix every file's length, create and remove directories."""
    diff_files: dict[str, int] = diff_manifest["files"]
    with _open_target(target) as root:
        for rel in set(full_manifest["files"]) - set(diff_files):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                root.unlink(_member(rel))
        for rel, size in diff_files.items():
            try:
                st = root.lstat(_member(rel))
            except (FileNotFoundError, NotADirectoryError):
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                raise IntegrityError(f"diff manifest lists {rel} but neither the full nor the diff holds it")
            if st.st_size != size:
                root.truncate(rel, size)
        wanted_dirs = set(diff_manifest["dirs"])
        for rel in wanted_dirs:
            root.subdir(_member(rel), create=True).close()
        for rel in sorted(set(full_manifest["dirs"]) - wanted_dirs, key=len, reverse=True):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                root.remove(_member(rel))


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident_lines(os_user: str | None) -> str:
    """pg_ident map ``drkit``: root, drkit's own user and the OS user may be ``postgres``; others themselves."""
    users = dict.fromkeys(u for u in ("root", pwd.getpwuid(os.geteuid()).pw_name, os_user) if u)
    return "".join(f"drkit {u} postgres\n" for u in users) + "drkit /^(.*)$ \\1\n"


def write_recovery_config(
    target: Path,
    *,
    port: int,
    wal_dir: Path,
    target_time: datetime | None,
    immediate: bool,
    target_lsn: str | None = None,
    os_user: str | None = None,
) -> None:
    """Configure recovery: our port, no TCP, no archiving, WAL from ``wal_dir``, then promote.

    The server listens only on a Unix socket in the data directory (``listen_addresses = ''``,
    socket mode 0700 in a 0700 directory): whatever the backup's pg_hba.conf allows, only root
    and the OS user can reach it. When the backup holds no pg_hba.conf, peer authentication is
    written, with root and the OS user mapped to ``postgres``. Nothing is written through a link.
    """
    with _open_target(target) as root:
        if not root.exists("postgresql.conf"):
            root.write("postgresql.conf", b"# written by drkit restore: the source kept its config elsewhere\n")
        if not root.exists("pg_hba.conf"):
            root.write("pg_hba.conf", (
                b"# written by drkit restore: the backup held no pg_hba.conf. The server listens on the Unix\n"
                b"# socket in its data directory only; root and the OS user log in as postgres (map drkit).\n"
                b"local all all peer map=drkit\n"))
            root.write("pg_ident.conf", ("\n# written by drkit restore\n" + _ident_lines(os_user)).encode(),
                       append=True)
        elif not root.exists("pg_ident.conf"):
            root.write("pg_ident.conf", b"")
        settings: dict[str, str] = {
            "port": str(port),
            "listen_addresses": "",
            "unix_socket_directories": '"' + str(target).replace('"', '""') + '"',  # a list: quote the name
            "unix_socket_permissions": "0700",
            "archive_mode": "off",
            "restore_command": f"cp {shlex.quote(str(wal_dir)).replace('%', '%%')}/%f %p",
            "recovery_target_action": "promote",
            "primary_conninfo": "",
            "primary_slot_name": "",
            "hot_standby": "on",
        }
        if immediate:
            settings["recovery_target"] = "immediate"
        elif target_lsn is not None:
            settings["recovery_target_lsn"] = target_lsn
        elif target_time is not None:
            settings["recovery_target_time"] = target_time.astimezone(UTC).isoformat(sep=" ")
        lines = ["", "# drkit restore"] + [f"{k} = {_conf_quote(v)}" for k, v in settings.items()]
        root.write("postgresql.auto.conf", ("\n".join(lines) + "\n").encode(), append=True)
        root.unlink("standby.signal")
        root.write("recovery.signal", b"")
        root.subdir("pg_wal/archive_status", create=True).close()


def socket_path_problem(data_dir: Path, port: int) -> str | None:
    """Why PostgreSQL could not make its socket in ``data_dir`` (its path is limited to 107 bytes), or None."""
    sock = f"{data_dir}/.s.PGSQL.{port}"
    if len(sock.encode()) > 107:
        return (f"the server's socket {sock} would be {len(sock.encode())} bytes, over the 107 PostgreSQL "
                "allows; use a shorter directory path")
    return None


def finish_ownership(target: Path, os_user: str | None) -> None:
    """Hand the finished tree to the OS user (descriptor walk, links never followed), 0700."""
    with _open_target(target):
        pass  # still ours: nobody swapped it for something else
    chown_tree(target, os_user, mode=0o700)


_AUTH_FAILURES = ("authentication failed", "no pg_hba.conf entry", "no password supplied",
                  'role "postgres" does not exist')


def recover(cluster: LocalCluster, *, timeout: float = 1800) -> dict[str, Any]:
    """Start the restored cluster and wait until recovery has ended and it accepts writes."""
    cluster.start(wait_seconds=int(timeout))
    deadline = time.monotonic() + timeout
    pid_file = cluster.data_dir / "postmaster.pid"
    while True:
        if not pid_file.exists():
            raise RestoreError("the restored server stopped during recovery: " + " | ".join(cluster.log_tail(6)))
        try:
            with psycopg.connect(cluster.dsn(), autocommit=True, connect_timeout=5) as conn:
                in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if in_recovery is not None and not in_recovery[0]:
                    row = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
                    lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
                    return {"timeline": row[0] if row else None, "lsn": lsn[0] if lsn else None}
        except psycopg.OperationalError as exc:
            if any(s in str(exc) for s in _AUTH_FAILURES):
                raise RestoreError(
                    "the restored cluster's pg_hba.conf (from the backup) does not let drkit log in as postgres "
                    f"over the Unix socket in {cluster.data_dir}: allow `local all postgres` (trust, or peer "
                    f"with a map for {pwd.getpwuid(os.geteuid()).pw_name})") from None
        if time.monotonic() > deadline:
            raise RestoreError(f"recovery did not finish within {timeout:.0f}s: " + " | ".join(cluster.log_tail(6)))
        time.sleep(0.05)


# -- opening a restored cluster to clients ---------------------------------------------------------

_DRKIT_HBA_HEADER = b"# written by drkit restore: the backup held no pg_hba.conf"  # write_recovery_config
_CONF_KEY = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?")


@dataclass(frozen=True)
class OpenedCluster:
    """A restored cluster restarted with the backup's own listen and socket settings."""

    listen_addresses: str  # as the server now has it (``postgres -C``)
    peer_only: bool  # pg_hba.conf is drkit's peer-only one (the backup held none): TCP clients are refused
    removed: list[str]  # drkit's override lines taken out of postgresql.auto.conf (empty: opened before)

    @property
    def tcp_clients(self) -> str:
        if self.peer_only:
            return ("refused: the backup held no pg_hba.conf and drkit's allows only local peer logins; "
                    "provide a pg_hba.conf, then SELECT pg_reload_conf()")
        return "as the backup's own pg_hba.conf allows"


def hba_is_drkit_peer_only(data_dir: Path) -> bool:
    """Whether the restored cluster's pg_hba.conf is the peer-only one drkit wrote (the backup held none)."""
    with SafeDir.open(trusted_path(data_dir)) as root:
        return (root.read("pg_hba.conf") or b"").startswith(_DRKIT_HBA_HEADER)


def _without_socket_overrides(text: str, data_dir: Path) -> tuple[str, list[str]]:
    """``postgresql.auto.conf`` without the listen/socket lines write_recovery_config added.

    For each key the last setting wins, so only a last setting that is exactly drkit's is removed; a
    value someone set later (ALTER SYSTEM) stays, and so do the backup's own earlier ones.
    """
    ours = {
        "listen_addresses": "",
        "unix_socket_directories": '"' + str(data_dir).replace('"', '""') + '"',
        "unix_socket_permissions": "0700",
    }
    lines = text.splitlines()
    drop: list[int] = []
    for key, value in ours.items():
        last = None
        for i, line in enumerate(lines):
            m = _CONF_KEY.match(line)
            if m and not line.lstrip().startswith("#") and m.group(1).lower() == key:
                last = i
        if last is not None and lines[last].strip() == f"{key} = {_conf_quote(value)}":
            drop.append(last)
    removed = [lines[i].strip() for i in sorted(drop)]
    kept = [ln for i, ln in enumerate(lines) if i not in drop]
    if removed:
        kept.append(f"# drkit: opened to clients at {datetime.now(UTC):%Y-%m-%d %H:%M:%SZ}: listen and socket "
                    "settings are the backup's own again")
    return "\n".join(kept) + "\n", removed


def _postmaster_status(root: SafeDir) -> str | None:
    """The status line of postmaster.pid ('starting', 'ready', …), '' before it is written; None: no server."""
    try:
        data = root.read("postmaster.pid", limit=1 << 16)
    except EngineError:
        return None
    if data is None:
        return None
    lines = data.decode(errors="replace").splitlines()
    return lines[7].strip() if len(lines) > 7 else ""


def open_to_clients(cluster: LocalCluster, *, timeout: float = 300) -> OpenedCluster:
    """Restart a restored cluster with the backup's own listen and socket settings; wait until TCP answers.

    Removes drkit's ``listen_addresses = ''`` and socket overrides from postgresql.auto.conf (written
    through safedir: a link in the data directory is replaced, never followed), so the backup's own
    postgresql.conf and postgresql.auto.conf apply (PostgreSQL's default ``localhost`` when they set
    none). pg_hba.conf is left as it is: the backup's own, or drkit's peer-only one when the backup held
    none, which refuses every TCP client (never relaxed here). Then the server is restarted on the same
    port and polled until ``127.0.0.1:port`` accepts connections. On failure it is stopped.
    """
    data_dir = trusted_path(cluster.data_dir)
    with SafeDir.open(data_dir) as root:
        if not root.exists("PG_VERSION"):
            raise RestoreError(f"{data_dir} holds no PostgreSQL cluster")
        if root.exists("recovery.signal") or root.exists("standby.signal"):
            raise RestoreError(f"{data_dir} is still in recovery; open it to clients once it is promoted")
        st = os.fstat(root.fd)
        current = (root.read("postgresql.auto.conf") or b"").decode("utf-8", "surrogateescape")
        text, removed = _without_socket_overrides(current, data_dir)
        if removed:
            root.replace("postgresql.auto.conf", text.encode("utf-8", "surrogateescape"),
                         owner=(st.st_uid, st.st_gid) if os.geteuid() == 0 else None)
        peer_only = (root.read("pg_hba.conf") or b"").startswith(_DRKIT_HBA_HEADER)
    try:
        cluster.stop()
        cluster.start(wait_seconds=int(timeout))
        listen = _show(cluster, "listen_addresses")
        if not listen:
            raise RestoreError(f"the backup's own configuration sets listen_addresses = '' (no TCP); set it in "
                               f"{data_dir}/postgresql.conf and start the server")
        _wait_accepting(cluster, data_dir, listen, timeout)
    except BaseException as exc:
        cluster.stop("immediate")
        if isinstance(exc, DrkitError):
            raise RestoreError(f"could not open the restored cluster in {data_dir} to clients: {exc} "
                               "(it is stopped)") from None
        raise
    return OpenedCluster(listen_addresses=listen, peer_only=peer_only, removed=removed)


def _show(cluster: LocalCluster, name: str) -> str:
    """A setting as the server's configuration files give it (``postgres -C``, also while it runs)."""
    proc = run_as(cluster.os_user, [str(cluster.bin_dir / "postgres"), "-C", name, "-D", str(cluster.data_dir)],
                  timeout=60)
    return proc.stdout.strip()


def _wait_accepting(cluster: LocalCluster, data_dir: Path, listen: str, timeout: float) -> None:
    """Poll ``127.0.0.1:port`` (libpq's ping: no credentials needed) until the server accepts connections."""
    conninfo = make_conninfo(host="127.0.0.1", port=str(cluster.port), dbname="postgres", user="postgres",
                             connect_timeout="5").encode()
    deadline = time.monotonic() + timeout
    with SafeDir.open(data_dir) as root:
        while True:
            status = _postmaster_status(root)
            if status is None:
                raise RestoreError("the server stopped: " + " | ".join(cluster.log_tail(6)))
            ping = pq.PGconn.ping(conninfo)
            if ping == pq.Ping.OK:
                return
            if ping == pq.Ping.NO_RESPONSE and status == "ready":
                raise RestoreError(f"nothing accepts connections on 127.0.0.1:{cluster.port}: the backup's "
                                   f"listen_addresses is {listen!r}; include localhost (or *) in it")
            if ping == pq.Ping.NO_ATTEMPT:
                raise RestoreError(f"cannot try to connect to 127.0.0.1:{cluster.port}")
            if time.monotonic() > deadline:
                raise RestoreError(f"127.0.0.1:{cluster.port} did not accept connections within {timeout:.0f}s: "
                                   + " | ".join(cluster.log_tail(4)))
            time.sleep(0.05)
