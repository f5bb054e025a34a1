"""DR runbook steps: each a task with its own retry policy, each idempotent, each returning a typed result.

What a step does to a database server goes through :class:`drkit.engines.base.DrOperations` (the one
``drkit.engines.dr_operations`` picks for the database's engine); the router and the catalog's endpoint
record are engine-neutral (:mod:`drkit.dr`).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.variables import Variable

from drkit import dr, health
from drkit.engines import dr_operations, open_engine
from drkit.engines.base import (
    CaughtUp,
    DrMethods,
    Fencing,
    PendingStep,
    Promotion,
    ReplicaLag,
    ReplicaState,
    Resync,
    Side,
    Switchover,
)
from tasks.common import artifact_key, runtime


@task(name="probe-primary", cache_policy=NO_CACHE)
def probe_primary(db: str, config: str | None, interval: float | None = None) -> dr.PrimaryProbe:
    """The primary's database (and application URL, if set) probed with the policy's retries."""
    rt = runtime(config)
    try:
        cfg = rt.policy.database(db)
        ops = dr_operations(rt, db)
    finally:
        rt.close()
    wait = cfg.health.interval.total_seconds() if interval is None else interval
    timeout = cfg.health.timeout.total_seconds()
    database = health.probe_with_retries(lambda: ops.probe("primary", timeout=timeout, require_writable=True),
                                         retries=cfg.health.retries, interval=wait)
    application = None
    if cfg.health.primary_url:
        url = cfg.health.primary_url
        application = health.probe_with_retries(lambda: health.probe_http(url, timeout=timeout),
                                                retries=cfg.health.retries, interval=wait)
    return dr.PrimaryProbe(database, application)


@task(name="dr-methods", cache_policy=NO_CACHE)
def dr_methods(db: str, config: str | None) -> DrMethods:
    """How the database's engine promotes, fences, resynchronises and switches back (for the forms)."""
    rt = runtime(config)
    try:
        return dr_operations(rt, db).methods
    finally:
        rt.close()


@task(name="replica-state", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def replica_state(db: str, config: str | None) -> ReplicaState:
    rt = runtime(config)
    try:
        ops = dr_operations(rt, db)
    finally:
        rt.close()
    return ops.replica_state()


@task(name="fence-old-primary", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def fence_primary(db: str, config: str | None) -> Fencing:
    rt = runtime(config)
    try:
        ops = dr_operations(rt, db)
    finally:
        rt.close()
    return ops.fence_primary()


@task(name="promote-replica", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def promote_replica(db: str, config: str | None) -> Promotion:
    """Promote the DR replica; one that is already the primary is left alone (never promoted twice)."""
    rt = runtime(config)
    try:
        ops = dr_operations(rt, db)
    finally:
        rt.close()
    return ops.promote_replica()


@task(name="pending-steps", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def pending_steps(db: str, config: str | None) -> list[PendingStep]:
    """The steps the promotion left for a human to approve, with their evidence (none on PostgreSQL)."""
    rt = runtime(config)
    try:
        ops = dr_operations(rt, db)
    finally:
        rt.close()
    return ops.pending_steps()


@task(name="run-pending-step", cache_policy=NO_CACHE)
def run_pending_step(db: str, key: str, config: str | None) -> str:
    """Run one approved pending step (not retried blindly: it re-reads where it stands, so a re-run continues)."""
    rt = runtime(config)
    try:
        ops = dr_operations(rt, db)
    finally:
        rt.close()
    return ops.run_pending_step(key)


@task(name="confirm-writes", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 2, 5])
def confirm_writes(db: str, side: Side, config: str | None) -> datetime:
    rt = runtime(config)
    try:
        ops = dr_operations(rt, db)
    finally:
        rt.close()
    return ops.confirm_writable(side)


@task(name="point-clients", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 5, 15])
def point_clients(db: str, side: Side, config: str | None, app_weight: int | None = 100) -> dr.Pointed:
    """Record ``side`` as the primary in the catalog (one ``endpoint.set`` when it changes), then point the
    database frontend at it (atomic; the endpoint-record router finds it already recorded) and the
    application weights. Re-running it changes nothing."""
    rt = runtime(config)
    try:
        ops = dr_operations(rt, db)
        record = dr.record_primary(rt, db, side, ops)
        active = dr.side_name(rt, db, side)
        other = dr.side_name(rt, db, "primary" if side == "dr" else "dr")
        r = dr.router(rt, db, ops)
        r.switch_database(active)
        if app_weight is not None and rt.policy.database(db).traffic.router != "endpoint":
            r.set_app_weights({active: app_weight, other: 100 - app_weight})
        return dr.Pointed(active, record.dsn_hint)
    finally:
        rt.close()


def endpoint_variable(db: str) -> str:
    """The Prefect Variable clients read the database's endpoint from: ``drkit_endpoint_<db>``."""
    return artifact_key("drkit-endpoint", db).replace("-", "_")


@task(name="publish-endpoint", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 5, 15])
def publish_endpoint(db: str, config: str | None) -> dict[str, Any] | None:
    """Copy the catalog's endpoint record of ``db`` into the Prefect Variable ``drkit_endpoint_<db>``.

    The one way the Variable is written (failover, failback, stay on DR, corruption recovery), always from
    the record as it stands, right after it changed: the two cannot disagree. None (and nothing written)
    when the catalog has no record.
    """
    rt = runtime(config)
    try:
        record = rt.catalog.get_endpoint(db)
    finally:
        rt.close()
    if record is None:
        return None
    value = record.as_dict()
    Variable.set(endpoint_variable(db), value, overwrite=True)
    return value


@task(name="probe-side", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 2, 5])
def probe_side(db: str, side: Side, config: str | None) -> dr.SideProbe:
    rt = runtime(config)
    try:
        cfg = rt.policy.database(db)
        ops = dr_operations(rt, db)
    finally:
        rt.close()
    result = ops.probe(side, timeout=cfg.health.timeout.total_seconds(), require_writable=True)
    if not result.ok:
        raise RuntimeError(f"{side} side is not healthy after the switch: {result.detail}")
    url = cfg.health.dr_url if side == "dr" else cfg.health.primary_url
    return dr.SideProbe(result, health.probe_http(url) if url else None)


