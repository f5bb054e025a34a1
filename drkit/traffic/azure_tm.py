"""Azure Traffic Manager weighted endpoints as an application-traffic router (ARM REST API, httpx).

Traffic Manager routes by DNS: a resolver gets one endpoint, chosen by the endpoints' weights (1..1000) among
the *enabled* ones. So a percent split maps to ``weight = percent * 10`` and 0 % to ``endpointStatus:
Disabled`` (a weight of 0 does not exist). Clients follow a change as their DNS cache (the profile's TTL)
expires: this is a gradual, approximate split, good for application traffic and useless for a database,
whose switch goes through the endpoint record or HAProxy.

Requests (api-version 2022-04-01):

* ``GET  {arm}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/trafficmanagerprofiles/{profile}``
  — the profile: routing method (must be Weighted) and its endpoints with their weight and status;
* ``PATCH …/trafficmanagerprofiles/{profile}/{type}/{endpoint}`` with ``{"properties": {...}}`` — one endpoint,
  ``type`` being azureEndpoints, externalEndpoints or nestedEndpoints.

Endpoints that gain traffic are patched before those that lose it, so the profile never has every endpoint
disabled. Endpoints already as wanted are not patched (ARM write requests are throttled). 429 and 5xx answers
and transport failures are retried (``Retry-After`` honoured); other errors raise TrafficError with the HTTP
status, ARM's error code and message and the request ids. The bearer token is fetched from the callable for each
request and never appears in a log line or an error.
"""

from __future__ import annotations

import email.utils
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from drkit.traffic.base import ATM_ENDPOINT_TYPES, TrafficError, check_app_weights, check_name

__all__ = ["ENDPOINT_TYPES", "AtmEndpoint", "AzureTrafficManagerRouter", "weight_properties"]

log = logging.getLogger(__name__)

ARM = "https://management.azure.com"
ENDPOINT_TYPES = ATM_ENDPOINT_TYPES
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class AtmEndpoint:
    """A Traffic Manager endpoint: its resource name and type (azureEndpoints, externalEndpoints, nestedEndpoints)."""

    resource: str
    type: str = "azureEndpoints"

    @classmethod
    def parse(cls, value: str | AtmEndpoint) -> AtmEndpoint:
        """``"name"`` (an azureEndpoints endpoint) or ``"externalEndpoints/name"``."""
        if isinstance(value, AtmEndpoint):
            endpoint = value
        else:
            kind, sep, resource = value.rpartition("/")
            endpoint = cls(resource, kind) if sep else cls(value)
        if endpoint.type not in ENDPOINT_TYPES:
            raise TrafficError(
                f"unknown Traffic Manager endpoint type {endpoint.type!r}; use one of {', '.join(ENDPOINT_TYPES)}"
            )
        _segment("Traffic Manager endpoint", endpoint.resource)
        return endpoint


def _segment(what: str, value: str) -> str:
    """An Azure resource name as one URL path segment: non-empty, no '/', '?', '#', whitespace or control chars."""
    bad = not isinstance(value, str) or not value or len(value) > 260
    if bad or any(c in "/?#%\\" or c.isspace() or not c.isprintable() for c in value):
        raise TrafficError(f"invalid {what} name {value!r}")
    return value


def weight_properties(percent: int) -> dict[str, Any]:
    """The endpoint properties for a share of traffic: 0 → Disabled, else Enabled with weight percent × 10."""
    if percent == 0:
        return {"endpointStatus": "Disabled"}
    return {"endpointStatus": "Enabled", "weight": max(1, percent * 10)}


