"""Building the DR replica from the primary (``drkit replica create``): prerequisites, the directory, the build.

:func:`provision_standby` looks before it touches anything:

1. the primary's prerequisites for streaming replication (``wal_level``, free WAL senders and slots, a role
   with REPLICATION, a ``replication`` line in its pg_hba.conf for this host, its configuration inside its
   data directory so a base backup carries it): each missing one is named with its fix, all in one line,
   and nothing is done (:class:`~drkit.errors.PrerequisiteError`). What pg_rewind will need at failback
   (``wal_log_hints`` or data checksums, ``full_page_writes``) is a warning: without it a failback
   rebuilds the old primary from a full base backup instead of rewinding it;
2. what the replica's data directory holds (:func:`inspect_data_dir`): nothing (build it), a replica of
   this primary (start it, or leave a streaming one alone), an interrupted base backup of this primary
   (cleared and redone), or anything else — another cluster, a primary, a promoted replica, foreign files,
   a link another user planted on the way — which is refused (:class:`~drkit.errors.ConfigError`) and left
   exactly as it was.

The build itself is :func:`drkit.engines.postgres.replica.create_standby` (``pg_basebackup -R -X stream
-C -S slot`` as the postgres OS user, the node's port and slot, start, wait until it streams). The
password of the DSN reaches pg_basebackup through its environment, never its command line, and is
never written into the replica's ``primary_conninfo``: the replica logs in with the DSN's ``passfile``
or the postgres OS user's ``~/.pgpass`` (or without a password where pg_hba.conf allows it).
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drkit.engines.postgres import replica
from drkit.engines.postgres.pgctl import LocalCluster
from drkit.engines.postgres.probe import dsn_target
from drkit.errors import ConfigError, EngineError, PrerequisiteError
from drkit.safedir import SafeDir, trusted_path

log = logging.getLogger(__name__)

DirState = Literal["absent", "empty", "standby", "interrupted"]
Outcome = Literal["created", "started", "already streaming"]
BASE_BACKUP_SENDERS = 2
"""WAL senders a base backup takes while it runs: one sends the files, one streams the WAL (``-X stream``)."""

# -- the primary -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrimaryFacts:
    """What the primary says about itself, read once (read-only queries and one replication login)."""

    target: str
    in_recovery: bool
    system_identifier: str
    role: str
    can_replicate: bool
    settings: dict[str, str]
    senders_in_use: int
    slots_in_use: int
    slot_type: str | None
    slot_active: bool
    replication_login: str | None
    """None: a replication connection from this host was accepted; else the server's first error line."""

    def problems(self, *, senders_needed: int, slot: str) -> list[str]:
        """Each unmet prerequisite for ``senders_needed`` new WAL senders, as 'what (fix: how)'."""
        out: list[str] = []
        s = self.settings
        if self.in_recovery:
            out.append(f"{self.target} is in recovery, a standby: a replica is built from the primary "
                       "(after a failover, `drkit failback` makes the old primary a replica again)")
        if s.get("wal_level") not in ("replica", "logical"):
            out.append(f"wal_level is {s.get('wal_level')!r} (fix: ALTER SYSTEM SET wal_level = 'replica', "
                       "then restart the primary)")
        senders = int(s.get("max_wal_senders", "0"))
        if senders - self.senders_in_use < senders_needed:
            out.append(f"max_wal_senders is {senders} with {self.senders_in_use} in use, {senders_needed} more "
                       f"needed (fix: ALTER SYSTEM SET max_wal_senders = {max(10, self.senders_in_use + 4)}, "
                       "then restart the primary)")
        slots = int(s.get("max_replication_slots", "0"))
        if self.slot_type is None and self.slots_in_use >= slots:
            out.append(f"max_replication_slots is {slots} with {self.slots_in_use} in use, one more needed for "
                       f"slot {slot!r} (fix: ALTER SYSTEM SET max_replication_slots = "
                       f"{max(10, self.slots_in_use + 2)}, then restart the primary)")
        if self.slot_type is not None and self.slot_type != "physical":
            out.append(f"slot {slot!r} on {self.target} is a {self.slot_type} slot (fix: name another "
                       "replica.slot, or drop it)")
        if not self.can_replicate:
            out.append(f"role {self.role!r} may not replicate (fix: ALTER ROLE {_ident(self.role)} REPLICATION)")
        if self.replication_login is not None:
            if "pg_hba.conf" in self.replication_login:
                out.append(f"the primary's pg_hba.conf has no replication line for role {self.role!r} from this "
                           f"host (fix: add `host replication {self.role} <this host's address>/32 "
                           "scram-sha-256` and SELECT pg_reload_conf()): " + self.replication_login)
            elif self.can_replicate:
                out.append("a replication connection to the primary was refused: " + self.replication_login)
        config_file, data_directory = s.get("config_file"), s.get("data_directory")
        if config_file and data_directory and Path(config_file).parent != Path(data_directory):
            out.append(f"the primary's postgresql.conf ({config_file}) is outside its data directory, so a base "
                       "backup does not carry it (fix: build the replica with your distribution's tools, e.g. "
                       "pg_createcluster then pg_basebackup into it, and name its data_dir here)")
        return out

    def warnings(self) -> list[str]:
        """What pg_rewind will lack at failback: a rewind then becomes a full rebuild."""
        s = self.settings
        rewind_ok = (s.get("wal_log_hints") == "on" or s.get("data_checksums") == "on") \
            and s.get("full_page_writes", "on") == "on"
        if rewind_ok:
            return []
        return [f"pg_rewind cannot run on this cluster (wal_log_hints={s.get('wal_log_hints')}, "
                f"data_checksums={s.get('data_checksums')}, full_page_writes={s.get('full_page_writes')}): "
                "a failback will rebuild the old primary from a full base backup instead of rewinding it; "
                "ALTER SYSTEM SET wal_log_hints = 'on' and restart the primary to allow rewind"]


