"""PostgreSQL replica primitives for the DR runbooks: standby, lag, fence, promote, rewind, switchover.

Every function here is idempotent (a runbook re-run after a crash calls it
again and it continues or does nothing) and every wait is bounded: on timeout
it raises :class:`ReplicaTimeout` saying what it saw last, never loops forever.

The measured pitfalls these functions handle:

* **CHECKPOINT after promotion.** ``pg_promote()`` does not update pg_control's
  timeline until the next checkpoint; pg_rewind against such a source says "no
  rewind required" and the rewound node then loops with "requested starting point
  … is not in this server's history". :func:`promote` always checkpoints, and
  :func:`ensure_checkpoint_after_promotion` repairs a promotion that crashed
  before it (rewind calls it on the source). :func:`wait_streaming` reads the
  node's log and fails fast with :class:`TimelineDivergedError` on that loop.
* **pg_rewind copies the source's configuration**, ``postgresql.auto.conf``
  included: :func:`apply_node_settings` re-writes the node's own ``port``,
  ``primary_slot_name`` and ``cluster_name`` afterwards.
* **Server binaries run as the postgres OS user** (``run_as``); pg_rewind refuses root.
* **Slots are not copied** by pg_basebackup or pg_rewind: :func:`ensure_slot` creates
  the standby's slot on its source, and :func:`drop_stale_slots` removes inactive
  physical slots that would pin WAL.

The node's own identity (port, slot) lives in ``postgresql.auto.conf`` under
keys drkit owns; ``cluster_name`` is set to the slot name so the standby's
``application_name`` in ``pg_stat_replication`` is the slot name as well.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drkit.engines.postgres.lsn import format_lsn, parse_lsn
from drkit.engines.postgres.pgctl import LocalCluster, make_owned_dir, run_as
from drkit.engines.postgres.probe import dsn_target
from drkit.errors import DatabaseUnreachableError, EngineError
from drkit.safedir import SafeDir, open_leaf, trusted_path

log = logging.getLogger(__name__)

RewindOutcome = Literal["rewound", "no rewind required", "rebuilt", "resumed", "already streaming"]
FenceAction = Literal["stopped", "already down", "unreachable", "fenced read-only", "not a primary"]

HEARTBEAT_TABLE = "drkit_heartbeat"
POLL = 0.1


class ReplicaError(EngineError):
    """A replica operation failed; the message says what was seen and what to do."""


class ReplicaTimeout(ReplicaError):
    """A bounded wait ran out; the message says what was seen last."""


class TimelineDivergedError(ReplicaError):
    """A standby cannot follow its source: it has WAL past the point where the source's timeline forked off.

    Usual cause: pg_rewind ran against a source that had not checkpointed after promotion ("no rewind
    required"). Fix: CHECKPOINT on the source and rewind again, or rebuild the standby.
    """


class RewindError(ReplicaError):
    """pg_rewind failed (the target is then unusable until rebuilt)."""


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lag:
    """How far a standby is behind.

    From the primary (:func:`replication_lag`): ``bytes`` = primary's current LSN − standby's replay LSN,
    ``seconds`` = pg_stat_replication.replay_lag (0 when idle and caught up, None when unknown),
    ``state`` = pg_stat_replication.state ('streaming', 'catchup', …), or 'disconnected' (slot exists, no
    walsender; ``bytes`` then counts from the slot's restart LSN) or 'absent' (neither).

    From the standby (:func:`standby_lag`, for when the primary is gone): ``bytes`` = received − replayed,
    ``seconds`` = now() − pg_last_xact_replay_timestamp() (grows while the primary is idle: it is the age
    of the newest replayed transaction), ``state`` = pg_stat_wal_receiver.status, 'disconnected' (no WAL
    receiver) or 'primary' (not in recovery).
    """

    source: Literal["primary", "standby"]
    name: str
    state: str
    bytes: int | None
    seconds: float | None
    replay_lsn: int | None = None
    sent_lsn: int | None = None
    flush_lsn: int | None = None
    receive_lsn: int | None = None
    primary_lsn: int | None = None
    last_replay_at: datetime | None = None
    measured_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        def lsn(v: int | None) -> str | None:
            return None if v is None else format_lsn(v)

        return {
            "source": self.source, "name": self.name, "state": self.state, "bytes": self.bytes,
            "seconds": self.seconds, "replay_lsn": lsn(self.replay_lsn), "sent_lsn": lsn(self.sent_lsn),
            "flush_lsn": lsn(self.flush_lsn), "receive_lsn": lsn(self.receive_lsn),
            "primary_lsn": lsn(self.primary_lsn),
            "last_replay_at": self.last_replay_at.isoformat() if self.last_replay_at else None,
            "measured_at": self.measured_at.isoformat() if self.measured_at else None,
        }


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` did. ``seconds`` is the pg_promote() wait (0 when already primary)."""

    timeline: int
    lsn: int
    seconds: float
    already_primary: bool
    checkpointed: bool
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"timeline": self.timeline, "lsn": format_lsn(self.lsn), "seconds": round(self.seconds, 3),
                "already_primary": self.already_primary, "checkpointed": self.checkpointed,
                "at": self.at.isoformat()}


@dataclass(frozen=True)
class Fence:
    action: FenceAction
    detail: str


# -- connections and small queries -----------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _connect(dsn: str, *, timeout: float = 10.0, statement_timeout: float | None = None) -> psycopg.Connection[Any]:
    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": max(2, int(timeout + 0.999)),
                              "application_name": "drkit"}
    if statement_timeout is not None:
        kwargs["options"] = f"-c statement_timeout={max(1, int(statement_timeout * 1000))}"
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.Error as exc:
        raise DatabaseUnreachableError(f"cannot connect to {dsn_target(dsn)}: {_first_line(exc)}") from None


