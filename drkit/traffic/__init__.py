"""Traffic routers: move application traffic by weight and the database connection target atomically.

See :mod:`drkit.traffic.base` for the :class:`Router` protocol. Implementations live in their own modules
(``haproxy``, ``azure_tm``, ``endpoint``); :func:`build_router` makes the one a database's ``traffic`` policy
section names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from drkit.errors import ConfigError
from drkit.traffic.base import Router, TrafficError, check_app_weights

if TYPE_CHECKING:
    import httpx

    from drkit.config import TrafficConfig
    from drkit.traffic.endpoint import EndpointCatalog

__all__ = ["ARM_SCOPE", "Router", "TrafficError", "build_router", "check_app_weights"]

ARM_SCOPE = "https://management.azure.com/.default"


def _default_azure_token() -> Callable[[], str]:
    from azure.identity import DefaultAzureCredential  # only when a Traffic Manager router is used

    credential = DefaultAzureCredential()  # caches tokens and refreshes them before they expire
    return lambda: credential.get_token(ARM_SCOPE).token


def build_router(
    database: str,
    traffic: TrafficConfig,
    *,
    catalog: EndpointCatalog | None = None,
    db_endpoints: Mapping[str, str] | None = None,
    actor: str = "drkit",
    credential_token: Callable[[], str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> Router:
    """The router of ``databases.<database>.traffic``.

    * ``haproxy``: :class:`~drkit.traffic.haproxy.HAProxyRouter` on ``socket`` (paths as given: resolve relative
      ones against the policy file first), ``app_backend`` / ``db_backend``, ``state_file``. Its servers must be
      named ``traffic.primary`` / ``traffic.dr``.
    * ``azure_tm``: :class:`~drkit.traffic.azure_tm.AzureTrafficManagerRouter` from ``traffic.azure`` (the
      policy's typed :class:`~drkit.config.AzureTrafficConfig`, checked on load: ``subscription``,
      ``resource_group``, ``profile``, ``endpoints`` keyed by ``traffic.primary`` / ``traffic.dr``,
      ``api_version``). The token comes from ``credential_token`` or azure-identity's DefaultAzureCredential.
    * ``endpoint``: :class:`~drkit.traffic.endpoint.EndpointRecordRouter` over ``catalog`` with ``db_endpoints``
      (``{traffic.primary: "host:port", traffic.dr: "host:port"}``, e.g. from the primary's and the replica's DSN).
    """
    where = f"databases.{database}.traffic"
    if traffic.router == "haproxy":
        from drkit.traffic.haproxy import HAProxyRouter

        if traffic.socket is None:
            raise ConfigError(f"{where}.socket: a haproxy router needs its runtime API socket")
        return HAProxyRouter(
            traffic.socket,
            app_backend=traffic.app_backend,
            db_backend=traffic.db_backend,
            state_file=traffic.state_file,
        )
    if traffic.router == "azure_tm":
        from drkit.traffic.azure_tm import AzureTrafficManagerRouter

        azure = traffic.azure
        if azure is None:  # the policy refuses this on load; a TrafficConfig built in code may still lack it
            raise ConfigError(f"{where}.azure: an azure_tm router needs subscription, resource_group, profile "
                              "and endpoints")
        return AzureTrafficManagerRouter(
            azure.subscription,
            azure.resource_group,
            azure.profile,
            endpoints=azure.endpoints,
            credential_token=credential_token or _default_azure_token(),
            transport=transport,
            api_version=azure.api_version,
        )
    from drkit.traffic.endpoint import EndpointRecordRouter

    if catalog is None or not db_endpoints:
        raise TrafficError(f"{where}: the endpoint-record router needs the catalog and the host:port of each side")
    return EndpointRecordRouter(catalog, database, db_endpoints, actor)