class AzureTrafficManagerRouter:
    """A :class:`~drkit.traffic.base.Router` that splits application traffic with Traffic Manager weights.

    ``endpoints`` maps drkit's names (``"primary"``, ``"dr"``) to the endpoint resources of the profile, each
    ``"resource-name"`` (type azureEndpoints), ``"externalEndpoints/resource-name"`` or an :class:`AtmEndpoint`.
    ``credential_token`` returns a bearer token for ``https://management.azure.com/`` (for example
    ``lambda: DefaultAzureCredential().get_token("https://management.azure.com/.default").token``); it is called
    for every request, so it should cache.
    """

    def __init__(
        self,
        subscription: str,
        resource_group: str,
        profile: str,
        *,
        endpoints: Mapping[str, str | AtmEndpoint],
        credential_token: Callable[[], str],
        transport: httpx.BaseTransport | None = None,
        api_version: str = "2022-04-01",
        base_url: str = ARM,
        name: str = "azure-tm",
        max_attempts: int = 5,
        max_retry_wait: float = 60.0,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.subscription = _segment("subscription", subscription)
        self.resource_group = _segment("resource group", resource_group)
        self.profile = _segment("Traffic Manager profile", profile)
        if not endpoints:
            raise TrafficError("an Azure Traffic Manager router needs at least one endpoint")
        self.endpoints = {check_name("endpoint", n): AtmEndpoint.parse(e) for n, e in endpoints.items()}
        self.name = name
        self.api_version = api_version
        self.max_attempts = max(1, max_attempts)
        self.max_retry_wait = max_retry_wait
        self._token = credential_token
        self._sleep = sleep
        self._profile_path = (
            f"/subscriptions/{quote(subscription, safe='')}/resourceGroups/{quote(resource_group, safe='')}"
            f"/providers/Microsoft.Network/trafficmanagerprofiles/{quote(profile, safe='')}"
        )
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"), transport=transport, timeout=timeout, follow_redirects=False
        )

    def describe(self) -> str:
        return f"Azure Traffic Manager profile {self.profile} (resource group {self.resource_group})"

    def __repr__(self) -> str:
        return f"AzureTrafficManagerRouter({self.describe()})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AzureTrafficManagerRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- URLs --------------------------------------------------------------------------------------

    def profile_url(self) -> str:
        return f"{self._profile_path}?api-version={self.api_version}"

    def endpoint_url(self, name: str) -> str:
        endpoint = self.endpoints[name]
        resource = quote(endpoint.resource, safe="")
        return f"{self._profile_path}/{endpoint.type}/{resource}?api-version={self.api_version}"

    # -- Router ------------------------------------------------------------------------------------

    def get_profile(self) -> dict[str, Any]:
        """The profile resource (``GET``), checked to route by weight."""
        profile = self._request("GET", self.profile_url(), what=f"read profile {self.profile}")
        method = (profile.get("properties") or {}).get("trafficRoutingMethod")
        if method != "Weighted":
            raise TrafficError(
                f"{self.describe()} routes by {method or 'an unknown method'}, not Weighted: "
                "endpoint weights would not split traffic; change the profile's routing method to Weighted"
            )
        return profile

    def _current(self, profile: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """drkit name → that endpoint's properties in the profile; TrafficError if one is missing."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for item in (profile.get("properties") or {}).get("endpoints") or []:
            kind = str(item.get("type", "")).rsplit("/", 1)[-1].lower()
            found[(kind, str(item.get("name", "")).lower())] = item.get("properties") or {}
        current: dict[str, dict[str, Any]] = {}
        missing = []
        for name, endpoint in self.endpoints.items():
            props = found.get((endpoint.type.lower(), endpoint.resource.lower()))
            if props is None:
                missing.append(f"{name} ({endpoint.type}/{endpoint.resource})")
            else:
                current[name] = props
        if missing:
            raise TrafficError(f"{self.describe()} has no endpoint {', '.join(missing)}")
        return current

    def set_app_weights(self, weights: Mapping[str, int]) -> None:
        full = check_app_weights(weights, self.endpoints, router=self.describe())
        current = self._current(self.get_profile())
        share = _shares(current)
        # Endpoints that gain traffic first, disabled ones last: at no moment is every endpoint disabled.
        order = sorted(full, key=lambda n: (full[n] == 0, full[n] <= share[n]))
        for name in order:
            wanted = weight_properties(full[name])
            now = current[name]
            if all(now.get(key) == value for key, value in wanted.items()):
                continue
            self._request(
                "PATCH",
                self.endpoint_url(name),
                json={"properties": wanted},
                what=f"set endpoint {self.endpoints[name].resource} to {full[name]}%",
            )
        log.info("%s: application weights now %s", self.describe(), full)

    def app_weights(self) -> dict[str, int]:
        """Each endpoint's share in percent: its weight over the enabled endpoints' total (Disabled → 0)."""
        return _shares(self._current(self.get_profile()))

    def app_stats(self) -> dict[str, int]:
        """Empty: Traffic Manager answers DNS queries and never sees the requests."""
        return {}

    def switch_database(self, active: str) -> None:
        raise TrafficError(
            f"{self.describe()} routes by DNS and cannot switch a database atomically (clients cache DNS answers, "
            "so writes would land in two places): the database switch goes through the endpoint record "
            "(EndpointRecordRouter) or HAProxy"
        )

    def active_database(self) -> str | None:
        """None: Traffic Manager does not carry database traffic."""
        return None

    # -- HTTP --------------------------------------------------------------------------------------

    def _request(self, method: str, url: str, *, what: str, json: Any = None) -> dict[str, Any]:
        client_request_id = str(uuid.uuid4())
        token = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                token = self._token()
            except Exception as exc:  # the credential's own error, which never holds the token
                raise TrafficError(
                    f"{self.describe()}: could not get an Azure access token to {what}: {type(exc).__name__}: {exc}"
                ) from exc
            headers = {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "x-ms-client-request-id": client_request_id,
            }
            last_error: str
            try:
                response = self._client.request(method, url, headers=headers, json=json)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                wait = self._backoff(attempt, None)
            else:
                if response.status_code < 300:
                    return _json_object(response)
                if response.status_code not in _RETRY_STATUS:
                    raise TrafficError(
                        _redact(self._error(method, url, what, response, client_request_id), token)
                    ) from None
                last_error = self._error(method, url, what, response, client_request_id)
                wait = self._backoff(attempt, response)
            if attempt == self.max_attempts:
                raise TrafficError(
                    _redact(f"{last_error} (gave up after {self.max_attempts} attempts)", token)
                ) from None
            log.warning(
                "%s: %s failed (%s); retrying in %.1fs", self.describe(), what, _redact(last_error, token), wait
            )
            self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = _retry_after(response)
            if after is not None:
                return min(after, self.max_retry_wait)
        return float(min(2 ** (attempt - 1), self.max_retry_wait))

    def _error(self, method: str, url: str, what: str, response: httpx.Response, client_request_id: str) -> str:
        code, message = _arm_error(response)
        ids = [f"x-ms-client-request-id {client_request_id}"]
        for header in ("x-ms-request-id", "x-ms-correlation-request-id"):
            if response.headers.get(header):
                ids.append(f"{header} {response.headers[header]}")
        path = url.split("?", 1)[0]
        return (
            f"{self.describe()}: could not {what}: {method} {path} answered HTTP {response.status_code} "
            f"{code}: {message} ({'; '.join(ids)})"
        )


def _shares(current: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """name → percent of traffic: weight over the total of the enabled endpoints (Disabled → 0)."""
    effective = {
        name: (0 if props.get("endpointStatus") == "Disabled" else int(props.get("weight") or 1))
        for name, props in current.items()
    }
    total = sum(effective.values())
    if total == 0:
        return dict.fromkeys(effective, 0)
    return {name: round(100 * weight / total) for name, weight in effective.items()}


def _json_object(response: httpx.Response) -> dict[str, Any]:
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _arm_error(response: httpx.Response) -> tuple[str, str]:
    """ARM's ``{"error": {"code", "message"}}`` (or the raw text) of an error answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        inner = body.get("error")
        error: dict[str, Any] = inner if isinstance(inner, dict) else body
        code = str(error.get("code") or response.reason_phrase or "error")
        message = str(error.get("message") or "").strip()
        return code, message[:500] or "(no message)"
    text = " ".join(response.text.split())[:300]
    return response.reason_phrase or "error", text or "(no body)"


def _retry_after(response: httpx.Response) -> float | None:
    for header in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = response.headers.get(header)
        if value:
            try:
                return max(0.0, float(value) / 1000)
            except ValueError:
                pass
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _redact(text: str, token: str) -> str:
    """Belt and braces: a server that echoes the token back must not get it into our messages."""
    return text.replace(token, "***") if token else text