def _ident(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def _replication_login(dsn: str, timeout: float) -> str | None:
    """Open a physical replication connection as the standby will (from this host); None when accepted."""
    conninfo = make_conninfo(dsn, replication="true", connect_timeout=str(max(2, int(timeout))),
                             application_name="drkit-check")
    conn = pq.PGconn.connect(conninfo.encode())
    try:
        if conn.status != pq.ConnStatus.OK:
            text = conn.get_error_message().strip()
            return text.splitlines()[-1].strip() if text else "connection failed"
        res = conn.exec_(b"IDENTIFY_SYSTEM")
        if res.status != pq.ExecStatus.TUPLES_OK:
            return (res.get_error_message().strip() or "IDENTIFY_SYSTEM failed").splitlines()[0]
        return None
    finally:
        conn.finish()


def primary_facts(primary_dsn: str, slot: str, *, timeout: float = 10.0) -> PrimaryFacts:
    """Read what :meth:`PrimaryFacts.problems` and :meth:`PrimaryFacts.warnings` judge. Changes nothing."""
    names = ("wal_level", "max_wal_senders", "max_replication_slots", "wal_log_hints", "data_checksums",
             "full_page_writes", "config_file", "data_directory")
    with replica.session(primary_dsn, timeout=timeout, statement_timeout=timeout) as conn:
        settings = {str(k): str(v) for k, v in conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [list(names)]).fetchall()}
        row = replica.query_row(conn, "SELECT pg_is_in_recovery(), "
                                      "(SELECT system_identifier FROM pg_control_system()), current_user, "
                                      "(SELECT rolsuper OR rolreplication FROM pg_roles "
                                      "WHERE rolname = current_user), "
                                      "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'), "
                                      "(SELECT count(*) FROM pg_replication_slots)")
        in_rec, sysid, role, can_replicate, senders, slots = row
        slot_row = conn.execute("SELECT slot_type, active FROM pg_replication_slots WHERE slot_name = %s",
                                [slot]).fetchone()
    return PrimaryFacts(
        target=dsn_target(primary_dsn), in_recovery=bool(in_rec), system_identifier=str(sysid), role=str(role),
        can_replicate=bool(can_replicate), settings=settings, senders_in_use=int(senders), slots_in_use=int(slots),
        slot_type=None if slot_row is None else str(slot_row[0]), slot_active=bool(slot_row and slot_row[1]),
        replication_login=_replication_login(primary_dsn, timeout))


