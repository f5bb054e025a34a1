"""The DR runbooks' engine-neutral parts: the traffic router, the typed results of their steps, the lag summary.

The runbooks (flows/dr.py) are sequences of idempotent steps (tasks/dr.py). What a step does to a database
server (probe, promote, fence, resynchronise, measure lag) is behind
:class:`drkit.engines.base.DrOperations`, which :func:`drkit.engines.dr_operations` picks for the database's
engine; this module never asks which engine it is.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

from drkit.engines import dr_operations, open_engine
from drkit.engines.base import DrOperations, Side
from drkit.health import ProbeResult, ProbeSeries
from drkit.runtime import Runtime
from drkit.traffic import Router, build_router

if TYPE_CHECKING:
    from drkit.catalog.records import EndpointRecord

WritableSides = Literal["primary", "dr", "split", "none"]
"""Which side takes writes: one of them, both (split brain: resolve by hand) or none."""


def side_name(rt: Runtime, db: str, side: Side) -> str:
    """The router's name for ``side`` (``traffic.primary`` / ``traffic.dr``)."""
    traffic = rt.policy.database(db).traffic
    return traffic.primary if side == "primary" else traffic.dr


def router(rt: Runtime, db: str, ops: DrOperations) -> Router:
    """The router the policy's ``traffic`` section names, with both sides' ``host:port``."""
    traffic = rt.policy.database(db).traffic
    if traffic.socket is not None:
        traffic = traffic.model_copy(update={
            "socket": rt.policy.resolve(traffic.socket),
            "state_file": rt.policy.resolve(traffic.state_file) if traffic.state_file else None})
    return build_router(db, traffic, catalog=rt.catalog,
                        db_endpoints={traffic.primary: ops.endpoint("primary"), traffic.dr: ops.endpoint("dr")},
                        actor="drkit-dr")


def record_primary(rt: Runtime, db: str, side: Side, ops: DrOperations, *, actor: str = "drkit-dr") -> EndpointRecord:
    """Record ``side`` as the primary of ``db`` in the catalog: its ``host:port``, the router's name for it, its
    data directory (when the policy says drkit manages it here). One ``endpoint.set`` when it changes, none
    when the record already says so; the record as it stands afterwards."""
    cfg = rt.policy.database(db)
    data_dir = cfg.data_dir if side == "primary" else (cfg.replica.data_dir if cfg.replica else None)
    rt.catalog.set_endpoint(db, dsn_hint=ops.endpoint(side), role=side_name(rt, db, side), side=side,
                            data_dir=str(rt.policy.resolve(data_dir)) if data_dir else None, actor=actor)
    return current_record(rt, db)


def record_recovered(rt: Runtime, db: str, *, host_port: str, data_dir: str, actor: str) -> EndpointRecord:
    """Record a cluster restored by corruption recovery as the primary of ``db`` (one ``endpoint.set``)."""
    rt.catalog.set_endpoint(db, dsn_hint=host_port, role="recovered", side="recovered", data_dir=data_dir,
                            actor=actor)
    return current_record(rt, db)


def current_record(rt: Runtime, db: str) -> EndpointRecord:
    record = rt.catalog.get_endpoint(db)
    if record is None:  # only after a concurrent downgrade or a hand edit of the catalog
        raise RuntimeError(f"the catalog holds no endpoint record of {db} right after recording it")
    return record


def writable_sides(primary: ProbeResult, dr: ProbeResult) -> WritableSides:
    if primary.ok and not dr.ok:
        return "primary"
    if dr.ok and not primary.ok:
        return "dr"
    return "split" if primary.ok and dr.ok else "none"


# -- typed step results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrimaryProbe:
    """The primary's database (and application URL, if set) probed with the policy's retries.

    Only the database failing every attempt justifies a failover; the application probe is evidence.
    """

    database: ProbeSeries
    application: ProbeSeries | None = None

    @property
    def down(self) -> bool:
        return self.database.failed_all

    @property
    def summary(self) -> list[str]:
        return [s.summary() for s in (self.database, self.application) if s is not None]

    def as_dict(self) -> dict[str, Any]:
        return {"down": self.down, "database": self.database.as_dict(),
                "application": self.application.as_dict() if self.application else None}


@dataclass(frozen=True)
class SideProbe:
    """One side probed after a switch: its database (writable) and its application URL, if set."""

    database: ProbeResult
    application: ProbeResult | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"database": self.database.as_dict(),
                "application": self.application.as_dict() if self.application else None}


@dataclass(frozen=True)
class Pointed:
    """Where clients were pointed: the router's name for the side, and its ``host:port``."""

    active: str
    endpoint: str

    def as_dict(self) -> dict[str, str]:
        return {"active": self.active, "endpoint": self.endpoint}


