"""Deployments come from the policy: its schedules (with their time zone and parameters) and one on-demand
deployment per runbook where the runbook can work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deployments.serve import build_deployments
from drkit.config import parse_policy

CONFIG = "/etc/drkit/drkit.yaml"


def _deployments(databases: dict[str, Any], **top: Any) -> dict[str, Any]:
    policy = parse_policy({"databases": databases, **top}, base_dir=Path("/etc/drkit"))
    return {d.name: d for d in build_deployments(policy, CONFIG)}


def test_each_database_gets_its_three_schedules() -> None:
    deps = _deployments({
        "orders": {"engine": "postgres", "dsn_env": "ORDERS_DSN", "data_dir": "/pg/orders",
                   "timezone": "Europe/Berlin"},
        "crm": {"engine": "postgres", "dsn_env": "CRM_DSN", "data_dir": "/pg/crm",
                "schedules": {"full": "0 3 * * 0", "diff": None, "log": "*/5 * * * *"}},
    })
    scheduled = {n: d for n, d in deps.items() if d.schedules}
    assert set(scheduled) == {"orders-full", "orders-diff", "orders-log", "orders-verify-chain", "orders-dr-drill",
                              "crm-full", "crm-log", "crm-verify-chain", "crm-dr-drill", "retention-sweep",
                              "catalog-check"}
    assert deps["retention-sweep"].parameters == {"config": CONFIG}
    assert deps["catalog-check"].parameters == {"config": CONFIG, "deep": False, "repair": True}
    crons = {n: (d.schedules[0].schedule.cron, d.schedules[0].schedule.timezone) for n, d in scheduled.items()}
    assert crons["orders-full"] == ("0 2 * * *", "Europe/Berlin")
    assert crons["orders-diff"] == ("0 */6 * * *", "Europe/Berlin")
    assert crons["orders-log"] == ("*/15 * * * *", "Europe/Berlin")
    assert crons["crm-full"] == ("0 3 * * 0", "UTC")
    assert crons["orders-verify-chain"] == ("30 3 * * *", "Europe/Berlin")
    assert crons["catalog-check"] == ("0 6 * * *", "UTC")
    assert crons["orders-dr-drill"] == ("0 3 * * 0", "Europe/Berlin")
    assert deps["crm-log"].parameters == {"db": "crm", "config": CONFIG}


def test_the_daily_catalog_check_can_be_switched_off() -> None:
    deps = _deployments({}, catalog_check_schedule=None)
    assert "catalog-check" not in deps
    assert deps["catalog-check-now"].schedules == []  # checking on demand stays


def test_every_runbook_is_deployed_on_demand_where_it_can_work() -> None:
    deps = _deployments({
        "orders": {"engine": "postgres", "dsn_env": "ORDERS_DSN", "data_dir": "/pg/orders",
                   "replica": {"dsn_env": "ORDERS_DR_DSN", "data_dir": "/pg/dr"}},
        "crm": {"engine": "postgres", "dsn_env": "CRM_DSN", "data_dir": "/pg/crm"},
        "ledger": {"engine": "sqlserver", "dsn_env": "LEDGER_DSN"},
    })
    on_demand = {n: d for n, d in deps.items() if not d.schedules}
    assert {n: d.flow_name for n, d in on_demand.items()} == {
        "orders-restore": "restore-point-in-time", "orders-verify-backup": "verify-backup",
        "orders-recover": "recover-from-corruption", "orders-failover": "dr-failover",
        "orders-failback": "dr-failback",
        "crm-restore": "restore-point-in-time", "crm-verify-backup": "verify-backup",
        "crm-recover": "recover-from-corruption",
        # SQL Server restores no standby of its own to switch clients to: no corruption recovery
        "ledger-restore": "restore-point-in-time", "ledger-verify-backup": "verify-backup",
        "catalog-check-now": "catalog-check"}
    for name, d in on_demand.items():
        db = name.split("-")[0]
        if name == "catalog-check-now":
            assert d.parameters == {"config": CONFIG, "deep": False, "repair": False}  # report only
            assert d.tags == ["drkit", "catalog", "runbook"]
        else:
            assert d.parameters == {"db": db, "config": CONFIG}, name
            assert d.tags == ["drkit", f"db:{db}", "runbook"], name


def test_the_run_forms_describe_every_parameter_and_need_only_what_an_operator_decides() -> None:
    deps = _deployments({"orders": {"engine": "postgres", "dsn_env": "ORDERS_DSN", "data_dir": "/pg/orders",
                                    "replica": {"dsn_env": "ORDERS_DR_DSN", "data_dir": "/pg/dr"}}})
    must_fill = {}
    for name, d in deps.items():
        if d.schedules:
            continue
        schema = d._parameter_openapi_schema
        for param, prop in schema.properties.items():
            assert prop.get("description"), f"{name}: {param} has no description in the Run form"
        assert schema.properties["config"]["description"].startswith("The policy file. Filled in by the deployment")
        must_fill[name] = sorted(set(schema.required or []) - set(d.parameters))
    assert must_fill == {"orders-restore": ["into"], "orders-verify-backup": [], "orders-recover": ["before"],
                         "orders-failover": [], "orders-failback": [], "catalog-check-now": []}
    # the fields README's "From the Prefect UI" table lists, besides the db and config filled in
    fields = {n: [p for p in d._parameter_openapi_schema.properties if p not in ("db", "config")]
              for n, d in deps.items() if not d.schedules}
    assert fields == {
        "orders-restore": ["into", "target", "keep_running", "port", "run_checks", "target_lsn"],
        "orders-verify-backup": ["backup_id"],
        "orders-recover": ["before", "into", "port", "approval_timeout_seconds"],
        "orders-failover": ["probe_interval_seconds", "approval_timeout_seconds"],
        "orders-failback": ["approval_timeout_seconds", "hold_seconds"],
        "catalog-check-now": ["deep", "repair"]}
    # the times are date-time fields: the form shows a date and time picker
    target = deps["orders-restore"]._parameter_openapi_schema.properties["target"]
    assert {"type": "string", "format": "date-time"} in target["anyOf"]
    before = deps["orders-recover"]._parameter_openapi_schema.properties["before"]
    assert (before["type"], before["format"]) == ("string", "date-time")


def test_without_a_control_pool_the_runbooks_run_on_the_first_sites_pool() -> None:
    from deployments.serve import deployment_specs

    policy = parse_policy({"sites": {"east": {"work_pool": "pool-e"}, "west": {"work_pool": "pool-w"}},
                           "databases": {
                               "crm": {"engine": "postgres", "dsn_env": "CRM_DSN", "data_dir": "/pg/crm",
                                       "site": "west", "replica": {"dsn_env": "CRM_DR_DSN", "site": "east"}},
                               "ledger": {"engine": "sqlserver", "dsn_env": "LEDGER_DSN", "site": "east"}}},
                          base_dir=Path("/etc/drkit"))
    pools = {s.name: (s.work_pool, s.work_queue) for s in deployment_specs(policy, CONFIG)}
    assert pools["crm-full"] == pools["crm-restore"] == pools["crm-verify-chain"] == ("pool-w", "default")
    assert pools["crm-log"] == ("pool-w", "log")
    assert pools["ledger-log"] == ("pool-e", "log")
    assert pools["crm-failover"] == pools["crm-failback"] == pools["crm-recover"] == ("pool-e", "default")
    assert pools["retention-sweep"] == pools["catalog-check-now"] == ("pool-e", "default")
    # serve runs them all in one process: the same deployments as without sites
    assert set(pools) == {d.name for d in build_deployments(policy, CONFIG)}
