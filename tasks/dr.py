"""DR runbook steps: each a task with its own retry policy, each idempotent."""

from __future__ import annotations

import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.variables import Variable

from drkit import dr, health
from drkit.engines.postgres import replica
from drkit.engines.postgres.lsn import format_lsn
from tasks.common import artifact_key, runtime


@task(name="probe-primary", cache_policy=NO_CACHE)
def probe_primary(db: str, config: str | None, interval: float | None = None) -> dict[str, Any]:
    """The primary's database (and application URL, if set) probed with the policy's retries."""
    rt = runtime(config)
    cfg = rt.policy.database(db)
    s = dr.sides(rt, db)
    wait = cfg.health.interval.total_seconds() if interval is None else interval
    timeout = cfg.health.timeout.total_seconds()
    series = {"database": health.probe_with_retries(
        lambda: health.probe_db(s.primary_dsn, timeout=timeout, require_writable=True),
        retries=cfg.health.retries, interval=wait)}
    if cfg.health.primary_url:
        url = cfg.health.primary_url
        series["application"] = health.probe_with_retries(
            lambda: health.probe_http(url, timeout=timeout), retries=cfg.health.retries, interval=wait)
    rt.close()
    # Only the database failing every attempt justifies a failover; the application probe is evidence.
    return {"down": series["database"].failed_all,
            "series": {k: v.as_dict() for k, v in series.items()},
            "summary": [v.summary() for v in series.values()]}


@task(name="replica-state", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def replica_state(db: str, config: str | None) -> dict[str, Any]:
    rt = runtime(config)
    s = dr.sides(rt, db)
    rt.close()
    lag = replica.standby_lag(s.replica_dsn)
    return {"already_primary": lag.state == "primary", "lag": lag.as_dict(), "seconds": lag.seconds,
            "bytes": lag.bytes}


@task(name="fence-old-primary", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def fence_primary(db: str, config: str | None) -> dict[str, str]:
    rt = runtime(config)
    s = dr.sides(rt, db)
    rt.close()
    f = replica.fence(s.primary_local if s.primary_local is not None else s.primary_dsn)
    return {"action": f.action, "detail": f.detail}


@task(name="promote-replica", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def promote_replica(db: str, config: str | None) -> dict[str, Any]:
    """pg_promote + CHECKPOINT; a replica that is already primary is left alone (never promoted twice)."""
    rt = runtime(config)
    s = dr.sides(rt, db)
    rt.close()
    return replica.promote(s.replica_dsn).as_dict()


@task(name="confirm-writes", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 2, 5])
def confirm_writes(db: str, side: str, config: str | None) -> str:
    rt = runtime(config)
    s = dr.sides(rt, db)
    rt.close()
    return replica.confirm_writable(s.replica_dsn if side == "dr" else s.primary_dsn).isoformat()


@task(name="point-clients", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 5, 15])
def point_clients(db: str, side: str, config: str | None, app_weight: int | None = 100) -> dict[str, Any]:
    """The database frontend to ``side`` (atomic), application weights, the endpoint record and Variable."""
    rt = runtime(config)
    try:
        s = dr.sides(rt, db)
        active = s.dr_name if side == "dr" else s.primary_name
        other = s.primary_name if side == "dr" else s.dr_name
        r = dr.router(rt, db)
        r.switch_database(active)
        if app_weight is not None and rt.policy.database(db).traffic.router != "endpoint":
            r.set_app_weights({active: app_weight, other: 100 - app_weight})
        dsn = s.replica_dsn if side == "dr" else s.primary_dsn
        rt.catalog.set_endpoint(db, dsn_hint=dr.host_port(dsn), role=f"primary ({side})", actor="drkit-dr")
        return {"active": active, "endpoint": dr.host_port(dsn)}
    finally:
        rt.close()


@task(name="publish-endpoint", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 5, 15])
def publish_endpoint(db: str, pointed: dict[str, Any]) -> None:
    """A Prefect Variable with the active endpoint, for clients that read it (the catalog has the record)."""
    Variable.set(artifact_key("drkit-endpoint", db).replace("-", "_"), {"database": db, **pointed}, overwrite=True)


@task(name="probe-side", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 2, 5])
def probe_side(db: str, side: str, config: str | None) -> dict[str, Any]:
    rt = runtime(config)
    s = dr.sides(rt, db)
    cfg = rt.policy.database(db)
    rt.close()
    result = health.probe_db(s.replica_dsn if side == "dr" else s.primary_dsn, require_writable=True)
    if not result.ok:
        raise RuntimeError(f"{side} side is not healthy after the switch: {result.detail}")
    out = {"database": result.as_dict()}
    url = cfg.health.dr_url if side == "dr" else cfg.health.primary_url
    if url:
        out["application"] = health.probe_http(url).as_dict()
    return out


FAILBACK_SLOT = "drkit_primary"  # the old primary's slot on DR while it catches up as DR's standby


