"""Build one Prefect deployment per database and backup kind from the policy's cron schedules."""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.schedules import Cron

from drkit.config import Policy, load_policy
from flows.backup import BACKUP_FLOWS
from flows.catalog_check import catalog_check
from flows.dr import replica_lag_check
from flows.retention import retention_sweep
from flows.verify import verify_latest_chain

DEFAULT_LIMIT = 4


def build_deployments(policy: Policy, config_path: str) -> list[Any]:
    """Every scheduled flow the policy asks for, each with its database and policy path as parameters."""
    deployments = []
    for db, cfg in policy.databases.items():
        for kind, flow in BACKUP_FLOWS.items():
            cron = getattr(cfg.schedules, kind)
            if cron is None:
                continue
            deployments.append(flow.to_deployment(
                name=f"{db}-{kind}",
                schedule=Cron(cron, timezone=cfg.timezone),
                parameters={"db": db, "config": config_path},
                tags=["drkit", f"db:{db}", kind],
                description=f"{kind} backup of {db} on '{cron}' ({cfg.timezone})",
            ))
        if cfg.replica is not None:
            deployments.append(replica_lag_check.to_deployment(
                name=f"{db}-replica-lag", schedule=Cron("* * * * *", timezone="UTC"),
                parameters={"db": db, "config": config_path}, tags=["drkit", f"db:{db}", "dr"],
                description=f"DR replica lag of {db}; alerts past replica.max_lag_seconds"))
        if cfg.schedules.verify is not None:
            deployments.append(verify_latest_chain.to_deployment(
                name=f"{db}-verify-chain",
                schedule=Cron(cfg.schedules.verify, timezone=cfg.timezone),
                parameters={"db": db, "config": config_path},
                tags=["drkit", f"db:{db}", "verify"],
                description=f"restore the newest chain of {db} end to end and check it (daily)",
            ))
    if policy.retention_schedule is not None:
        deployments.append(retention_sweep.to_deployment(
            name="retention-sweep", schedule=Cron(policy.retention_schedule, timezone="UTC"),
            parameters={"config": config_path}, tags=["drkit", "retention"],
            description="copy, move and expire backups across tiers, never breaking a restore chain"))
    if policy.catalog_check_schedule is not None:
        deployments.append(catalog_check.to_deployment(
            name="catalog-check", schedule=Cron(policy.catalog_check_schedule, timezone="UTC"),
            parameters={"config": config_path, "deep": False, "repair": True}, tags=["drkit", "catalog"],
            description="every copy the catalog counts on exists with its size; stale runs and debris cleared"))
    return deployments


def serve_all(config_path: str) -> None:
    policy = load_policy(config_path)
    serve(*build_deployments(policy, config_path), limit=DEFAULT_LIMIT)