@dataclass(frozen=True)
class TrafficStep:
    """One failback step: ``percent`` of application traffic on the primary region, held while probed."""

    percent: int
    weights: dict[str, int]
    probes: int
    error_rate: float
    p95_ms: float
    breach: bool
    served: dict[str, int]
    """Requests each server answered during the hold (routers that count them; else empty)."""

    def as_dict(self) -> dict[str, Any]:
        return {"percent": self.percent, "weights": dict(self.weights), "probes": self.probes,
                "error_rate": self.error_rate, "p95_ms": self.p95_ms, "breach": self.breach,
                "served": dict(self.served)}


# -- status -----------------------------------------------------------------------------------------------

SideRole = Literal["primary", "standby", "down", "unknown"]
STATUS_TIMEOUT = 1.0
"""Seconds a status probe of one server may take (libpq's floor is 2 s to connect to a silent host)."""


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def side_role(probe: ProbeResult) -> SideRole:
    """What a probe says a server is: ``primary`` (takes writes), ``standby`` (answers read-only), ``down``."""
    if not probe.ok:
        return "down"
    if probe.writable is None:
        return "unknown"
    return "primary" if probe.writable else "standby"


def _side(ops: DrOperations, side: Side, timeout: float) -> dict[str, object]:
    try:
        endpoint = ops.endpoint(side)
        probe = ops.probe(side, timeout=timeout, require_writable=False)
    except Exception as exc:  # a status line must not fail because one server is misconfigured
        return {"role": "unknown", "endpoint": None, "detail": _first_line(exc)}
    return {"role": side_role(probe), "endpoint": endpoint, "detail": probe.detail}


def _recovered(rt: Runtime, db: str, endpoint: str, timeout: float) -> dict[str, object]:
    """The recovered cluster the record names, probed through the engine (the server it backs up)."""
    try:
        probe = open_engine(rt, db).probe_primary(timeout=timeout)
    except Exception as exc:
        return {"role": "unknown", "endpoint": endpoint, "detail": _first_line(exc)}
    return {"role": side_role(probe), "endpoint": endpoint, "detail": probe.detail}


def _lag(ops: DrOperations, timeout: float) -> dict[str, object]:
    try:
        lag = ops.lag(timeout=timeout)
    except Exception as exc:  # a status line must not fail because one server is down
        return {"state": "unknown", "error": _first_line(exc)}
    return {"state": lag.state, "bytes": lag.bytes, "seconds": lag.seconds, "max_lag_seconds": lag.max_lag_seconds,
            "too_far": lag.too_far}


@dataclass(frozen=True)
class DrStatus:
    """One database's DR picture for `drkit status`: the catalog's endpoint record, each side's measured role
    (``primary``, ``dr`` when a replica is configured, ``recovered`` when the record names one), the DR
    replica's lag (``replica_lag`` None, and ``sides`` None unless a cluster was recovered, without a replica)."""

    endpoint: dict[str, Any] | None
    sides: dict[str, dict[str, object]] | None
    replica_lag: dict[str, object] | None

    def as_json(self) -> dict[str, object]:
        return {"endpoint": self.endpoint, "sides": self.sides, "replica_lag": self.replica_lag}


def _is_recovered(record: EndpointRecord | None) -> TypeGuard[EndpointRecord]:
    return record is not None and record.side == "recovered"


def dr_status(rt: Runtime, db: str, *, timeout: float = STATUS_TIMEOUT) -> DrStatus:
    """The endpoint record, both sides probed (at once, each bounded by ``timeout``) and the lag; never raises."""
    record = rt.catalog.get_endpoint(db)
    endpoint = record.as_dict() if record is not None else None
    if rt.policy.database(db).replica is None:
        sides = {"recovered": _recovered(rt, db, record.dsn_hint, timeout)} if _is_recovered(record) else None
        return DrStatus(endpoint, sides, None)
    try:
        ops = dr_operations(rt, db)
    except Exception as exc:
        unknown: dict[str, object] = {"role": "unknown", "endpoint": None, "detail": _first_line(exc)}
        return DrStatus(endpoint, {"primary": unknown, "dr": unknown}, {"state": "unknown", "error": _first_line(exc)})
    with ThreadPoolExecutor(max_workers=3) as pool:  # the catalog is read in this thread only
        primary = pool.submit(_side, ops, "primary", timeout)
        dr = pool.submit(_side, ops, "dr", timeout)
        lag = pool.submit(_lag, ops, max(timeout, 2.0))
        extra = {"recovered": _recovered(rt, db, record.dsn_hint, timeout)} if _is_recovered(record) else {}
        sides = {"primary": primary.result(), "dr": dr.result(), **extra}
        return DrStatus(endpoint, sides, lag.result())