@task(name="where-is-primary", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def where_is_primary(db: str, config: str | None) -> str:
    """'primary' when the original primary writes and DR replays, 'dr' when DR writes, else 'split'."""
    rt = runtime(config)
    s = dr.sides(rt, db)
    rt.close()
    p = health.probe_db(s.primary_dsn, require_writable=True)
    d = health.probe_db(s.replica_dsn, require_writable=True)
    if p.ok and not d.ok:
        return "primary"
    if d.ok and not p.ok:
        return "dr"
    return "split" if p.ok and d.ok else "none"


@task(name="resync-as-standby", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=[10])
def resync_as_standby(db: str, node: str, config: str | None) -> str:
    """pg_rewind ``node`` ('primary' or 'dr') into a standby of the other side (or rebuild it)."""
    rt = runtime(config)
    s = dr.sides(rt, db)
    rt.close()
    target = s.primary_local if node == "primary" else s.replica_local
    if target is None:
        raise RuntimeError(f"the {node} side's data directory is not managed on this host; resync it there")
    source = s.replica_dsn if node == "primary" else s.primary_dsn
    slot = FAILBACK_SLOT if node == "primary" else s.slot
    return str(replica.rewind_as_standby(target, source, slot=slot, port=target.port, timeout=600))


@task(name="wait-zero-lag", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 15])
def wait_zero_lag(db: str, source: str, slot: str, config: str | None) -> int:
    rt = runtime(config)
    s = dr.sides(rt, db)
    rt.close()
    return replica.wait_caught_up(s.replica_dsn if source == "dr" else s.primary_dsn, slot, timeout=300)


@task(name="switch-database-back", cache_policy=NO_CACHE)
def switch_database_back(db: str, config: str | None) -> dict[str, Any]:
    """Stop writes on DR, wait until the primary replayed DR's last record, promote the primary, repoint.

    Not retried blindly: each part checks where it stands (a stopped DR, a promoted primary).
    """
    rt = runtime(config)
    s = dr.sides(rt, db)
    rt.close()
    if s.replica_local is None:
        raise RuntimeError("DR's data directory is not managed on this host; stop it there first")
    t0 = time.monotonic()
    lsn = replica.stop_for_switchover(s.replica_local)
    if replica.standby_lag(s.primary_dsn).state != "primary":
        replica.wait_replayed(s.primary_dsn, lsn, inclusive=False, timeout=120)
    promotion = replica.promote(s.primary_dsn)
    replica.confirm_writable(s.primary_dsn)
    return {"promotion": promotion.as_dict(), "dr_stop_lsn": format_lsn(lsn),
            "write_unavailable_seconds": round(time.monotonic() - t0, 3)}


@task(name="traffic-step", cache_policy=NO_CACHE)
def traffic_step(db: str, percent: int, config: str | None, hold_seconds: float | None = None) -> dict[str, Any]:
    """Send ``percent`` of application traffic to the primary region and hold while probes stay in bounds."""
    rt = runtime(config)
    try:
        cfg = rt.policy.database(db)
        s = dr.sides(rt, db)
        r = dr.router(rt, db)
        r.set_app_weights({s.primary_name: percent, s.dr_name: 100 - percent})
        stats = getattr(r, "app_stats", None)
        before = stats() if stats else {}
        hold = cfg.failback.hold.total_seconds() if hold_seconds is None else hold_seconds
        url = cfg.health.primary_url
        results: list[health.ProbeResult] = []
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline:
            if url:
                results.append(health.probe_http(url, timeout=cfg.health.timeout.total_seconds()))
            time.sleep(cfg.failback.probe_interval.total_seconds())
        after = stats() if stats else {}
        error_rate, p95 = health.error_rate_and_latency(results) if results else (0.0, 0.0)
        breach = error_rate > cfg.failback.max_error_rate or p95 > cfg.failback.max_latency_ms
        return {"percent": percent, "weights": r.app_weights(), "probes": len(results),
                "error_rate": round(error_rate, 4), "p95_ms": round(p95, 1), "breach": breach,
                "served": {k: after.get(k, 0) - before.get(k, 0) for k in after}}
    finally:
        rt.close()


@task(name="route-back-to-dr", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 2, 5])
def route_back_to_dr(db: str, config: str | None) -> dict[str, int]:
    rt = runtime(config)
    try:
        s = dr.sides(rt, db)
        r = dr.router(rt, db)
        r.set_app_weights({s.primary_name: 0, s.dr_name: 100})
        return r.app_weights()
    finally:
        rt.close()


@task(name="replica-lag", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def replica_lag(db: str, config: str | None) -> dict[str, Any]:
    """Lag of the DR replica: from the primary while it answers, else from the replica itself."""
    rt = runtime(config)
    s = dr.sides(rt, db)
    rt.close()
    try:
        lag = replica.replication_lag(s.primary_dsn, s.slot)
    except Exception:  # the primary does not answer: ask the replica itself
        lag = replica.standby_lag(s.replica_dsn)
    return {**lag.as_dict(), "max_lag_seconds": s.max_lag_seconds,
            "too_far": lag.seconds is None or lag.seconds > s.max_lag_seconds or lag.state in ("absent",)}