@task(name="where-is-primary", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def where_is_primary(db: str, config: str | None) -> dr.WritableSides:
    """'primary' when the original primary takes writes and DR does not, 'dr' the other way, else 'split'/'none'."""
    rt = runtime(config)
    try:
        timeout = rt.policy.database(db).health.timeout.total_seconds()
        ops = dr_operations(rt, db)
    finally:
        rt.close()
    return dr.writable_sides(ops.probe("primary", timeout=timeout), ops.probe("dr", timeout=timeout))


@task(name="resync-as-standby", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=[10])
def resync_as_standby(db: str, node: Side, config: str | None) -> Resync:
    """Make ``node`` a replica of the other side again (PostgreSQL: pg_rewind or a rebuild; SQL Server: resume)."""
    rt = runtime(config)
    try:
        ops = dr_operations(rt, db)
    finally:
        rt.close()
    return ops.resync(node)


@task(name="wait-zero-lag", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 15])
def wait_zero_lag(db: str, node: Side, config: str | None) -> CaughtUp:
    """Wait until replica ``node`` has applied everything the other side had."""
    rt = runtime(config)
    try:
        ops = dr_operations(rt, db)
    finally:
        rt.close()
    return ops.wait_caught_up(node, timeout=300)


@task(name="switch-database-back", cache_policy=NO_CACHE)
def switch_database_back(db: str, config: str | None) -> Switchover:
    """Move writes from DR back to the primary with no acknowledged write lost.

    Not retried blindly: each part checks where it stands (a stopped DR, a promoted primary).
    """
    rt = runtime(config)
    try:
        ops = dr_operations(rt, db)
    finally:
        rt.close()
    return ops.switch_back()


@task(name="traffic-step", cache_policy=NO_CACHE)
def traffic_step(db: str, percent: int, config: str | None, hold_seconds: float | None = None) -> dr.TrafficStep:
    """Send ``percent`` of application traffic to the primary region and hold while probes stay in bounds."""
    rt = runtime(config)
    try:
        cfg = rt.policy.database(db)
        r = dr.router(rt, db, dr_operations(rt, db))
        r.set_app_weights({cfg.traffic.primary: percent, cfg.traffic.dr: 100 - percent})
        before = r.app_stats()
        hold = cfg.failback.hold.total_seconds() if hold_seconds is None else hold_seconds
        url = cfg.health.primary_url
        results: list[health.ProbeResult] = []
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline:
            if url:
                results.append(health.probe_http(url, timeout=cfg.health.timeout.total_seconds()))
            time.sleep(cfg.failback.probe_interval.total_seconds())
        after = r.app_stats()
        error_rate, p95 = health.error_rate_and_latency(results) if results else (0.0, 0.0)
        breach = error_rate > cfg.failback.max_error_rate or p95 > cfg.failback.max_latency_ms
        return dr.TrafficStep(percent=percent, weights=r.app_weights(), probes=len(results),
                              error_rate=round(error_rate, 4), p95_ms=round(p95, 1), breach=breach,
                              served={k: after.get(k, 0) - before.get(k, 0) for k in after})
    finally:
        rt.close()


@task(name="route-back-to-dr", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 2, 5])
def route_back_to_dr(db: str, config: str | None) -> dict[str, int]:
    rt = runtime(config)
    try:
        traffic = rt.policy.database(db).traffic
        r = dr.router(rt, db, dr_operations(rt, db))
        r.set_app_weights({traffic.primary: 0, traffic.dr: 100})
        return r.app_weights()
    finally:
        rt.close()


@task(name="replica-lag", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def replica_lag(db: str, config: str | None) -> ReplicaLag:
    """Lag of the DR replica, as its engine measures it best (see ``DrOperations.lag``)."""
    rt = runtime(config)
    try:
        ops = dr_operations(rt, db)
    finally:
        rt.close()
    return ops.lag()


@task(name="archive-on-primary", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def archive_on_primary(db: str, config: str | None) -> dict[str, Any]:
    """After a switch: check that the new primary archives its log into drkit, and apply what `drkit setup`
    can (PostgreSQL: archive_command, reloaded). ``needed``: whether the engine starts a new chain on a switch
    (then the runbook takes a full at once); ``ok``: archiving is set up (nothing waits for a restart)."""
    rt = runtime(config)
    try:
        engine = open_engine(rt, db)
        if not engine.features.new_chain_after_switch:
            return {"needed": False, "ok": True, "applied": [], "remaining": []}
        done = engine.setup()
    finally:
        rt.close()
    remaining = [f"{i.name}: {i.current} (needs {i.expected}; {i.fix})" for i in done.remaining]
    return {"needed": True, "ok": not done.restart_needed, "applied": list(done.applied),
            "restart_needed": done.restart_needed, "remaining": remaining}
