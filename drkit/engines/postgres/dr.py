"""PostgreSQL's DR operations (``drkit.engines.base.DrOperations``) over a primary and a streaming standby.

The two sides are the database's DSN (the primary region) and its ``replica:`` (a streaming standby, with
its replication slot). When drkit manages a side's data directory on this host (``data_dir`` /
``replica.data_dir``) it can stop, rewind and restart it; otherwise it works through SQL only, and a step
that needs the directory says where to run it. The primitives are in :mod:`drkit.engines.postgres.replica`.
"""

from __future__ import annotations

import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg.conninfo import conninfo_to_dict

from drkit import health
from drkit.config import resolve_dsn, resolve_replica_dsn
from drkit.engines.base import (
    CaughtUp,
    DrMethods,
    Fencing,
    PendingStep,
    Promotion,
    ReplicaCreated,
    ReplicaLag,
    ReplicaState,
    Resync,
    Side,
    Switchover,
)
from drkit.engines.postgres import probe, provision, replica
from drkit.engines.postgres.lsn import format_lsn
from drkit.engines.postgres.pgctl import LocalCluster
from drkit.engines.postgres.probe import dsn_target
from drkit.errors import ConfigError, EngineError

if TYPE_CHECKING:
    from drkit.runtime import Runtime

FAILBACK_SLOT = "drkit_primary"
"""The old primary's replication slot on DR while it catches up as DR's standby during a failback."""

METHODS = DrMethods(
    promote="pg_promote() on the replica, then CHECKPOINT",
    fence="the old primary stopped (-m immediate) when drkit manages it on this host, else set read-only "
          "with its client sessions terminated",
    resync="pg_rewind into a standby of the other side (or a fresh base backup when rewind is impossible)",
    switch_back="DR stopped cleanly, the primary replays DR's last record and is promoted",
)


def host_port(dsn: str) -> str:
    """``host:port`` of a libpq DSN (for the router and the endpoint record)."""
    params = conninfo_to_dict(dsn)
    return f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"


@dataclass(frozen=True)
class PostgresSides:
    """The primary and the standby of one database: DSNs, the standby's slot, local clusters if managed here."""

    db: str
    primary_dsn: str
    replica_dsn: str
    slot: str
    max_lag_seconds: float
    primary_local: LocalCluster | None
    replica_local: LocalCluster | None
    replica_dir: Path | None = None
    """``replica.data_dir`` resolved, when drkit manages the replica on this host (it may not exist yet)."""
    primary_dir: Path | None = None
    bin_dir: Path | None = None
    os_user: str | None = None

    def dsn(self, side: Side) -> str:
        return self.primary_dsn if side == "primary" else self.replica_dsn

    def local(self, side: Side) -> LocalCluster | None:
        return self.primary_local if side == "primary" else self.replica_local


def _local(rt: Runtime, db: str, data_dir: Path | None, dsn: str) -> LocalCluster | None:
    if data_dir is None:
        return None
    path = rt.policy.resolve(data_dir)
    if not (path / "PG_VERSION").exists():
        return None
    port = int(conninfo_to_dict(dsn).get("port") or 5432)
    return LocalCluster(path, port, rt.bin_dir(db), rt.os_user(db), log_file=path.with_name(path.name + ".log"))


def sides(rt: Runtime, db: str) -> PostgresSides:
    cfg = rt.policy.database(db)
    if cfg.replica is None:
        raise ConfigError(f"databases.{db}.replica: not configured; the DR runbooks need a replica")
    primary_dsn = resolve_dsn(db, cfg, rt.environ)
    replica_dsn = resolve_replica_dsn(db, cfg, rt.environ)
    return PostgresSides(
        db=db, primary_dsn=primary_dsn, replica_dsn=replica_dsn, slot=cfg.replica.slot,
        max_lag_seconds=cfg.replica.max_lag_seconds,
        primary_local=_local(rt, db, cfg.data_dir, primary_dsn),
        replica_local=_local(rt, db, cfg.replica.data_dir, replica_dsn),
        replica_dir=rt.policy.resolve(cfg.replica.data_dir) if cfg.replica.data_dir else None,
        primary_dir=rt.policy.resolve(cfg.data_dir) if cfg.data_dir else None,
        bin_dir=rt.bin_dir(db), os_user=rt.os_user(db))


def _lag(lag: replica.Lag, max_lag_seconds: float) -> ReplicaLag:
    def lsn(what: str, value: int | None) -> str | None:
        return None if value is None else f"{what} {format_lsn(value)}"

    details = tuple(x for x in (lsn("received", lag.receive_lsn), lsn("sent", lag.sent_lsn),
                                lsn("replayed", lag.replay_lsn), lsn("primary at", lag.primary_lsn)) if x)
    return ReplicaLag(state=lag.state, bytes=lag.bytes, seconds=lag.seconds, last_applied_at=lag.last_replay_at,
                      measured_at=lag.measured_at, max_lag_seconds=max_lag_seconds,
                      details=(", ".join(details),) if details else ())


def _promotion(p: replica.Promotion) -> Promotion:
    return Promotion(already_primary=p.already_primary,
                     method="pg_promote() then CHECKPOINT" if p.checkpointed else "pg_promote()",
                     position=f"timeline {p.timeline} at {format_lsn(p.lsn)}", seconds=p.seconds, at=p.at)