def standby_conninfo(primary_dsn: str) -> str:
    """The replica's ``primary_conninfo``: the primary's DSN without its password (a ``passfile`` is kept)."""
    params = conninfo_to_dict(primary_dsn)
    params.pop("password", None)
    return make_conninfo("", **params)


def is_this_host(host: str) -> bool:
    """Whether a DSN's ``host`` is this machine: a Unix socket directory, or a name whose addresses bind here."""
    if not host or host.startswith("/") or host.startswith("@"):
        return True
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for family, _, _, _, addr in infos:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((addr[0], 0))  # only an address of one of this machine's interfaces binds
            except OSError:
                continue
            return True
    return False


# -- the replica's directory -----------------------------------------------------------------------


def _refuse(key: str, path: Path, what: str) -> ConfigError:
    return ConfigError(f"{key}: {path} {what}; refusing to overwrite it, nothing was changed (move it away or "
                       "point the key at another directory, then rerun)")


def _system_identifier(cluster: LocalCluster, key: str) -> str:
    """The cluster's system identifier, read from its pg_control by ``pg_controldata`` (as the OS user)."""
    try:
        sysid = replica.control_data(cluster).get("Database system identifier")
    except EngineError as exc:
        raise _refuse(key, cluster.data_dir, f"holds a cluster whose pg_control drkit cannot read ({exc})") from None
    if not sysid:
        raise _refuse(key, cluster.data_dir, "holds a cluster whose pg_control names no system identifier")
    return sysid


def inspect_data_dir(cluster: LocalCluster, *, key: str, primary_sysid: str,
                     primary_data_dir: Path | None) -> tuple[DirState, Path]:
    """What ``cluster.data_dir`` holds, and its resolved path; raises ConfigError for anything not ours to use.

    Reads only: ``lstat``, directory listings, ``pg_controldata`` and ``pg_ctl status``. An interrupted base
    backup is recognised by what pg_basebackup leaves: the OS user's directory with ``backup_label`` and no
    ``global/pg_control`` yet (it is copied last), no ``standby.signal`` and no ``recovery.signal``.
    """
    try:
        path = trusted_path(cluster.data_dir)
    except EngineError as exc:
        raise ConfigError(f"{key}: {exc}; nothing was changed") from None
    if primary_data_dir is not None and path == primary_data_dir.resolve():
        raise _refuse(key, path, "is the primary's own data directory")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent", path
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(key, path, "is not a directory")
    try:
        with SafeDir.open(path) as d:
            names = set(d.listdir())
            has_control = bool(names) and d.exists("global/pg_control")
    except EngineError as exc:
        raise ConfigError(f"{key}: {exc}; nothing was changed") from None
    if not names:
        return "empty", path
    if "PG_VERSION" not in names:
        raise _refuse(key, path, "is not empty and holds no PostgreSQL cluster")
    here = LocalCluster(path, cluster.port, cluster.bin_dir, cluster.os_user, log_file=cluster.log_file)
    if not has_control:
        owner = pwd.getpwnam(cluster.os_user).pw_uid if cluster.os_user else os.geteuid()
        if {"backup_label"} <= names and not names & {"standby.signal", "recovery.signal"} \
                and st.st_uid == owner and not here.is_running():
            return "interrupted", path
        raise _refuse(key, path, "holds an incomplete cluster (no global/pg_control) that is not a base backup "
                                 "drkit left unfinished")
    sysid = _system_identifier(here, key)
    if sysid != primary_sysid:
        raise _refuse(key, path, f"holds another cluster (system identifier {sysid}; the primary's is "
                                 f"{primary_sysid})")
    if "standby.signal" in names:
        return "standby", path
    if here.is_running():
        raise _refuse(key, path, "holds a running server that is not a replica (no standby.signal): a primary")
    raise _refuse(key, path, "holds a cluster that is not a replica (no standby.signal): a primary, a promoted "
                             "replica or a restore")