@contextmanager
def session(dsn: str, *, timeout: float = 10.0, statement_timeout: float | None = None
            ) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection as drkit (one connect timeout, an optional statement timeout), closed after;
    a server that cannot be reached is a DatabaseUnreachableError naming it (never its password)."""
    conn = _connect(dsn, timeout=timeout, statement_timeout=statement_timeout)
    try:
        yield conn
    finally:
        conn.close()


def command_line_conninfo(dsn: str) -> tuple[str, dict[str, str]]:
    """Split ``dsn`` for a server binary: (conninfo without the password, environment carrying it).

    A command line is readable by every local user (ps, /proc/*/cmdline); the environment of a process is
    not. libpq reads PGPASSWORD like the DSN's password, so pg_basebackup -R and pg_rewind -R still write
    it into the node's primary_conninfo (in its 0600 postgresql.auto.conf), and the standby can connect.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ReplicaError(f"invalid DSN for {dsn_target(dsn)}") from None
    password = params.pop("password", None)
    return make_conninfo("", **params), ({"PGPASSWORD": str(password)} if password else {})


def query_row(conn: psycopg.Connection[Any], query: str, params: Any = None) -> tuple[Any, ...]:
    """The one row ``query`` returns (ReplicaError when it returns none)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise ReplicaError(f"no row from: {query}")
    return tuple(row)


def _in_recovery(conn: psycopg.Connection[Any]) -> bool:
    return bool(query_row(conn, "SELECT pg_is_in_recovery()")[0])


def _timelines(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(current timeline, timeline in pg_control's latest checkpoint) of a primary."""
    name, ckpt_tli = query_row(conn, "SELECT pg_walfile_name(pg_current_wal_lsn()), "
                                "(SELECT timeline_id FROM pg_control_checkpoint())")
    return int(str(name)[:8], 16), int(ckpt_tli)


def _current_lsn(conn: psycopg.Connection[Any]) -> int:
    return parse_lsn(str(query_row(conn, "SELECT pg_current_wal_lsn()::text")[0]))


def _lsn(value: Any) -> int | None:
    return None if value is None else parse_lsn(str(value))


def current_timeline(dsn: str, *, timeout: float = 10.0) -> int:
    """The timeline a server is on: a primary's insert timeline, a standby's last received one."""
    with session(dsn, timeout=timeout, statement_timeout=timeout) as conn:
        if not _in_recovery(conn):
            return _timelines(conn)[0]
        tli = query_row(conn, "SELECT coalesce((SELECT received_tli FROM pg_stat_wal_receiver), "
                         "(SELECT timeline_id FROM pg_control_checkpoint()))")[0]
        return int(tli)


def ensure_checkpoint_after_promotion(dsn: str, *, timeout: float = 120.0) -> bool:
    """CHECKPOINT a primary whose pg_control still names an older timeline. True when one was needed.

    This is what makes pg_rewind see the promotion; it is cheap and harmless to call on any primary.
    """
    with session(dsn, timeout=min(timeout, 10), statement_timeout=timeout) as conn:
        if _in_recovery(conn):
            raise ReplicaError(f"{dsn_target(dsn)} is a standby (in recovery): it cannot be a rewind source")
        tli, ckpt_tli = _timelines(conn)
        if ckpt_tli >= tli:
            return False
        log.info("CHECKPOINT on %s: pg_control says timeline %d, server is on %d", dsn_target(dsn), ckpt_tli, tli)
        conn.execute("CHECKPOINT")
        tli, ckpt_tli = _timelines(conn)
        if ckpt_tli < tli:
            raise ReplicaError(f"{dsn_target(dsn)}: CHECKPOINT ran but pg_control still says timeline {ckpt_tli}")
        return True


def ensure_slot(dsn: str, slot: str, *, timeout: float = 10.0) -> bool:
    """Create physical replication slot ``slot`` on ``dsn`` (reserving WAL now) unless it exists. True if created."""
    with session(dsn, timeout=timeout, statement_timeout=timeout) as conn:
        row = conn.execute("SELECT slot_type FROM pg_replication_slots WHERE slot_name = %s", [slot]).fetchone()
        if row is not None:
            if row[0] != "physical":
                raise ReplicaError(f"slot {slot!r} on {dsn_target(dsn)} is a {row[0]} slot, not physical")
            return False
        try:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", [slot])
        except pgerrors.DuplicateObject:
            return False
        return True


def drop_stale_slots(dsn: str, keep: Collection[str], *, timeout: float = 10.0) -> list[str]:
    """Drop inactive *physical* slots not in ``keep`` (they pin WAL forever). Returns the dropped names.

    Active slots are never dropped; logical slots (CDC tools) are left alone.
    """
    dropped: list[str] = []
    with session(dsn, timeout=timeout, statement_timeout=timeout) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'physical' AND NOT active "
            "ORDER BY slot_name").fetchall()]
        for name in names:
            if name in keep:
                continue
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", [name])
            except (pgerrors.ObjectInUse, pgerrors.UndefinedObject):
                continue  # became active meanwhile, or someone else dropped it
            log.info("dropped stale replication slot %s on %s", name, dsn_target(dsn))
            dropped.append(name)
    return dropped


# -- lag -------------------------------------------------------------------------------------------


def replication_lag(primary_dsn: str, name: str, *, timeout: float = 10.0) -> Lag:
    """Lag of the standby whose slot or application_name is ``name``, as the primary sees it."""
    with session(primary_dsn, timeout=timeout, statement_timeout=timeout) as conn:
        cur_expr = ("CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() "
                    "ELSE pg_current_wal_lsn() END")
        row = conn.execute(
            f"SELECT r.state, r.sent_lsn::text, r.flush_lsn::text, r.replay_lsn::text, ({cur_expr})::text, "
            "extract(epoch FROM r.replay_lag)::float8, "
            f"pg_wal_lsn_diff(({cur_expr}), r.replay_lsn)::bigint "
            "FROM pg_stat_replication r LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid "
            "WHERE s.slot_name = %(n)s OR r.application_name = %(n)s "
            "ORDER BY (s.slot_name IS NOT DISTINCT FROM %(n)s) DESC LIMIT 1", {"n": name}).fetchone()
        now = datetime.now(UTC)
        if row is not None:
            state, sent, flush, replay, cur, lag_s, lag_b = row
            seconds = float(lag_s) if lag_s is not None else (0.0 if lag_b == 0 else None)
            return Lag("primary", name, str(state), None if lag_b is None else int(lag_b), seconds,
                       replay_lsn=_lsn(replay), sent_lsn=_lsn(sent), flush_lsn=_lsn(flush),
                       primary_lsn=_lsn(cur), measured_at=now)
        slot = conn.execute(
            f"SELECT restart_lsn::text, ({cur_expr})::text, pg_wal_lsn_diff(({cur_expr}), restart_lsn)::bigint "
            "FROM pg_replication_slots WHERE slot_name = %s", [name]).fetchone()
        if slot is not None:
            restart, cur, behind = slot
            return Lag("primary", name, "disconnected", None if behind is None else int(behind), None,
                       replay_lsn=_lsn(restart), primary_lsn=_lsn(cur), measured_at=now)
        cur = query_row(conn, f"SELECT ({cur_expr})::text")[0]
        return Lag("primary", name, "absent", None, None, primary_lsn=_lsn(cur), measured_at=now)


def standby_lag(standby_dsn: str, *, timeout: float = 10.0) -> Lag:
    """Lag as the standby itself sees it: usable when the primary is dead."""
    with session(standby_dsn, timeout=timeout, statement_timeout=timeout) as conn:
        row = query_row(conn,
                   "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
                   "pg_last_xact_replay_timestamp(), "
                   "extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, "
                   "pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint, "
                   "(SELECT status FROM pg_stat_wal_receiver), now()")
    in_rec, recv, replay, replay_ts, age, behind, status, now = row
    target = dsn_target(standby_dsn)
    if not in_rec:
        return Lag("standby", target, "primary", 0, 0.0, measured_at=now)
    bytes_behind = None if behind is None else max(0, int(behind))
    return Lag("standby", target, str(status) if status else "disconnected", bytes_behind,
               None if age is None else max(0.0, float(age)), replay_lsn=_lsn(replay), receive_lsn=_lsn(recv),
               last_replay_at=replay_ts, measured_at=now)


def wait_caught_up(primary_dsn: str, name: str, *, target_lsn: int | None = None, timeout: float = 60.0) -> int:
    """Wait until the standby ``name`` (slot or application_name) has replayed ``target_lsn``.

    ``target_lsn`` defaults to the primary's current LSN when called ("lag 0"). Returns the replay LSN.
    The replay position reaches the primary with the standby's feedback (``wal_receiver_status_interval``,
    which :func:`apply_node_settings` sets to 1 s).
    """
    deadline = time.monotonic() + timeout
    if target_lsn is None:
        with session(primary_dsn, timeout=min(timeout, 10), statement_timeout=10) as conn:
            target_lsn = (_current_lsn(conn) if not _in_recovery(conn)
                          else parse_lsn(str(query_row(conn, "SELECT pg_last_wal_receive_lsn()::text")[0])))
    last: Lag | None = None
    while True:
        last = replication_lag(primary_dsn, name, timeout=min(10, max(1.0, deadline - time.monotonic())))
        if last.state not in ("disconnected", "absent") and last.replay_lsn is not None \
                and last.replay_lsn >= target_lsn:
            return last.replay_lsn
        if time.monotonic() >= deadline:
            seen = format_lsn(last.replay_lsn) if last.replay_lsn is not None else "nothing"
            raise ReplicaTimeout(
                f"standby {name!r} did not replay {format_lsn(target_lsn)} within {timeout:g}s: "
                f"state {last.state}, replayed {seen}, {last.bytes} bytes behind")
        time.sleep(POLL)


def wait_replayed(standby_dsn: str, lsn: int, *, timeout: float = 60.0, inclusive: bool = True) -> int:
    """Wait on the standby itself until pg_last_wal_replay_lsn() ≥ ``lsn`` (> when not ``inclusive``).

    For a planned switchover pass the old primary's shutdown checkpoint LSN (from
    :func:`stop_for_switchover`) with ``inclusive=False``: the standby has replayed that record.
    """
    deadline = time.monotonic() + timeout
    seen: int | None = None
    with session(standby_dsn, timeout=min(timeout, 10), statement_timeout=10) as conn:
        while True:
            in_rec, replay = query_row(conn, "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text")
            if not in_rec:
                raise ReplicaError(f"{dsn_target(standby_dsn)} is not in recovery: it was promoted already")
            seen = _lsn(replay)
            if seen is not None and (seen >= lsn if inclusive else seen > lsn):
                return seen
            if time.monotonic() >= deadline:
                raise ReplicaTimeout(
                    f"{dsn_target(standby_dsn)} did not replay past {format_lsn(lsn)} within {timeout:g}s "
                    f"(replayed {format_lsn(seen) if seen is not None else 'nothing'})")
            time.sleep(POLL / 2)


# -- node configuration ----------------------------------------------------------------------------

_NODE_KEYS = ("port", "primary_slot_name", "cluster_name", "wal_receiver_status_interval", "unix_socket_directories")
# Removed, never re-added: fence() sets this on a reachable old primary; a node rejoining must not keep it.
_DROP_KEYS = ("default_transaction_read_only",)
_KEY_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?")


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _node_socket_dir(data_dir: Path, root: SafeDir) -> Path | None:
    """Where this node's unix socket must go, when postgresql.conf would put it into a data directory.

    drkit's own clusters (LocalCluster.initdb) keep their socket in their data directory, and a copied
    postgresql.conf puts a standby's socket there too. pg_rewind cannot use a source whose data directory
    holds a socket ('could not open file ".s.PGSQL.N"'), and pg_basebackup/pg_rewind copy socket lock files
    between nodes. Such a node gets ``<data_dir>.sock`` beside its data directory instead. A socket
    directory that is not a data directory (the packaged default, /var/run/postgresql) is left alone.
    ``root`` is ``data_dir`` open (safedir): a postgresql.conf that is a link is not read.
    """
    value: str | None = None
    try:
        conf = root.read("postgresql.conf") or b""
    except (OSError, EngineError) as exc:
        log.warning("not reading %s/postgresql.conf: %s", data_dir, exc)
        conf = b""
    for line in conf.decode(errors="replace").splitlines():
        m = re.match(r"^\s*unix_socket_directories\s*=?\s*'([^']*)'", line)
        if m:
            value = m.group(1)
    if not value:
        return None
    dirs = [Path(v.strip()) for v in value.split(",") if v.strip()]
    if any(d.is_absolute() and (d == data_dir or (d / "PG_VERSION").exists()) for d in dirs):
        return data_dir.with_name(data_dir.name + ".sock")
    return None


def _clear_stale_socket_locks(cluster: LocalCluster) -> list[str]:
    """Remove socket lock files copied in by pg_basebackup/pg_rewind from another server's data directory.

    A ``.s.PGSQL.N.lock`` with no socket beside it belongs to no running server; the node's own port's lock
    is stale whenever the node is not running. Left behind, it stops the server from starting ("lock file
    already exists") when its recorded PID is alive or a zombie.
    """
    removed: list[str] = []
    running = cluster.is_running()
    with SafeDir.open(trusted_path(cluster.data_dir)) as root:
        for name in sorted(root.listdir()):
            if not (name.startswith(".s.PGSQL.") and name.endswith(".lock")):
                continue
            own = name == f".s.PGSQL.{cluster.port}.lock"
            if (own and not running) or not root.exists(name[: -len(".lock")]):
                with suppress(OSError):
                    root.unlink(name)  # a link named so is removed itself, never what it points to
                    removed.append(name)
    return removed


def _data_dir_owner(root: SafeDir) -> tuple[int, int] | None:
    """Who files root writes into the data directory ``root`` must belong to (its owner), when we are root."""
    if os.geteuid() != 0:
        return None
    st = os.fstat(root.fd)
    return st.st_uid, st.st_gid


def _remove_dir(path: Path) -> None:
    """Remove the directory (or a link) at ``path``, walking its tree without following a link (safedir)."""
    with SafeDir.open(trusted_path(path.parent)) as parent:
        parent.remove(path.name)


def apply_node_settings(data_dir: Path, *, port: int, slot: str, os_user: str | None,
                        primary_conninfo: str | None = None) -> None:
    """Make ``postgresql.auto.conf`` name this node's own port and slot (again: pg_rewind copied the source's).

    Idempotent: earlier values of the keys drkit owns are removed, duplicate ``primary_conninfo`` lines are
    collapsed to the last one (or replaced by ``primary_conninfo`` when given). ``unix_socket_directories``
    is drkit's too here: set only when postgresql.conf would put the socket into a data directory
    (see ``_node_socket_dir``), removed otherwise (a copied value names a directory of the source's host).

    The OS user owns the data directory and may have planted links in it: every file is reached through
    directory descriptors (safedir), a postgresql.auto.conf that is a link is refused, and the new file
    replaces the old one by rename (owned by the data directory's owner, 0600), never written through.
    """
    data_dir = trusted_path(data_dir)
    with SafeDir.open(data_dir) as root:
        owner = _data_dir_owner(root)
        socket_dir = _node_socket_dir(data_dir, root)
        if socket_dir is not None:
            with SafeDir.open(data_dir.parent) as parent, \
                    parent.subdir(socket_dir.name, create=True, mode=0o755) as made:
                if owner is not None:
                    os.fchown(made.fd, *owner)
                os.fchmod(made.fd, 0o755)
        current = root.read("postgresql.auto.conf")
        root.replace("postgresql.auto.conf", _node_conf(current, port=port, slot=slot, socket_dir=socket_dir,
                                                        primary_conninfo=primary_conninfo).encode(),
                     mode=0o600, owner=owner)


def _node_conf(current: bytes | None, *, port: int, slot: str, socket_dir: Path | None,
               primary_conninfo: str | None) -> str:
    """postgresql.auto.conf's text with the node's own settings (see apply_node_settings)."""
    lines = current.decode("utf-8", "surrogateescape").splitlines() if current is not None else [
        "# Do not edit this file manually!", "# It will be overwritten by the ALTER SYSTEM command."]
    keys = [(m.group(1).lower() if (m := _KEY_RE.match(ln)) and not ln.lstrip().startswith("#") else None)
            for ln in lines]
    last_conninfo = max((i for i, k in enumerate(keys) if k == "primary_conninfo"), default=None)
    out: list[str] = []
    for i, (line, key) in enumerate(zip(lines, keys, strict=True)):
        if key in _NODE_KEYS or key in _DROP_KEYS or line.strip() == "# drkit node settings":
            continue
        if key == "primary_conninfo" and (primary_conninfo is not None or i != last_conninfo):
            continue
        out.append(line)
    out.append("# drkit node settings")
    if primary_conninfo is not None:
        out.append(f"primary_conninfo = {_conf_quote(primary_conninfo)}")
    out += [f"port = {int(port)}", f"primary_slot_name = {_conf_quote(slot)}",
            f"cluster_name = {_conf_quote(slot)}", "wal_receiver_status_interval = '1s'"]
    if socket_dir is not None:
        out.append(f"unix_socket_directories = {_conf_quote(str(socket_dir))}")
    return "\n".join(out) + "\n"


def control_data(cluster: LocalCluster) -> dict[str, str]:
    """``pg_controldata`` of the cluster (run as its OS user), as its "key: value" lines."""
    proc = run_as(cluster.os_user, [str(cluster.bin_dir / "pg_controldata"), "-D", str(cluster.data_dir)],
                  timeout=30)
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


# -- fence, promote, confirm -----------------------------------------------------------------------


def fence(primary: LocalCluster | str, *, timeout: float = 30.0) -> Fence:
    """Stop the old primary taking writes. Never raises because it is already down or unreachable.

    A :class:`LocalCluster` is stopped with ``-m immediate``. A DSN that answers is fenced in SQL:
    ``ALTER SYSTEM SET default_transaction_read_only = on``, reload, and every client session terminated
    (walsenders are kept, so the standby still receives the last WAL). That stops well-behaved clients;
    a client can still ``SET default_transaction_read_only = off``, so stop the server when you can.
    Raises :class:`ReplicaError` only when a local server could not be stopped.
    """
    if isinstance(primary, LocalCluster):
        where = f"{primary.data_dir} (port {primary.port})"
        if not primary.is_running():
            return Fence("already down", f"{where} is not running")
        primary.pg_ctl("-m", "immediate", "-w", "-t", str(max(1, int(timeout))), "stop",
                       check=False, timeout=timeout + 10)
        if primary.is_running():
            raise ReplicaError(f"could not stop {where}: " + " | ".join(primary.log_tail(5)))
        return Fence("stopped", f"{where} stopped (immediate)")
    target = dsn_target(primary)
    try:
        conn = _connect(primary, timeout=min(timeout, 5), statement_timeout=timeout)
    except DatabaseUnreachableError as exc:
        return Fence("unreachable", str(exc))
    try:
        if _in_recovery(conn):
            return Fence("not a primary", f"{target} is in recovery (a standby): nothing to fence")
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.2)  # let the postmaster and backends take the reload before cutting sessions
        killed = query_row(conn, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")[0]
        return Fence("fenced read-only", f"{target} set read-only, {killed} client session(s) terminated")
    except psycopg.Error as exc:
        raise ReplicaError(f"could not fence {target}: {_first_line(exc)}") from None
    finally:
        conn.close()


def promote(standby_dsn: str, *, timeout: int = 60) -> Promotion:
    """Promote the standby (``pg_promote(true, timeout)``) then ``CHECKPOINT``. Never promotes twice.

    If the server is no longer in recovery it was promoted already (by an earlier, maybe crashed, run):
    nothing is promoted, ``already_primary`` is True, and only a missing post-promotion CHECKPOINT is made up.
    """
    t0 = time.monotonic()
    already = False
    seconds = 0.0
    with session(standby_dsn, timeout=10, statement_timeout=timeout + 120) as conn:
        if not _in_recovery(conn):
            already = True
        else:
            try:
                ok = query_row(conn, "SELECT pg_promote(true, %s)", [int(timeout)])[0]
            except pgerrors.ObjectNotInPrerequisiteState:
                ok, already = True, True  # promoted by someone else between the two statements
            seconds = time.monotonic() - t0
            if not ok:
                raise ReplicaTimeout(f"{dsn_target(standby_dsn)} did not finish promotion within {timeout}s; "
                                     "it may still complete: check the server log, then run promote again")
        tli, ckpt_tli = _timelines(conn)
        checkpointed = False
        if ckpt_tli < tli:
            conn.execute("CHECKPOINT")  # mandatory: pg_rewind reads the timeline from pg_control
            checkpointed = True
        tli, _ = _timelines(conn)
        lsn = _current_lsn(conn)
    return Promotion(timeline=tli, lsn=lsn, seconds=seconds, already_primary=already,
                     checkpointed=checkpointed, at=datetime.now(UTC))


def confirm_writable(dsn: str, *, dbname: str = "postgres", timeout: float = 10.0) -> datetime:
    """Commit a write into ``drkit_heartbeat`` (in ``dbname``); returns the server's commit-time clock."""
    try:
        target_dsn = make_conninfo(dsn, dbname=dbname)
    except psycopg.Error:
        raise ReplicaError(f"invalid DSN for {dsn_target(dsn)}") from None
    with session(target_dsn, timeout=timeout, statement_timeout=timeout) as conn:
        try:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {HEARTBEAT_TABLE} ("
                         "id int PRIMARY KEY, at timestamptz NOT NULL, xid xid8 NOT NULL, timeline int)")
            at = query_row(conn,
                      f"INSERT INTO {HEARTBEAT_TABLE} AS h (id, at, xid, timeline) "
                      "VALUES (1, clock_timestamp(), pg_current_xact_id(), "
                      "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int) "
                      "ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at, xid = EXCLUDED.xid, "
                      "timeline = EXCLUDED.timeline RETURNING at")[0]
        except pgerrors.ReadOnlySqlTransaction:
            raise ReplicaError(f"{dsn_target(target_dsn)} is not writable: read-only "
                               f"({'in recovery' if _in_recovery(conn) else 'default_transaction_read_only'})"
                               ) from None
        except pgerrors.QueryCanceled:
            raise ReplicaTimeout(f"{dsn_target(target_dsn)}: write not committed within {timeout:g}s") from None
        except psycopg.Error as exc:
            raise ReplicaError(f"{dsn_target(target_dsn)}: write failed: {_first_line(exc)}") from None
    if not isinstance(at, datetime):
        raise ReplicaError("heartbeat write returned no time")
    return at


# -- standby creation and streaming ----------------------------------------------------------------

_DIVERGED = ("is not in this server's history", "forked off current database system timeline",
             "is not a child of this server's history")
_FATAL_PATTERNS = {
    "has already been removed": "the WAL it needs was removed on the source: rebuild the standby",
    "database system identifier differs": "it belongs to another cluster: rebuild the standby",
    "password authentication failed": "it cannot log in to its source (primary_conninfo holds no password)",
    "no password supplied": "it cannot log in to its source (primary_conninfo holds no password)",
}
_SLOT_MISSING = re.compile(r'replication slot "[^"]+" does not exist')


def _log_size(cluster: LocalCluster) -> int:
    try:
        return cluster.log_path.stat().st_size
    except OSError:
        return 0


def _log_problem(cluster: LocalCluster, offset: int) -> ReplicaError | None:
    try:  # the OS user may control the log: no foreign link followed, a regular file only (safedir)
        fd = open_leaf(cluster.log_path, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, EngineError):
        return None
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    for line in text.splitlines():
        if any(p in line for p in _DIVERGED):
            return TimelineDivergedError(
                f"standby {cluster.data_dir} cannot follow its source, timelines diverged: {line.strip()[-300:]}")
        for pattern, advice in _FATAL_PATTERNS.items():
            if pattern in line:
                return ReplicaError(f"standby {cluster.data_dir}: {advice}: {line.strip()[-300:]}")
        if _SLOT_MISSING.search(line):
            return ReplicaError(f"standby {cluster.data_dir}: its slot is missing on the source: {line.strip()[-300:]}")
    return None


def wait_streaming(cluster: LocalCluster, *, timeout: float = 60.0, expected_timeline: int | None = None,
                   log_offset: int | None = None) -> None:
    """Wait until the standby's WAL receiver is streaming (on ``expected_timeline`` when given).

    Fails fast, from the server log written after ``log_offset``, with :class:`TimelineDivergedError` when
    the node loops on "requested starting point … is not in this server's history", and with
    :class:`ReplicaError` when its WAL or slot is gone on the source.
    """
    deadline = time.monotonic() + timeout
    offset = _log_size(cluster) if log_offset is None else log_offset
    last = "not checked yet"
    conn: psycopg.Connection[Any] | None = None
    try:
        while True:
            problem = _log_problem(cluster, offset)
            if problem is not None:
                raise problem
            try:
                if conn is None or conn.closed:
                    conn = _connect(cluster.dsn(), timeout=min(5, max(1, deadline - time.monotonic())),
                                    statement_timeout=5)
                in_rec, status, tli = query_row(conn, "SELECT pg_is_in_recovery(), "
                                                 "(SELECT status FROM pg_stat_wal_receiver), "
                                                 "(SELECT received_tli FROM pg_stat_wal_receiver)")
                if not in_rec:
                    raise ReplicaError(f"{cluster.data_dir} is not in recovery: it is a primary, not a standby")
                if status == "streaming" and (expected_timeline is None or tli == expected_timeline):
                    return
                last = f"WAL receiver {status or 'not running'}" + (f" on timeline {tli}" if tli else "")
            except (DatabaseUnreachableError, psycopg.OperationalError) as exc:
                last = _first_line(exc)
                if conn is not None:
                    conn.close()
                conn = None
            if time.monotonic() >= deadline:
                want = f" on timeline {expected_timeline}" if expected_timeline else ""
                raise ReplicaTimeout(f"standby {cluster.data_dir} (port {cluster.port}) was not streaming{want} "
                                     f"within {timeout:g}s: {last}; log: " + " | ".join(cluster.log_tail(4)))
            time.sleep(POLL)
    finally:
        if conn is not None:
            conn.close()


START_WAIT = 30
"""Seconds ``pg_ctl start -w`` may wait for a standby; after that its log and WAL receiver tell how it is doing."""


def start_standby(cluster: LocalCluster, *, timeout: float = 60.0, expected_timeline: int | None = None) -> None:
    """Start a configured standby (if not running) and wait until it streams.

    If it does not, a server started here is stopped again (a diverged one would otherwise keep looping);
    one that was already running is left running.
    """
    deadline = time.monotonic() + timeout
    offset = _log_size(cluster)
    started = False
    try:
        if not cluster.is_running():
            _clear_stale_socket_locks(cluster)
            started = True
            try:  # a standby that cannot reach consistency (its WAL gone on the source) never gets "ready"
                cluster.start(wait_seconds=max(5, min(START_WAIT, int(timeout))))
            except EngineError:
                problem = _log_problem(cluster, offset)
                if problem is not None or not cluster.is_running():
                    raise problem or EngineError(f"{cluster.data_dir} did not start: " + " | ".join(
                        cluster.log_tail(4))) from None
        wait_streaming(cluster, timeout=max(1.0, deadline - time.monotonic()), expected_timeline=expected_timeline,
                       log_offset=offset)
    except EngineError:
        if started:
            cluster.stop("fast")
        raise


def _is_standby_dir(data_dir: Path) -> bool:
    return (data_dir / "PG_VERSION").exists() and (data_dir / "standby.signal").exists()


def start_existing_standby(cluster: LocalCluster, *, slot: str, primary_conninfo: str | None,
                           timeout: float, primary_dsn: str | None = None) -> None:
    """Start the standby already in ``cluster.data_dir`` and wait until it streams: its port, slot and
    ``primary_conninfo`` written into postgresql.auto.conf first. With ``primary_dsn``, also (re)create
    the slot on the primary (slots are not copied, and one may have been dropped) and have a node that
    is already running re-read its settings (it may follow another server, or none)."""
    apply_node_settings(cluster.data_dir, port=cluster.port, slot=slot, os_user=cluster.os_user,
                        primary_conninfo=primary_conninfo)
    if primary_dsn is not None:
        ensure_slot(primary_dsn, slot)
        if cluster.is_running():
            cluster.pg_ctl("reload", check=False)
    start_standby(cluster, timeout=timeout)


def create_standby(
    primary_dsn: str,
    *,
    data_dir: Path,
    port: int,
    slot: str,
    bin_dir: Path,
    os_user: str | None,
    timeout: float = 300.0,
    log_file: Path | None = None,
    primary_conninfo: str | None = None,
) -> LocalCluster:
    """A streaming standby of ``primary_dsn`` in ``data_dir`` on ``port``, using replication slot ``slot``.

    ``pg_basebackup -R -X stream -c fast -S slot`` (``-C`` unless the slot exists) as ``os_user``, then the
    node's port and slot in postgresql.auto.conf, start, and wait for streaming. Re-running it on a
    data directory that already holds a standby only starts it and waits. An interrupted base backup
    (backup_label, no standby.signal) is cleared and redone; any other cluster there is refused.
    ``primary_conninfo`` replaces the one pg_basebackup -R writes (which holds the DSN's password).
    """
    deadline = time.monotonic() + timeout
    data_dir = Path(data_dir)
    cluster = LocalCluster(data_dir, port, Path(bin_dir), os_user, log_file=log_file)
    if _is_standby_dir(data_dir):
        log.info("%s already holds a standby: starting it", data_dir)
        start_existing_standby(cluster, slot=slot, primary_conninfo=primary_conninfo, timeout=timeout)
        return cluster
    if (data_dir / "PG_VERSION").exists():
        if (data_dir / "backup_label").exists() and not cluster.is_running():
            log.warning("%s holds an interrupted base backup: clearing it", data_dir)
            _remove_dir(data_dir)
        else:
            raise ReplicaError(f"{data_dir} holds a PostgreSQL cluster that is not a standby; refusing to "
                               "overwrite it (move it away, or use rebuild_as_standby)")
    elif data_dir.exists() and any(data_dir.iterdir()):
        raise ReplicaError(f"{data_dir} is not empty and holds no PostgreSQL cluster; refusing to use it")
    with session(primary_dsn, timeout=min(10, timeout), statement_timeout=10) as conn:
        row = conn.execute("SELECT active, active_pid, slot_type FROM pg_replication_slots WHERE slot_name = %s",
                           [slot]).fetchone()
    if row is not None and row[2] != "physical":
        raise ReplicaError(f"slot {slot!r} on {dsn_target(primary_dsn)} is a {row[2]} slot, not physical")
    if row is not None and row[0]:
        raise ReplicaError(f"slot {slot!r} on {dsn_target(primary_dsn)} is in use by another standby "
                           f"(walsender pid {row[1]}); choose another slot name")
    make_owned_dir(data_dir, os_user)
    conninfo, secret_env = command_line_conninfo(primary_dsn)
    argv = [str(Path(bin_dir) / "pg_basebackup"), "-d", conninfo, "-D", str(data_dir), "-R",
            "-X", "stream", "-c", "fast", "-w", "-S", slot]
    if row is None:
        argv.append("-C")
    t0 = time.monotonic()
    try:
        run_as(os_user, argv, timeout=max(5.0, deadline - time.monotonic()), secret_env=secret_env)
    except EngineError as exc:
        raise ReplicaError(f"base backup of {dsn_target(primary_dsn)} into {data_dir} failed: "
                           + str(exc).replace(primary_dsn, dsn_target(primary_dsn))) from None
    log.info("base backup of %s into %s took %.2fs", dsn_target(primary_dsn), data_dir, time.monotonic() - t0)
    apply_node_settings(data_dir, port=port, slot=slot, os_user=os_user, primary_conninfo=primary_conninfo)
    start_standby(cluster, timeout=max(5.0, deadline - time.monotonic()))
    return cluster


def _dsn_endpoint(dsn: str) -> tuple[str, int]:
    params = conninfo_to_dict(dsn)
    return str(params.get("host") or params.get("hostaddr") or "localhost"), int(params.get("port") or 5432)


def streams_from(cluster: LocalCluster, source_dsn: str, timeline: int) -> bool:
    """The node runs as a standby, streaming from the source's host:port on the source's timeline."""
    try:
        with session(cluster.dsn(), timeout=5, statement_timeout=5) as conn:
            row = conn.execute("SELECT status, received_tli, sender_host, sender_port FROM pg_stat_wal_receiver"
                               ).fetchone()
    except (DatabaseUnreachableError, psycopg.Error):
        return False
    if row is None:
        return False
    status, tli, host, port = row
    src_host, src_port = _dsn_endpoint(source_dsn)
    return bool(status == "streaming" and tli == timeline and port == src_port
                and (host == src_host or src_host in ("localhost", "127.0.0.1") and host in ("localhost", "127.0.0.1")))


def _stop_clean(cluster: LocalCluster, timeout: float) -> None:
    if not cluster.is_running():
        return
    cluster.pg_ctl("-m", "fast", "-w", "-t", str(max(5, int(timeout))), "stop", check=False,
                   timeout=max(5, timeout) + 10)
    if cluster.is_running():
        cluster.pg_ctl("-m", "immediate", "-w", "stop", check=False, timeout=60)
    if cluster.is_running():
        raise ReplicaError(f"could not stop {cluster.data_dir}")


def _pg_rewind(cluster: LocalCluster, source_dsn: str, *, timeout: float) -> Literal["rewound", "no rewind required"]:
    """Run pg_rewind -R (as the cluster's OS user). Does NOT checkpoint the source: see rewind_as_standby."""
    conninfo, secret_env = command_line_conninfo(source_dsn)
    argv = [str(cluster.bin_dir / "pg_rewind"), f"--target-pgdata={cluster.data_dir}",
            f"--source-server={conninfo}", "-R"]
    t0 = time.monotonic()
    proc = run_as(cluster.os_user, argv, timeout=max(5.0, timeout), check=False, secret_env=secret_env)
    output = (proc.stdout + "\n" + proc.stderr).replace(source_dsn, dsn_target(source_dsn))
    if proc.returncode != 0:
        tail = " | ".join([ln for ln in output.strip().splitlines() if ln.strip()][-5:])
        if re.search(r'could not open file "\.s\.PGSQL\.\d+"', output):
            tail += (" | the source keeps its unix socket in its data directory, which pg_rewind cannot copy: "
                     "move its unix_socket_directories elsewhere and restart it, or rebuild this node")
        raise RewindError(f"pg_rewind of {cluster.data_dir} from {dsn_target(source_dsn)} failed "
                          f"(exit {proc.returncode}): {tail}")
    outcome: Literal["rewound", "no rewind required"] = (
        "no rewind required" if "no rewind required" in output else "rewound")
    log.info("pg_rewind %s from %s: %s in %.2fs", cluster.data_dir, dsn_target(source_dsn), outcome,
             time.monotonic() - t0)
    return outcome


def rebuild_as_standby(
    target: LocalCluster,
    source_dsn: str,
    *,
    slot: str,
    port: int | None = None,
    timeout: float = 600.0,
    keep_old: bool = True,
) -> LocalCluster:
    """Replace ``target``'s data directory with a fresh base backup of ``source_dsn`` and stream from it.

    The old directory is moved aside to ``<data_dir>.drkit-old-<UTC time>`` (``keep_old``; it may hold
    transactions that never reached the source) or deleted.
    """
    _stop_clean(target, 60)
    data_dir = target.data_dir
    if data_dir.exists():
        if keep_old:
            aside = data_dir.with_name(f"{data_dir.name}.drkit-old-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
            with SafeDir.open(trusted_path(data_dir.parent)) as parent:  # renames a link itself, never its target
                os.rename(data_dir.name, aside.name, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
            log.warning("moved %s aside to %s before rebuilding it", data_dir, aside)
        else:
            _remove_dir(data_dir)
    ensure_slot(source_dsn, slot)
    return create_standby(source_dsn, data_dir=data_dir, port=port or target.port, slot=slot,
                          bin_dir=target.bin_dir, os_user=target.os_user, timeout=timeout, log_file=target.log_file)


def rewind_as_standby(
    target: LocalCluster,
    source_dsn: str,
    *,
    slot: str,
    port: int | None = None,
    os_user: str | None = None,
    bin_dir: Path | None = None,
    timeout: float = 300.0,
    rebuild_on_failure: bool = True,
    drop_target_slots: bool = True,
) -> RewindOutcome:
    """Make ``target`` (an old primary, or a former standby) a streaming standby of ``source_dsn``.

    Steps: skip if it already streams from the source; CHECKPOINT the source if its pg_control predates
    its promotion; create ``slot`` on the source; stop the target cleanly (a crashed target is left to
    pg_rewind's own crash recovery); ``pg_rewind -R``; re-apply the node's ``port`` and ``slot``; start;
    wait for streaming on the source's timeline, failing fast on a diverged timeline. A target that is
    already a rewound-but-stopped standby is started without rewinding again ('resumed').

    When pg_rewind fails, or the node cannot follow the source afterwards, the node is rebuilt from a fresh
    base backup ('rebuilt') if ``rebuild_on_failure``, else the error is raised. ``drop_target_slots``
    drops the node's inactive physical slots afterwards: they served its standbys while it was primary
    and would pin WAL now.

    Returns 'rewound', 'no rewind required' (pg_rewind found nothing to undo, e.g. after a clean
    switchover), 'resumed', 'already streaming' or 'rebuilt'.
    """
    deadline = time.monotonic() + timeout
    node = LocalCluster(target.data_dir, port or target.port, bin_dir or target.bin_dir,
                        os_user if os_user is not None else target.os_user, log_file=target.log_file)

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ReplicaTimeout(f"rewinding {node.data_dir} as a standby of {dsn_target(source_dsn)} "
                                 f"did not finish within {timeout:g}s")
        return left

    with session(source_dsn, timeout=min(10, timeout), statement_timeout=10) as conn:
        if _in_recovery(conn):
            raise ReplicaError(f"source {dsn_target(source_dsn)} is in recovery: promote it first")
    if node.is_running() and streams_from(node, source_dsn, current_timeline(source_dsn)):
        apply_node_settings(node.data_dir, port=node.port, slot=slot, os_user=node.os_user)
        _finish(node, drop_target_slots)
        return "already streaming"
    if ensure_checkpoint_after_promotion(source_dsn, timeout=remaining()):
        log.info("source %s had not checkpointed since promotion: done now", dsn_target(source_dsn))
    src_tli = current_timeline(source_dsn)
    ensure_slot(source_dsn, slot)
    _stop_clean(node, min(60.0, remaining()))

    outcome: RewindOutcome
    try:
        state = control_data(node).get("Database cluster state", "") if (node.data_dir / "global").exists() else ""
        if state == "in archive recovery" and (node.data_dir / "standby.signal").exists():
            # pg_rewind finished in an earlier run (it leaves this state), or a standby stopped without a
            # clean shutdown: start it following the source; a diverged one is caught by wait_streaming.
            apply_node_settings(node.data_dir, port=node.port, slot=slot, os_user=node.os_user,
                                primary_conninfo=source_dsn)
            outcome = "resumed"
        else:
            outcome = _pg_rewind(node, source_dsn, timeout=remaining())
            apply_node_settings(node.data_dir, port=node.port, slot=slot, os_user=node.os_user)
        start_standby(node, timeout=remaining(), expected_timeline=src_tli)
    except EngineError as exc:  # RewindError, TimelineDivergedError, ReplicaTimeout, a failed start
        if isinstance(exc, ReplicaTimeout) and time.monotonic() >= deadline:
            raise
        if not rebuild_on_failure:
            raise
        log.warning("resynchronising %s by rewind failed (%s): rebuilding it from a base backup", node.data_dir, exc)
        _stop_clean(node, 30)
        rebuild_as_standby(node, source_dsn, slot=slot, timeout=remaining())
        outcome = "rebuilt"
    _finish(node, drop_target_slots)
    return outcome


def _finish(node: LocalCluster, drop_target_slots: bool) -> None:
    if drop_target_slots:
        try:
            drop_stale_slots(node.dsn(), keep=())
        except (ReplicaError, EngineError, psycopg.Error) as exc:
            log.warning("could not drop stale slots on %s: %s", node.data_dir, exc)


def stop_for_switchover(cluster: LocalCluster, *, timeout: float = 60.0) -> int:
    """Stop a primary cleanly (``-m fast``) for a planned switchover; returns its shutdown checkpoint LSN.

    A fast shutdown sends all WAL, the shutdown checkpoint included, to connected standbys before it
    ends; wait for it with ``wait_replayed(standby_dsn, lsn, inclusive=False)``. Idempotent: a primary
    that is already cleanly stopped just reports its checkpoint. Raises if the node is a standby or was
    not shut down cleanly (then it is not a planned switchover: use the failover path).
    """
    if cluster.is_running():
        with session(cluster.dsn(), timeout=10, statement_timeout=10) as conn:
            if _in_recovery(conn):
                raise ReplicaError(f"{cluster.data_dir} is a standby, not the primary to switch over from")
        cluster.pg_ctl("-m", "fast", "-w", "-t", str(max(5, int(timeout))), "stop", check=False,
                       timeout=timeout + 10)
        if cluster.is_running():
            raise ReplicaTimeout(f"{cluster.data_dir} did not stop within {timeout:g}s: "
                                 + " | ".join(cluster.log_tail(4)))
    ctl = control_data(cluster)
    state = ctl.get("Database cluster state", "")
    if state != "shut down":
        raise ReplicaError(f"{cluster.data_dir} is in state {state!r}, not cleanly shut down as a primary: "
                           "its last WAL may not have reached the standby")
    return parse_lsn(ctl["Latest checkpoint location"])