class PostgresDr:
    """:class:`~drkit.engines.base.DrOperations` for a PostgreSQL primary and its streaming standby."""

    def __init__(self, sides: PostgresSides) -> None:
        self.sides = sides

    @classmethod
    def from_runtime(cls, rt: Runtime, db: str) -> PostgresDr:
        return cls(sides(rt, db))

    @property
    def database(self) -> str:
        return self.sides.db

    @property
    def methods(self) -> DrMethods:
        return METHODS

    def endpoint(self, side: Side) -> str:
        return host_port(self.sides.dsn(side))

    def probe(self, side: Side, *, timeout: float, require_writable: bool = True) -> health.ProbeResult:
        return probe.probe_db(self.sides.dsn(side), timeout=timeout, require_writable=require_writable)

    def replica_state(self) -> ReplicaState:
        lag = _lag(replica.standby_lag(self.sides.replica_dsn), self.sides.max_lag_seconds)
        return ReplicaState(already_primary=lag.is_primary, lag=lag)

    def lag(self, *, timeout: float = 10.0) -> ReplicaLag:
        s = self.sides
        try:
            lag = replica.replication_lag(s.primary_dsn, s.slot, timeout=timeout)
        except (EngineError, psycopg.Error):  # the primary does not answer: ask the replica itself
            lag = replica.standby_lag(s.replica_dsn, timeout=timeout)
        return _lag(lag, s.max_lag_seconds)

    def fence_primary(self) -> Fencing:
        s = self.sides
        fenced = replica.fence(s.primary_local if s.primary_local is not None else s.primary_dsn)
        return Fencing(fenced.action, fenced.detail)

    def promote_replica(self) -> Promotion:
        return _promotion(replica.promote(self.sides.replica_dsn))

    def confirm_writable(self, side: Side) -> datetime:
        return replica.confirm_writable(self.sides.dsn(side))

    def resync(self, node: Side) -> Resync:
        """pg_rewind ``node`` into a standby of the other side (or rebuild it from a base backup)."""
        s = self.sides
        target = s.local(node)
        if target is None:
            raise ConfigError(f"the {node} side's data directory is not managed on this host "
                              f"(databases.{s.db}.{'data_dir' if node == 'primary' else 'replica.data_dir'}); "
                              "resynchronise it there, then re-run")
        source = s.replica_dsn if node == "primary" else s.primary_dsn
        slot = FAILBACK_SLOT if node == "primary" else s.slot
        outcome = replica.rewind_as_standby(target, source, slot=slot, port=target.port, timeout=600)
        return Resync(node, outcome, f"{target.data_dir} follows {dsn_target(source)} (slot {slot})")

    def wait_caught_up(self, node: Side, *, timeout: float) -> CaughtUp:
        s = self.sides
        source = s.replica_dsn if node == "primary" else s.primary_dsn
        slot = FAILBACK_SLOT if node == "primary" else s.slot
        return CaughtUp(node, format_lsn(replica.wait_caught_up(source, slot, timeout=timeout)))

    def pending_steps(self) -> list[PendingStep]:
        """None: a promotion leaves nothing waiting (the old primary is rewound at failback)."""
        return []

    def run_pending_step(self, key: str) -> str:
        return f"{key}: nothing pending on PostgreSQL"

    def switch_back(self) -> Switchover:
        """Stop writes on DR, wait until the primary replayed DR's last record, promote the primary.

        Each part checks where it stands (a stopped DR, a promoted primary), so a re-run continues.
        """
        s = self.sides
        if s.replica_local is None:
            raise ConfigError(f"DR's data directory is not managed on this host (databases.{s.db}.replica."
                              "data_dir); stop it there first")
        t0 = time.monotonic()
        lsn = replica.stop_for_switchover(s.replica_local)
        if replica.standby_lag(s.primary_dsn).state != "primary":
            replica.wait_replayed(s.primary_dsn, lsn, inclusive=False, timeout=120)
        promotion = replica.promote(s.primary_dsn)
        replica.confirm_writable(s.primary_dsn)
        return Switchover(_promotion(promotion), stopped_at=format_lsn(lsn),
                          write_unavailable_seconds=time.monotonic() - t0)

    def create_replica(self, *, timeout: float = 3600.0) -> ReplicaCreated:
        """Build ``replica.data_dir`` from the primary (base backup, slot, standby.signal), start it, wait until
        it streams; a streaming one is left alone, a stopped one started (see engines/postgres/provision.py)."""
        s = self.sides
        if s.replica_dir is None or s.bin_dir is None:
            raise ConfigError(f"databases.{s.db}.replica.data_dir: not set; drkit builds the replica into that "
                              "directory on this host (run drkit on the replica's host)")
        params = conninfo_to_dict(s.replica_dsn)
        host = str(params.get("host") or params.get("hostaddr") or "")
        if not provision.is_this_host(host.split(",")[0]):
            raise ConfigError(f"databases.{s.db}.replica: its DSN names host {host}, which is not this machine; "
                              "run `drkit replica create` on the replica's host")
        port = int(params.get("port") or 5432)
        built = provision.provision_standby(
            s.primary_dsn, data_dir=s.replica_dir, port=port, slot=s.slot, bin_dir=s.bin_dir, os_user=s.os_user,
            key=f"databases.{s.db}.replica.data_dir", primary_data_dir=s.primary_dir,
            log_file=s.replica_dir.with_name(s.replica_dir.name + ".log"), timeout=timeout)
        if built.outcome != "already streaming":  # its first feedback tells the primary how far it has replayed
            with suppress(replica.ReplicaTimeout):
                replica.wait_caught_up(s.primary_dsn, s.slot, timeout=min(30.0, timeout))
        return ReplicaCreated(outcome=built.outcome, endpoint=self.endpoint("dr"),
                              location=str(built.cluster.data_dir), source=self.endpoint("primary"), slot=s.slot,
                              lag=self.lag(), seconds=built.seconds, warnings=built.warnings)
