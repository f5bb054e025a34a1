"""Contract tests of AzureTrafficManagerRouter: the exact ARM requests, against httpx.MockTransport.

Traffic Manager cannot run here, so these tests pin what goes over the wire (method, URL, headers, JSON body)
for the failback steps 10 → 50 → 100, the retry on 429 / 5xx with Retry-After, and an ARM error (409). The bearer
token must reach the Authorization header and nothing else: no exception text, no log line.

The last sections cover the other routers' pure parts: the weight rules of the Router protocol, the
EndpointRecordRouter over a real (SQLite) catalog, and build_router (policy → router).
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from drkit.catalog.repository import Catalog
from drkit.config import TrafficConfig
from drkit.errors import ConfigError
from drkit.traffic import build_router
from drkit.traffic.azure_tm import AtmEndpoint, AzureTrafficManagerRouter, weight_properties
from drkit.traffic.base import Router, TrafficError, check_app_weights
from drkit.traffic.endpoint import EndpointRecordRouter
from drkit.traffic.haproxy import HAProxyRouter

SUB = "6f1c2d3e-0000-4000-8000-00000000abcd"
RG = "rg-orders-dr"
PROFILE = "tm-orders"
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOi.s3cr3t-bearer-token.sig"
PROFILE_URL = (
    f"https://management.azure.com/subscriptions/{SUB}/resourceGroups/{RG}"
    f"/providers/Microsoft.Network/trafficmanagerprofiles/{PROFILE}"
)
API = "?api-version=2022-04-01"
PRIMARY_URL = f"{PROFILE_URL}/azureEndpoints/orders-weu{API}"
DR_URL = f"{PROFILE_URL}/externalEndpoints/orders-neu{API}"


class FakeArm:
    """A Traffic Manager profile behind ARM: answers GET profile and PATCH endpoint, records every request."""

    def __init__(self, *, primary: dict[str, Any], dr: dict[str, Any], method: str = "Weighted") -> None:
        self.routing = method
        self.endpoints = {
            ("azureEndpoints", "orders-weu"): dict(primary),
            ("externalEndpoints", "orders-neu"): dict(dr),
        }
        self.requests: list[httpx.Request] = []
        self.scripted: list[httpx.Response | Exception] = []  # answered first, in order, whatever the request

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.scripted:
            item = self.scripted.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        path = request.url.path
        if request.method == "GET" and path.endswith(f"/trafficmanagerprofiles/{PROFILE}"):
            return httpx.Response(200, json=self.profile())
        kind, name = path.rsplit("/", 2)[-2:]
        if request.method == "PATCH" and (kind, name) in self.endpoints:
            self.endpoints[(kind, name)].update(json.loads(request.content)["properties"])
            return httpx.Response(200, json=self.endpoint(kind, name))
        return httpx.Response(404, json={"error": {"code": "NotFound", "message": f"no {path}"}})

    def endpoint(self, kind: str, name: str) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/trafficManagerProfiles/"
            f"{PROFILE}/{kind}/{name}",
            "name": name,
            "type": f"Microsoft.Network/trafficManagerProfiles/{kind}",
            "properties": {"endpointMonitorStatus": "Online", **self.endpoints[(kind, name)]},
        }

    def profile(self) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/trafficManagerProfiles/"
            f"{PROFILE}",
            "name": PROFILE,
            "type": "Microsoft.Network/trafficManagerProfiles",
            "properties": {
                "profileStatus": "Enabled",
                "trafficRoutingMethod": self.routing,
                "dnsConfig": {"relativeName": "orders", "ttl": 30},
                "endpoints": [self.endpoint(k, n) for k, n in self.endpoints],
            },
        }

    def summary(self) -> list[tuple[str, str, Any]]:
        return [(r.method, str(r.url), json.loads(r.content) if r.content else None) for r in self.requests]


@pytest.fixture
def on_dr() -> FakeArm:
    """The state after a failover: primary disabled, DR takes everything."""
    return FakeArm(
        primary={"endpointStatus": "Disabled", "weight": 1000},
        dr={"endpointStatus": "Enabled", "weight": 1000},
    )


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_router(arm: FakeArm, sleeps: Sleeps, **kwargs: Any) -> AzureTrafficManagerRouter:
    return AzureTrafficManagerRouter(
        SUB,
        RG,
        PROFILE,
        endpoints={"primary": "orders-weu", "dr": AtmEndpoint("orders-neu", "externalEndpoints")},
        credential_token=kwargs.pop("credential_token", lambda: TOKEN),
        transport=httpx.MockTransport(arm.handler),
        sleep=sleeps,
        **kwargs,
    )


@pytest.fixture
def router(on_dr: FakeArm, sleeps: Sleeps) -> Iterator[AzureTrafficManagerRouter]:
    r = make_router(on_dr, sleeps)
    yield r
    r.close()


def assert_headers(request: httpx.Request) -> None:
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["accept"] == "application/json"
    uuid.UUID(request.headers["x-ms-client-request-id"])
    if request.method == "PATCH":
        assert request.headers["content-type"] == "application/json"
    else:
        assert not request.content


def no_token_in(exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc))
    assert TOKEN not in text
    assert TOKEN not in repr(exc)


# -- the failback steps --------------------------------------------------------------------------------


def test_is_a_router(router: AzureTrafficManagerRouter) -> None:
    assert isinstance(router, Router)
    assert PROFILE in router.describe() and TOKEN not in router.describe()


def test_failback_steps_10_50_100_send_exactly_these_requests(
    router: AzureTrafficManagerRouter, on_dr: FakeArm, sleeps: Sleeps
) -> None:
    assert router.app_weights() == {"primary": 0, "dr": 100}
    on_dr.requests.clear()

    router.set_app_weights({"primary": 10, "dr": 90})
    assert on_dr.summary() == [
        ("GET", PROFILE_URL + API, None),
        ("PATCH", PRIMARY_URL, {"properties": {"endpointStatus": "Enabled", "weight": 100}}),
        ("PATCH", DR_URL, {"properties": {"endpointStatus": "Enabled", "weight": 900}}),
    ]
    for request in on_dr.requests:
        assert_headers(request)
    assert router.app_weights() == {"primary": 10, "dr": 90}
    on_dr.requests.clear()

    router.set_app_weights({"primary": 50, "dr": 50})
    assert on_dr.summary() == [
        ("GET", PROFILE_URL + API, None),
        ("PATCH", PRIMARY_URL, {"properties": {"endpointStatus": "Enabled", "weight": 500}}),
        ("PATCH", DR_URL, {"properties": {"endpointStatus": "Enabled", "weight": 500}}),
    ]
    on_dr.requests.clear()

    # 100 %: the gaining endpoint first, the one going to 0 % is disabled last (never all disabled).
    router.set_app_weights({"primary": 100})
    assert on_dr.summary() == [
        ("GET", PROFILE_URL + API, None),
        ("PATCH", PRIMARY_URL, {"properties": {"endpointStatus": "Enabled", "weight": 1000}}),
        ("PATCH", DR_URL, {"properties": {"endpointStatus": "Disabled"}}),
    ]
    for request in on_dr.requests:
        assert_headers(request)
    assert router.app_weights() == {"primary": 100, "dr": 0}
    assert sleeps == []


def test_rollback_to_dr_enables_dr_before_disabling_primary(router: AzureTrafficManagerRouter, on_dr: FakeArm) -> None:
    router.set_app_weights({"primary": 50, "dr": 50})
    on_dr.requests.clear()
    router.set_app_weights({"primary": 0, "dr": 100})
    assert on_dr.summary() == [
        ("GET", PROFILE_URL + API, None),
        ("PATCH", DR_URL, {"properties": {"endpointStatus": "Enabled", "weight": 1000}}),
        ("PATCH", PRIMARY_URL, {"properties": {"endpointStatus": "Disabled"}}),
    ]


def test_same_weights_again_patch_nothing(router: AzureTrafficManagerRouter, on_dr: FakeArm) -> None:
    router.set_app_weights({"primary": 10, "dr": 90})
    on_dr.requests.clear()
    router.set_app_weights({"primary": 10, "dr": 90})
    assert on_dr.summary() == [("GET", PROFILE_URL + API, None)]


def test_weight_mapping() -> None:
    assert weight_properties(0) == {"endpointStatus": "Disabled"}
    assert weight_properties(1) == {"endpointStatus": "Enabled", "weight": 10}
    assert weight_properties(10) == {"endpointStatus": "Enabled", "weight": 100}
    assert weight_properties(100) == {"endpointStatus": "Enabled", "weight": 1000}


def test_invalid_weights_send_nothing(router: AzureTrafficManagerRouter, on_dr: FakeArm) -> None:
    for bad in ({"primary": 10, "dr": 80}, {"primary": 0}, {"primary": 150, "dr": -50}, {"elsewhere": 100}):
        with pytest.raises(TrafficError):
            router.set_app_weights(bad)
    assert on_dr.requests == []


# -- retries and errors --------------------------------------------------------------------------------


def test_429_is_retried_after_retry_after(router: AzureTrafficManagerRouter, on_dr: FakeArm, sleeps: Sleeps) -> None:
    throttled = httpx.Response(
        429,
        headers={"Retry-After": "7"},
        json={"error": {"code": "TooManyRequests", "message": "The request is being throttled."}},
    )
    on_dr.scripted = [httpx.Response(200, json=on_dr.profile()), throttled]
    router.set_app_weights({"primary": 10, "dr": 90})
    assert sleeps == [7.0]
    assert on_dr.summary() == [
        ("GET", PROFILE_URL + API, None),
        ("PATCH", PRIMARY_URL, {"properties": {"endpointStatus": "Enabled", "weight": 100}}),
        ("PATCH", PRIMARY_URL, {"properties": {"endpointStatus": "Enabled", "weight": 100}}),
        ("PATCH", DR_URL, {"properties": {"endpointStatus": "Enabled", "weight": 900}}),
    ]
    # The retry is the same request (same client request id), with a token fetched again.
    first, second = on_dr.requests[1], on_dr.requests[2]
    assert first.headers["x-ms-client-request-id"] == second.headers["x-ms-client-request-id"]
    assert_headers(second)
    assert router.app_weights() == {"primary": 10, "dr": 90}


def test_5xx_and_transport_errors_back_off_then_succeed(
    router: AzureTrafficManagerRouter, on_dr: FakeArm, sleeps: Sleeps
) -> None:
    on_dr.scripted = [httpx.Response(503, text="upstream busy"), httpx.ConnectError("connection refused")]
    assert router.app_weights() == {"primary": 0, "dr": 100}
    assert sleeps == [1.0, 2.0]
    assert len(on_dr.requests) == 3


def test_retry_after_is_capped(on_dr: FakeArm, sleeps: Sleeps) -> None:
    r = make_router(on_dr, sleeps, max_retry_wait=5.0)
    on_dr.scripted = [httpx.Response(429, headers={"Retry-After": "3600"})]
    r.app_weights()
    assert sleeps == [5.0]


def test_409_raises_with_status_and_arm_code_and_no_token(
    router: AzureTrafficManagerRouter, on_dr: FakeArm, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    conflict = httpx.Response(
        409,
        headers={"x-ms-request-id": "req-1234", "x-ms-correlation-request-id": "corr-5678"},
        json={
            "error": {
                "code": "Conflict",
                "message": f"Another operation is in progress on profile {PROFILE} (token was Bearer {TOKEN})",
            }
        },
    )
    on_dr.scripted = [httpx.Response(200, json=on_dr.profile()), conflict]
    with pytest.raises(TrafficError) as info:
        router.set_app_weights({"primary": 10, "dr": 90})
    text = str(info.value)
    assert "HTTP 409" in text and "Conflict" in text and "Another operation is in progress" in text
    assert "PATCH" in text and "orders-weu" in text
    assert "req-1234" in text and "corr-5678" in text
    no_token_in(info.value)
    assert TOKEN not in caplog.text
    assert sleeps == []  # a 409 is not retried
    assert len(on_dr.requests) == 2  # nothing after the failed PATCH


def test_persistent_5xx_gives_up_with_the_last_error(
    router: AzureTrafficManagerRouter, on_dr: FakeArm, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    on_dr.scripted = [
        httpx.Response(500, json={"error": {"code": "InternalServerError", "message": "oops"}}) for _ in range(5)
    ]
    with pytest.raises(TrafficError, match=r"HTTP 500 InternalServerError.*gave up after 5 attempts") as info:
        router.app_weights()
    assert sleeps == [1.0, 2.0, 4.0, 8.0]
    no_token_in(info.value)
    assert TOKEN not in caplog.text


def test_token_errors_and_unknown_endpoints(on_dr: FakeArm, sleeps: Sleeps) -> None:
    def broken() -> str:
        raise RuntimeError("AADSTS700016: application not found")

    with pytest.raises(TrafficError, match="could not get an Azure access token.*AADSTS700016"):
        make_router(on_dr, sleeps, credential_token=broken).app_weights()

    del on_dr.endpoints[("externalEndpoints", "orders-neu")]
    with pytest.raises(TrafficError, match=r"has no endpoint dr \(externalEndpoints/orders-neu\)"):
        make_router(on_dr, sleeps).app_weights()


def test_a_profile_that_does_not_route_by_weight_is_refused(sleeps: Sleeps) -> None:
    arm = FakeArm(
        primary={"endpointStatus": "Enabled", "weight": 1}, dr={"endpointStatus": "Enabled"}, method="Priority"
    )
    with pytest.raises(TrafficError, match="routes by Priority, not Weighted"):
        make_router(arm, sleeps).set_app_weights({"primary": 50, "dr": 50})
    assert [r.method for r in arm.requests] == ["GET"]


def test_database_switch_is_not_a_dns_job(router: AzureTrafficManagerRouter, on_dr: FakeArm) -> None:
    with pytest.raises(TrafficError, match="endpoint record.*HAProxy"):
        router.switch_database("dr")
    assert router.active_database() is None
    assert on_dr.requests == []


def test_endpoint_specs_and_names() -> None:
    assert AtmEndpoint.parse("orders-weu") == AtmEndpoint("orders-weu", "azureEndpoints")
    assert AtmEndpoint.parse("externalEndpoints/orders-neu") == AtmEndpoint("orders-neu", "externalEndpoints")
    with pytest.raises(TrafficError, match="unknown Traffic Manager endpoint type"):
        AtmEndpoint.parse("cloudEndpoints/x")
    with pytest.raises(TrafficError, match="invalid resource group"):
        AzureTrafficManagerRouter(SUB, "rg/../x", PROFILE, endpoints={"a": "b"}, credential_token=lambda: TOKEN)
    r = AzureTrafficManagerRouter(
        SUB, "rg(dr).1", PROFILE, endpoints={"a": "b"}, credential_token=lambda: TOKEN, base_url="https://arm.example/"
    )
    assert r.endpoint_url("a") == (
        f"/subscriptions/{SUB}/resourceGroups/rg%28dr%29.1/providers/Microsoft.Network/trafficmanagerprofiles/"
        f"{PROFILE}/azureEndpoints/b{API}"
    )
    r.close()


# -- the Router protocol's weight rules and the endpoint record ----------------------------------------


def test_check_app_weights() -> None:
    assert check_app_weights({"dr": 100}, ["primary", "dr"], router="r") == {"primary": 0, "dr": 100}
    assert check_app_weights({"primary": 10, "dr": 90}, ["primary", "dr"], router="r") == {"primary": 10, "dr": 90}
    for bad, why in (
        ({"primary": 10}, "sum to 100"),
        ({"primary": True, "dr": 99}, "integer percent"),
        ({"primary": 0, "dr": 0}, "sum to 100"),
        ({"x": 100}, "unknown application server"),
    ):
        with pytest.raises(TrafficError, match=why):
            check_app_weights(bad, ["primary", "dr"], router="r")


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    cat = Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield cat
    cat.close()


def endpoint_router(catalog: Catalog, **kwargs: Any) -> EndpointRecordRouter:
    return EndpointRecordRouter(
        catalog, "orders", {"primary": "10.0.1.5:5432", "dr": "10.1.1.5:5432"}, "dr_failover", **kwargs
    )


def test_endpoint_record_router_switches_the_recorded_endpoint(catalog: Catalog) -> None:
    router = endpoint_router(catalog)
    assert isinstance(router, Router)
    assert router.active_database() is None
    assert router.app_stats() == {}  # it carries no application traffic, so it counts none
    router.switch_database("dr")
    record = catalog.get_endpoint("orders")
    assert record is not None
    assert (record.dsn_hint, record.role, record.updated_by) == ("10.1.1.5:5432", "dr", "dr_failover")
    assert router.active_database() == "dr"

    def audits() -> list[Any]:
        return catalog.audit_events(database="orders", action="endpoint.set")

    assert len(audits()) == 1
    router.switch_database("dr")  # idempotent: no second write, no second audit event
    assert len(audits()) == 1
    router.switch_database("primary")
    assert router.active_database() == "primary"
    assert len(audits()) == 2


def test_endpoint_record_router_refuses_what_it_cannot_do(catalog: Catalog) -> None:
    router = endpoint_router(catalog)
    with pytest.raises(TrafficError, match="does not split application traffic"):
        router.set_app_weights({"primary": 100})
    assert router.app_weights() == {}
    with pytest.raises(TrafficError, match="unknown endpoint 'elsewhere'"):
        router.switch_database("elsewhere")
    assert catalog.get_endpoint("orders") is None
    with pytest.raises(TrafficError, match="host:port"):
        EndpointRecordRouter(catalog, "orders", {"primary": "postgresql://u:pw@h:5432/db"}, "x")
    with pytest.raises(TrafficError, match="actor"):
        EndpointRecordRouter(catalog, "orders", {"primary": "h:5432"}, " ")


# -- build_router: the policy's traffic section → a router ---------------------------------------------


def test_build_router_from_the_policy(catalog: Catalog, on_dr: FakeArm, tmp_path: Path) -> None:
    hap = build_router("orders", TrafficConfig(router="haproxy", socket=Path("/run/haproxy/admin.sock")))
    assert isinstance(hap, HAProxyRouter)
    assert (hap.app_backend, hap.db_backend, hap.state_file) == ("app", "db", None)

    azure = {
        "subscription": SUB,
        "resource_group": RG,
        "profile": PROFILE,
        "endpoints": {"primary": "orders-weu", "dr": "externalEndpoints/orders-neu"},
    }
    atm = build_router(
        "orders",
        TrafficConfig(router="azure_tm", azure=azure),
        credential_token=lambda: TOKEN,
        transport=httpx.MockTransport(on_dr.handler),
    )
    assert isinstance(atm, AzureTrafficManagerRouter)
    assert atm.app_weights() == {"primary": 0, "dr": 100}
    assert atm.app_stats() == {}  # Traffic Manager answers DNS; it never sees the requests
    with pytest.raises(ConfigError, match=r"databases.orders.traffic.azure: an azure_tm router needs"):
        build_router("orders", TrafficConfig.model_construct(router="azure_tm", azure=None))

    record = build_router(
        "orders", TrafficConfig(), catalog=catalog, db_endpoints={"primary": "h1:5432", "dr": "h2:5432"}, actor="me"
    )
    assert isinstance(record, EndpointRecordRouter)
    record.switch_database("dr")
    assert record.active_database() == "dr"
    with pytest.raises(TrafficError, match="needs the catalog"):
        build_router("orders", TrafficConfig())


# -- traffic.azure in the policy file: a typed section, checked on load ----------------------------------


def _policy_with_traffic(tmp_path: Path, traffic: dict[str, Any]) -> Path:
    import yaml

    path = tmp_path / "drkit.yaml"
    path.write_text(yaml.safe_dump({"databases": {"orders": {
        "engine": "postgres", "dsn_env": "ORDERS_DSN", "data_dir": "/srv/pg",
        "replica": {"dsn_env": "ORDERS_DR_DSN"}, "traffic": traffic}}}))
    return path


AZURE = {"subscription": SUB, "resource_group": RG, "profile": PROFILE,
         "endpoints": {"primary": "orders-weu", "dr": "externalEndpoints/orders-neu"}}


def test_traffic_azure_is_read_into_a_typed_model(tmp_path: Path) -> None:
    from drkit.config import load_policy

    policy = load_policy(_policy_with_traffic(tmp_path, {"router": "azure_tm", "azure": AZURE}))
    azure = policy.database("orders").traffic.azure
    assert azure is not None
    assert (azure.subscription, azure.profile, azure.api_version) == (SUB, PROFILE, "2022-04-01")
    assert azure.endpoints["dr"] == "externalEndpoints/orders-neu"


@pytest.mark.parametrize(("azure", "expected"), [
    ({**AZURE, "profle": "tm-orders"}, r"databases\.orders\.traffic\.azure\.profle: unknown key"),
    ({k: v for k, v in AZURE.items() if k != "profile"},
     r"databases\.orders\.traffic\.azure\.profile: required key is missing"),
    ({**AZURE, "profile": ""}, r"databases\.orders\.traffic\.azure\.profile: String should have at least 1"),
    ({**AZURE, "endpoints": {"primary": "orders-weu"}},
     r"databases\.orders\.traffic: azure\.endpoints: no endpoint for dr"),
    ({**AZURE, "endpoints": {"primary": "orders-weu", "dr": "ipEndpoints/x"}},
     r"databases\.orders\.traffic\.azure\.endpoints: dr: expected 'NAME' or 'TYPE/NAME'"),
    (None, r"databases\.orders\.traffic: an azure_tm router needs 'azure'"),
])
def test_a_wrong_traffic_azure_section_is_refused_on_load_naming_the_key(
        tmp_path: Path, azure: dict[str, Any] | None, expected: str) -> None:
    from drkit.config import load_policy

    traffic: dict[str, Any] = {"router": "azure_tm"}
    if azure is not None:
        traffic["azure"] = azure
    with pytest.raises(ConfigError, match=expected):
        load_policy(_policy_with_traffic(tmp_path, traffic))
