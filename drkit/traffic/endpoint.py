"""The catalog's active-endpoint record as a router: where clients that look it up connect.

``switch_database("dr")`` records ``dr``'s ``host:port`` as the active endpoint of the database in the catalog
(``Catalog.set_endpoint``, audited as ``endpoint.set``) unless the record already names it; clients and the
operator read it back with ``Catalog.get_endpoint`` / ``drkit status``. It holds one endpoint, so it does not
split application traffic. The DR runbooks write the full record (which side is primary, its data
directory) first, through ``drkit.dr.record_primary``, so this router then finds nothing to change: one
``endpoint.set`` per switch. Mirroring the record into a Prefect Variable is the flow layer's job (drkit
does not import Prefect).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from drkit.traffic.base import TrafficError, check_name

if TYPE_CHECKING:
    from drkit.catalog.records import EndpointRecord

__all__ = ["EndpointCatalog", "EndpointRecordRouter"]

log = logging.getLogger(__name__)


class EndpointCatalog(Protocol):
    """The part of :class:`drkit.catalog.repository.Catalog` this router uses."""

    def set_endpoint(self, database: str, *, dsn_hint: str, role: str, actor: str, side: str | None = None,
                     data_dir: str | None = None) -> bool: ...

    def get_endpoint(self, database: str) -> EndpointRecord | None: ...


def _check_host_port(name: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    looks_like_a_dsn = any(marker in value for marker in ("@", "://", "="))
    if looks_like_a_dsn or not sep or not host or not port.isdigit() or any(c.isspace() for c in value):
        shown = "a DSN" if looks_like_a_dsn else repr(value)
        raise TrafficError(f"the endpoint of {name} must be host:port (no user, password or DSN), got {shown}")
    return value


class EndpointRecordRouter:
    """A :class:`~drkit.traffic.base.Router` over the catalog's active-endpoint record of one database.

    ``endpoints`` maps server names (``"primary"``, ``"dr"``) to ``host:port``; the record stores the chosen one's
    ``host:port`` as ``dsn_hint`` and its name as ``role``. ``actor`` is who the audit trail names.
    """

    def __init__(
        self,
        catalog: EndpointCatalog,
        database: str,
        endpoints: Mapping[str, str],
        actor: str,
        *,
        name: str = "endpoint-record",
    ) -> None:
        if not endpoints:
            raise TrafficError("an endpoint record router needs at least one endpoint")
        self.catalog = catalog
        self.database = database
        self.endpoints = {check_name("endpoint", n): _check_host_port(n, hp) for n, hp in endpoints.items()}
        if not actor or not actor.strip():
            raise TrafficError("an endpoint record router needs an actor (who the audit trail names)")
        self.actor = actor.strip()
        self.name = name

    def describe(self) -> str:
        return f"the catalog's active-endpoint record of {self.database}"

    def __repr__(self) -> str:
        return f"EndpointRecordRouter({self.describe()})"

    def set_app_weights(self, weights: Mapping[str, int]) -> None:
        raise TrafficError(
            f"{self.describe()} holds one database endpoint and does not split application traffic: "
            "application weights go through HAProxy or Azure Traffic Manager"
        )

    def app_weights(self) -> dict[str, int]:
        """Empty: the record does not split application traffic."""
        return {}

    def app_stats(self) -> dict[str, int]:
        """Empty: the endpoint record carries no application traffic."""
        return {}

    def switch_database(self, active: str) -> None:
        """Record ``active``'s host:port as the database's endpoint (nothing is written if it already is)."""
        if active not in self.endpoints:
            raise TrafficError(f"{self.describe()}: unknown endpoint {active!r}; known: {', '.join(self.endpoints)}")
        dsn_hint = self.endpoints[active]
        record = self.catalog.get_endpoint(self.database)
        if record is not None and record.dsn_hint == dsn_hint and record.role == active:
            return
        self.catalog.set_endpoint(self.database, dsn_hint=dsn_hint, role=active, actor=self.actor)
        log.info("%s: now %s (%s)", self.describe(), active, dsn_hint)

    def active_database(self) -> str | None:
        """The endpoint whose host:port the record holds (by role if two share it); None if unset or unknown."""
        record = self.catalog.get_endpoint(self.database)
        if record is None:
            return None
        matches = [n for n, hp in self.endpoints.items() if hp == record.dsn_hint]
        if record.role in matches:
            return record.role
        return matches[0] if matches else None
