"""Which PostgreSQL server is a database's primary now: what backups, WAL shipping and `drkit setup` use.

The catalog's endpoint record (``Catalog.get_endpoint``) says which server took over: ``primary`` (the
policy's own ``dsn`` / ``data_dir``; also when nothing was ever recorded), ``dr`` (the DR replica promoted
by a failover: ``replica.dsn`` / ``replica.data_dir``) or ``recovered`` (a cluster restored by corruption
recovery: the policy's DSN with the recorded ``host:port``, and the recorded data directory). Resolved
at run time, so a scheduled backup flow that takes only the database's name backs up whichever server is
the primary when it runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from drkit.config import resolve_dsn, resolve_replica_dsn
from drkit.errors import ConfigError
from drkit.safedir import SafeDir, trusted_path

if TYPE_CHECKING:
    from drkit.runtime import Runtime


@dataclass(frozen=True)
class ActivePrimary:
    """The server that is ``db``'s primary: its side, DSN (with the policy's credentials) and data directory."""

    side: str
    dsn: str
    data_dir: Path


def active_primary(rt: Runtime, db: str) -> ActivePrimary:
    cfg = rt.policy.database(db)
    record = rt.catalog.get_endpoint(db)
    side = record.side if record is not None and record.side else "primary"
    if side == "dr":
        if cfg.replica is None:
            raise ConfigError(f"databases.{db}.replica: not configured, but the catalog records the DR replica as "
                              f"the primary of {db} since a failover; restore the replica's settings")
        data_dir = cfg.replica.data_dir or (Path(record.data_dir) if record and record.data_dir else None)
        if data_dir is None:
            raise ConfigError(f"databases.{db}.replica.data_dir: not set; the DR replica is the primary of {db} "
                              "since a failover and backups read its data directory: run drkit on its host "
                              "with replica.data_dir set")
        return ActivePrimary("dr", resolve_replica_dsn(db, cfg, rt.environ), rt.policy.resolve(data_dir))
    if side == "recovered":
        from psycopg.conninfo import make_conninfo

        assert record is not None and record.data_dir is not None  # recorded with both by corruption recovery
        host, _, port = record.dsn_hint.rpartition(":")
        dsn = make_conninfo(resolve_dsn(db, cfg, rt.environ), host=host, port=port)
        return ActivePrimary("recovered", dsn, Path(record.data_dir))
    assert cfg.data_dir is not None  # the policy requires it for engine: postgres
    return ActivePrimary("primary", resolve_dsn(db, cfg, rt.environ), rt.policy.resolve(cfg.data_dir))


RECOVERY_SETTINGS = frozenset({"restore_command", "recovery_target", "recovery_target_lsn", "recovery_target_name",
                               "recovery_target_time", "recovery_target_xid", "recovery_target_inclusive",
                               "recovery_target_timeline", "recovery_target_action", "archive_mode",
                               "archive_command", "port"})
"""What a restore wrote into ``postgresql.auto.conf`` and a primary must not keep: its recovery target (a base
backup of the primary carries the file, and a later restore of that backup would then name two targets),
and the settings :func:`archive_as_primary` sets anew."""


def archive_as_primary(rt: Runtime, db: str, data_dir: Path, *, port: int) -> list[str]:
    """Configure a restored cluster to run as ``db``'s primary (applied at its next start).

    Rewrites its ``postgresql.auto.conf`` (through safedir: a link is replaced, never followed) without the
    restore's recovery settings, and with ``archive_mode = on`` and drkit's ``archive_command`` into the
    database's WAL spool (as `drkit setup` sets them; a restore leaves archiving off), and its ``port``, so
    every later start listens where the catalog records it. What it set, as ``name = value`` lines.
    """
    from drkit.engines.postgres.engine import PostgresEngine

    spool = rt.policy.wal_spool(db)
    command = PostgresEngine(db, dsn="", data_dir=data_dir, spool=spool, bin_dir=rt.bin_dir(db),
                             os_user=rt.os_user(db)).archive_command
    settings = {"archive_mode": "on", "archive_command": command, "port": str(port)}
    with SafeDir.open(trusted_path(data_dir)) as root:
        st = os.fstat(root.fd)
        current = (root.read("postgresql.auto.conf") or b"").decode("utf-8", "surrogateescape").splitlines()
        kept = [ln for ln in current if _key(ln) not in RECOVERY_SETTINGS]
        kept += ["# drkit: the database's primary since a corruption recovery (restore settings removed)"]
        kept += [f"{k} = '{v.replace(chr(39), chr(39) * 2)}'" for k, v in settings.items()]
        root.replace("postgresql.auto.conf", ("\n".join(kept) + "\n").encode("utf-8", "surrogateescape"),
                     owner=(st.st_uid, st.st_gid) if os.geteuid() == 0 else None)
    return [f"{k} = {v!r}" for k, v in settings.items()]


def _key(line: str) -> str | None:
    """The setting a ``postgresql.auto.conf`` line sets (lower case), None for comments and blank lines."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    return text.split("=", 1)[0].strip().lower()