def _make_data_dir(path: Path, os_user: str | None) -> None:
    """Create ``path`` (0700, the OS user's) through directory descriptors: no link on the way is followed."""
    with SafeDir.open(path.parent, create=True, mode=0o755) as parent, \
            parent.subdir(path.name, create=True, mode=0o700) as made:
        if made.listdir():
            raise EngineError(f"{path} was written to while drkit was creating it; refusing to use it")
        if os_user and os.geteuid() == 0:
            pw = pwd.getpwnam(os_user)
            os.fchown(made.fd, pw.pw_uid, pw.pw_gid)
        os.fchmod(made.fd, 0o700)


# -- the build -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provisioned:
    outcome: Outcome
    cluster: LocalCluster
    warnings: tuple[str, ...]
    seconds: float


def _login_hint(cluster: LocalCluster, exc: EngineError) -> EngineError:
    """A replica that cannot log in (replica.wait_streaming read it in its log) is told what to do about it."""
    if "cannot log in to its source" not in str(exc):
        return exc
    return replica.ReplicaError(
        f"the replica in {cluster.data_dir} cannot log in to the primary: drkit writes no password into its "
        "primary_conninfo; put the role's password in the postgres OS user's ~/.pgpass (0600) or in a "
        "passfile named in the DSN (passfile=...), then rerun `drkit replica create` (it starts the replica)")


def provision_standby(
    primary_dsn: str,
    *,
    data_dir: Path,
    port: int,
    slot: str,
    bin_dir: Path,
    os_user: str | None,
    key: str,
    primary_data_dir: Path | None = None,
    log_file: Path | None = None,
    timeout: float = 3600.0,
) -> Provisioned:
    """Make ``data_dir`` a replica of ``primary_dsn`` streaming through ``slot`` on ``port`` (see the module)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    facts = primary_facts(primary_dsn, slot, timeout=min(10.0, timeout))
    cluster = LocalCluster(Path(data_dir), port, bin_dir, os_user, log_file=log_file)
    state, path = inspect_data_dir(cluster, key=key, primary_sysid=facts.system_identifier,
                                   primary_data_dir=primary_data_dir)
    cluster = LocalCluster(path, port, bin_dir, os_user, log_file=log_file or cluster.log_path)
    warnings = tuple(facts.warnings())
    conninfo = standby_conninfo(primary_dsn)

    running = state == "standby" and cluster.is_running()
    if running and not facts.in_recovery \
            and replica.streams_from(cluster, primary_dsn, replica.current_timeline(primary_dsn)):
        return Provisioned("already streaming", cluster, warnings, time.monotonic() - t0)

    building = state != "standby"
    needed = 0 if running else (BASE_BACKUP_SENDERS if building else 1)
    problems = facts.problems(senders_needed=needed, slot=slot)
    if facts.slot_active and not running:
        problems.append(f"slot {slot!r} on {facts.target} is in use by another standby (fix: name another "
                        "replica.slot)")
    if problems:
        raise PrerequisiteError(f"cannot build the replica from {facts.target}: " + "; ".join(problems))

    def remaining() -> float:
        return max(5.0, deadline - time.monotonic())

    try:
        if not building:
            log.info("%s holds a replica of %s: starting it", path, facts.target)
            replica.start_existing_standby(cluster, slot=slot, primary_conninfo=conninfo, timeout=remaining(),
                                           primary_dsn=primary_dsn)
            return Provisioned("started", cluster, warnings, time.monotonic() - t0)
        if state == "absent":
            _make_data_dir(path, os_user)
        replica.create_standby(primary_dsn, data_dir=path, port=port, slot=slot, bin_dir=bin_dir, os_user=os_user,
                               timeout=remaining(), log_file=cluster.log_path, primary_conninfo=conninfo)
    except EngineError as exc:
        raise _login_hint(cluster, exc) from None
    return Provisioned("created", cluster, warnings, time.monotonic() - t0)

