"""The two sides of a database for the DR runbooks: DSNs, local clusters, the router, the evidence.

The runbooks (flows/dr.py) are sequences of idempotent steps; this module gives
them the parts: which server is the primary and which the replica, the local
cluster handles when drkit manages a side on this host (fencing, rewind), and
the traffic router the policy names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from drkit.config import resolve_dsn, resolve_replica_dsn
from drkit.engines.postgres.pgctl import LocalCluster
from drkit.runtime import Runtime
from drkit.traffic import Router, build_router


def host_port(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    return f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"


@dataclass(frozen=True)
class DrSides:
    db: str
    primary_dsn: str
    replica_dsn: str
    slot: str
    max_lag_seconds: float
    primary_local: LocalCluster | None
    replica_local: LocalCluster | None
    primary_name: str
    dr_name: str


def _local(rt: Runtime, db: str, data_dir: Path | None, dsn: str) -> LocalCluster | None:
    if data_dir is None:
        return None
    path = rt.policy.resolve(data_dir)
    if not (path / "PG_VERSION").exists():
        return None
    port = int(conninfo_to_dict(dsn).get("port") or 5432)
    return LocalCluster(path, port, rt.bin_dir(db), rt.os_user(db), log_file=path.with_name(path.name + ".log"))


def sides(rt: Runtime, db: str) -> DrSides:
    cfg = rt.policy.database(db)
    primary_dsn = resolve_dsn(db, cfg, rt.environ)
    replica_dsn = resolve_replica_dsn(db, cfg, rt.environ)
    assert cfg.replica is not None
    return DrSides(
        db=db, primary_dsn=primary_dsn, replica_dsn=replica_dsn, slot=cfg.replica.slot,
        max_lag_seconds=cfg.replica.max_lag_seconds,
        primary_local=_local(rt, db, cfg.data_dir, primary_dsn),
        replica_local=_local(rt, db, cfg.replica.data_dir, replica_dsn),
        primary_name=cfg.traffic.primary, dr_name=cfg.traffic.dr)


def router(rt: Runtime, db: str) -> Router:
    cfg = rt.policy.database(db)
    traffic = cfg.traffic
    if traffic.socket is not None:
        traffic = traffic.model_copy(update={
            "socket": rt.policy.resolve(traffic.socket),
            "state_file": rt.policy.resolve(traffic.state_file) if traffic.state_file else None})
    s = sides(rt, db)
    return build_router(db, traffic, catalog=rt.catalog,
                        db_endpoints={s.primary_name: host_port(s.primary_dsn), s.dr_name: host_port(s.replica_dsn)},
                        actor="drkit-dr")


def lag_summary(rt: Runtime, db: str) -> dict[str, object] | None:
    """The DR replica's lag for `drkit status` (None when no replica is configured); never raises."""
    from drkit.engines.postgres import replica

    if rt.policy.database(db).replica is None:
        return None
    try:
        s = sides(rt, db)
        try:
            lag = replica.replication_lag(s.primary_dsn, s.slot, timeout=3)
        except Exception:
            lag = replica.standby_lag(s.replica_dsn, timeout=3)
    except Exception as exc:  # a status line must not fail because one server is down
        return {"state": "unknown", "error": str(exc).splitlines()[0][:200]}
    too_far = lag.seconds is None or lag.seconds > s.max_lag_seconds
    return {"state": lag.state, "bytes": lag.bytes, "seconds": lag.seconds, "max_lag_seconds": s.max_lag_seconds,
            "too_far": too_far}
