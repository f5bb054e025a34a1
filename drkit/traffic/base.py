"""The Router protocol: how the DR runbooks move traffic between the primary and the DR side.

Two kinds of traffic, two kinds of move (the README's DR guide; docs/dr.md per engine):

* **Application traffic** is split by weight. ``set_app_weights({"primary": 10, "dr": 90})`` sends
  10 % of new application requests to the primary and 90 % to DR; the failback runbook steps it
  10 → 50 → 100 while the probes stay within bounds.
* **Database traffic** is never split: a database cannot take writes in two places. ``switch_database``
  makes one server the only target of new database connections and closes the sessions to the other.

Implementations: :class:`drkit.traffic.haproxy.HAProxyRouter` (both kinds),
:class:`drkit.traffic.azure_tm.AzureTrafficManagerRouter` (application weights only, DNS-level) and
:class:`drkit.traffic.endpoint.EndpointRecordRouter` (the catalog's active-endpoint record clients read;
database only). A router that cannot do one of the moves raises :class:`TrafficError` saying which router
does. Every call is idempotent: the runbooks re-run steps after a crash.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from drkit.errors import DrkitError

__all__ = ["ATM_ENDPOINT_TYPES", "Router", "TrafficError", "check_app_weights", "check_name"]

ATM_ENDPOINT_TYPES = ("azureEndpoints", "externalEndpoints", "nestedEndpoints")
"""The kinds of Azure Traffic Manager endpoint (the policy's ``traffic.azure.endpoints`` are checked on load)."""


class TrafficError(DrkitError):
    """A traffic router refused or failed a change (unknown server, API error, unsupported move)."""


@runtime_checkable
class Router(Protocol):
    """One way of steering clients between the primary and the DR side."""

    name: str  # e.g. "haproxy", "azure-tm", "endpoint-record"; used in messages and reports

    def set_app_weights(self, weights: Mapping[str, int]) -> None:
        """Split new application traffic: server/endpoint name → percent (0..100, summing to 100).

        Names the router knows but ``weights`` omits get 0. At least one name gets a non-zero share, so
        application traffic always has somewhere to go. Raises TrafficError if the router does not split
        application traffic.
        """
        ...

    def app_weights(self) -> dict[str, int]:
        """The current application split, name → percent (empty if the router does not split application traffic)."""
        ...

    def app_stats(self) -> dict[str, int]:
        """Requests each application server has answered so far, name → count (empty if the router does not
        count them); the failback runbook reports the difference over each traffic step."""
        ...

    def switch_database(self, active: str) -> None:
        """Make ``active`` the only server new database connections go to, and close sessions to the others.

        Idempotent: switching to the already active server changes nothing harmful.
        Raises TrafficError if the router does not carry database traffic.
        """
        ...

    def active_database(self) -> str | None:
        """The server that takes new database connections now, or None if none does (or the router cannot tell)."""
        ...

    def describe(self) -> str:
        """Human-readable description for messages and reports; never contains secrets."""
        ...


_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def check_name(what: str, name: str) -> str:
    """Return ``name`` if it is a plain identifier (letters, digits, ``_ . : -``), else raise TrafficError.

    Names end up in HAProxy runtime commands and Azure URLs, so anything that could change a command
    (spaces, ``;``, newlines, ``/``) is refused.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TrafficError(f"invalid {what} name {name!r}: use letters, digits, '_', '.', ':' or '-' (at most 128)")
    return name


def check_app_weights(weights: Mapping[str, int], known: Iterable[str], *, router: str) -> dict[str, int]:
    """Validate an application split and return it complete (every known name, omitted ones at 0).

    Rules: names must be known to the router, values are integers 0..100, they sum to 100 (they are
    percentages of the application traffic), and at least one is non-zero.
    """
    known = list(known)
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise TrafficError(f"{router}: unknown application server(s) {', '.join(unknown)}; known: {', '.join(known)}")
    full = {name: 0 for name in known}
    for name, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise TrafficError(f"{router}: the weight of {name} must be an integer percent 0..100, not {value!r}")
        full[name] = value
    total = sum(full.values())
    if total != 100:
        shown = ", ".join(f"{n}={v}" for n, v in full.items())
        raise TrafficError(f"{router}: application weights are percentages and must sum to 100, got {total} ({shown})")
    return full
