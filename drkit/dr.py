"""The DR runbooks' engine-neutral parts: the traffic router, the typed results of their steps, the lag summary.

The runbooks (flows/dr.py) are sequences of idempotent steps (tasks/dr.py). What a step does to a database
server (probe, promote, fence, resynchronise, measure lag) is behind
:class:`drkit.engines.base.DrOperations`, which :func:`drkit.engines.dr_operations` picks for the database's
engine; this module never asks which engine it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from drkit.engines import dr_operations
from drkit.engines.base import DrOperations, Side
from drkit.health import ProbeResult, ProbeSeries
from drkit.runtime import Runtime
from drkit.traffic import Router, build_router

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


def lag_summary(rt: Runtime, db: str) -> dict[str, object] | None:
    """The DR replica's lag for `drkit status` (None when no replica is configured); never raises."""
    if rt.policy.database(db).replica is None:
        return None
    try:
        lag = dr_operations(rt, db).lag(timeout=3)
    except Exception as exc:  # a status line must not fail because one server is down
        return {"state": "unknown", "error": str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}
    return {"state": lag.state, "bytes": lag.bytes, "seconds": lag.seconds, "max_lag_seconds": lag.max_lag_seconds,
            "too_far": lag.too_far}
