"""The policy's sites: one work pool per site, each database's primary and replica on named sites; one
site 'local' on pool 'drkit' when the policy names none (everything on one host). Errors name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drkit.config import Policy, parse_policy
from drkit.errors import ConfigError

TWO = {"east": {"work_pool": "drkit-east"}, "west": {"work_pool": "drkit-west"}}


def _db(**extra: Any) -> dict[str, Any]:
    return {"engine": "postgres", "dsn_env": "ORDERS_DSN", "data_dir": "/pg/orders", **extra}


def _policy(**top: Any) -> Policy:
    return parse_policy(top, base_dir=Path("/etc/drkit"))


def _error(**top: Any) -> str:
    with pytest.raises(ConfigError) as exc:
        _policy(**top)
    return str(exc.value)


def test_without_sites_everything_is_on_the_local_site_and_the_drkit_pool() -> None:
    policy = _policy(databases={"orders": _db(replica={"dsn_env": "DR_DSN", "data_dir": "/pg/dr"})})
    assert (policy.site_of("orders"), policy.replica_site_of("orders")) == ("local", "local")
    assert (policy.work_pool_of("orders"), policy.control_work_pool()) == ("drkit", "drkit")


def test_each_database_runs_on_its_sites_pool_and_runbooks_on_the_control_pool() -> None:
    policy = _policy(sites=TWO, databases={
        "orders": _db(site="east", replica={"dsn_env": "DR_DSN", "site": "west"}),
        "crm": _db(site="west")})
    assert [policy.work_pool_of(db) for db in ("orders", "crm")] == ["drkit-east", "drkit-west"]
    assert (policy.replica_site_of("orders"), policy.replica_site_of("crm")) == ("west", None)
    assert policy.control_work_pool() == "drkit-east"  # the first site's, unless named
    assert _policy(sites=TWO, control_pool="drkit-control").control_work_pool() == "drkit-control"


@pytest.mark.parametrize(("top", "message"), [
    ({"sites": TWO, "databases": {"orders": _db(site="north")}},
     "databases.orders.site: unknown site 'north'; the policy's sites are east, west"),
    ({"databases": {"orders": _db(replica={"dsn_env": "DR_DSN", "site": "west"})}},
     "databases.orders.replica.site: unknown site 'west'; the policy's sites are local"),
    ({"sites": TWO, "databases": {"orders": _db()}},
     "databases.orders.site: required when the policy names several sites (east, west)"),
    ({"sites": TWO, "databases": {"orders": _db(site="east", replica={"dsn_env": "DR_DSN"})}},
     "databases.orders.replica.site: required when the policy names several sites (east, west)"),
    ({"sites": TWO, "databases": {"orders": _db(site="east", replica={"dsn_env": "DR_DSN", "site": "east"})}},
     "databases.orders.replica.site: 'east' is the primary's site too; a DR replica must be on another site"),
    ({"sites": {"east": {"work_pool": "drkit"}, "west": {"work_pool": "drkit"}}},
     "sites.west.work_pool: 'drkit' is already the work pool of site 'east'; each site has a pool of its own"),
    ({"sites": {}}, "sites: name at least one site, or leave 'sites' out for the single site 'local'"),
    ({"sites": {"east": {}}}, "sites.east.work_pool: required key is missing"),
    ({"sites": {"east": {"work_pool": "drkit", "pool": "x"}}}, "sites.east.pool: unknown key"),
    ({"sites": {"east": {"work_pool": "prefect-east"}}}, "sites.east.work_pool: work pool name 'prefect-east'"),
    ({"control_pool": "a b"}, "control_pool: work pool name 'a b': use letters, digits"),
    ({"sites": {"East": {"work_pool": "drkit"}}}, "sites: name 'East' must start with a lowercase letter"),
])
def test_bad_sites_are_refused_naming_the_key(top: dict[str, Any], message: str) -> None:
    assert message in _error(**top)
    assert "(top level)" not in _error(**top)


def test_one_site_keeps_primary_and_replica_on_the_same_host() -> None:
    policy = _policy(sites={"here": {"work_pool": "p"}},
                     databases={"orders": _db(site="here", replica={"dsn_env": "DR_DSN", "site": "here"})})
    assert policy.replica_site_of("orders") == "here"
