"""Deployments come from the policy's schedules, with their time zone and parameters."""

from __future__ import annotations

from pathlib import Path

from deployments.serve import build_deployments
from drkit.config import parse_policy


def test_each_database_gets_its_three_schedules() -> None:
    policy = parse_policy({
        "databases": {
            "orders": {"engine": "postgres", "dsn_env": "ORDERS_DSN", "data_dir": "/pg/orders",
                       "timezone": "Europe/Berlin"},
            "crm": {"engine": "postgres", "dsn_env": "CRM_DSN", "data_dir": "/pg/crm",
                    "schedules": {"full": "0 3 * * 0", "diff": None, "log": "*/5 * * * *"}},
        }}, base_dir=Path("/etc/drkit"))
    deps = {d.name: d for d in build_deployments(policy, "/etc/drkit/drkit.yaml")}
    assert set(deps) == {"orders-full", "orders-diff", "orders-log", "orders-verify-chain",
                         "crm-full", "crm-log", "crm-verify-chain", "retention-sweep", "catalog-check"}
    assert deps["retention-sweep"].parameters == {"config": "/etc/drkit/drkit.yaml"}
    assert deps["catalog-check"].parameters == {"config": "/etc/drkit/drkit.yaml", "deep": False, "repair": True}
    crons = {n: (d.schedules[0].schedule.cron, d.schedules[0].schedule.timezone) for n, d in deps.items()}
    assert crons["orders-full"] == ("0 2 * * *", "Europe/Berlin")
    assert crons["orders-diff"] == ("0 */6 * * *", "Europe/Berlin")
    assert crons["orders-log"] == ("*/15 * * * *", "Europe/Berlin")
    assert crons["crm-full"] == ("0 3 * * 0", "UTC")
    assert crons["orders-verify-chain"] == ("30 3 * * *", "Europe/Berlin")
    assert crons["catalog-check"] == ("0 6 * * *", "UTC")
    assert deps["crm-log"].parameters == {"db": "crm", "config": "/etc/drkit/drkit.yaml"}


def test_the_daily_catalog_check_can_be_switched_off() -> None:
    policy = parse_policy({"catalog_check_schedule": None, "databases": {}}, base_dir=Path("/etc/drkit"))
    assert "catalog-check" not in {d.name for d in build_deployments(policy, "/etc/drkit/drkit.yaml")}
