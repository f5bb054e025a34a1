"""The deployments a policy asks for: the scheduled ones, and one on-demand deployment per runbook.

One list of :class:`Spec` is the single source: ``serve_all`` (``make serve``, ``drkit serve``) serves it and
``deployments.prefect_yaml`` writes the same list as ``prefect.yaml`` for a process work pool.

Runbooks are deployed once per database (``orders-restore``, ``orders-failover``, ...), with ``db`` and
``config`` as the deployment's parameters, rather than once with the database as an enum in the Run form:
``prefect deploy`` recomputes every deployment's parameter schema from the flow's signature, so an enum made
from the policy could be served but never declared in ``prefect.yaml`` (the two would drift); and per
database a runbook exists only where it can work: failover and failback where the policy names a
``replica``, corruption recovery where the engine restores a standby of its own
(``EngineFeatures.standby_restore``). Picking the database is picking the deployment (each carries the
tag ``db:NAME``); its Run form starts with that database and the policy filled in.

Each deployment names the work pool a ``prefect.yaml`` worker takes it from (``serve`` runs everything in one
process and ignores it): what touches one database's host (its backups, verify-chain, drill, restore and
verify-backup) goes to the pool of the site its primary runs on (``sites:``, ``databases.NAME.site``); the
catalog-wide flows, the replica-lag check and the DR runbooks (failover, failback, corruption recovery) go to
the control pool (``control_pool``, default the first site's). Log backups take the ``log`` work queue, which
the README has created with a better priority than ``default``, so fulls never starve them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deployments.alert_events import AlertTrigger, backup_triggers
from drkit.config import DEFAULT_WORK_POOL, Policy, load_policy
from drkit.engines import open_engine
from drkit.runtime import Runtime

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

DEFAULT_LIMIT = 4
LOG_QUEUE = "log"  # log backups: created with priority 1, ahead of the pool's `default` queue
DEFAULT_QUEUE = "default"

# The flows, named rather than imported: writing prefect.yaml (``drkit deployments``) needs no Prefect.
BACKUP_FLOWS = {"full": "flows.backup:full_backup", "diff": "flows.backup:differential_backup",
                "log": "flows.backup:log_backup_flow"}
VERIFY_CHAIN = "flows.verify:verify_latest_chain"
VERIFY_BACKUP = "flows.verify:verify_backup_flow"
REPLICA_LAG = "flows.dr:replica_lag_check"
FAILOVER = "flows.dr:dr_failover"
FAILBACK = "flows.dr:dr_failback"
RETENTION = "flows.retention:retention_sweep"
CATALOG_CHECK = "flows.catalog_check:catalog_check"
RESTORE = "flows.restore:restore_point_in_time"
RECOVER = "flows.corruption:recover_from_corruption"
DRILL = "flows.drill:dr_drill"


@dataclass(frozen=True)
class Schedule:
    cron: str
    timezone: str


@dataclass(frozen=True)
class Spec:
    """One deployment: which flow (``module:function``), its name, fixed parameters, schedule (None: on demand
    only), tags and the alerts that start it (``deployments.alert_events``)."""

    target: str
    name: str
    parameters: dict[str, Any]
    description: str
    tags: list[str] = field(default_factory=list)
    schedule: Schedule | None = None
    triggers: tuple[AlertTrigger, ...] = ()
    work_pool: str = DEFAULT_WORK_POOL  # the pool its worker polls: its database's site's, or the control pool
    work_queue: str = DEFAULT_QUEUE

    @property
    def entrypoint(self) -> str:
        """``path/to/module.py:function``, relative to the project's root (the worker's working directory)."""
        module, fn = self.target.split(":")
        return f"{module.replace('.', '/')}.py:{fn}"

    def flow(self) -> Flow[..., Any]:
        module, fn = self.target.split(":")
        flow: Flow[..., Any] = getattr(importlib.import_module(module), fn)
        return flow

    def to_deployment(self) -> RunnerDeployment:
        from prefect.deployments.runner import RunnerDeployment
        from prefect.schedules import Cron

        deployment = self.flow().to_deployment(
            name=self.name, parameters=self.parameters, tags=self.tags, description=self.description,
            schedule=Cron(self.schedule.cron, timezone=self.schedule.timezone) if self.schedule else None,
            triggers=[t.to_prefect() for t in self.triggers])
        assert isinstance(deployment, RunnerDeployment)  # called from sync code: never a coroutine
        return deployment


def _scheduled(policy: Policy, config: str) -> list[Spec]:
    specs = []
    control = policy.control_work_pool()
    for db, cfg in policy.databases.items():
        params = {"db": db, "config": config}
        site = policy.work_pool_of(db)
        for kind, flow in BACKUP_FLOWS.items():
            cron = getattr(cfg.schedules, kind)
            if cron is not None:
                specs.append(Spec(flow, f"{db}-{kind}", params, f"{kind} backup of {db} on '{cron}' ({cfg.timezone})",
                                  ["drkit", f"db:{db}", kind], Schedule(cron, cfg.timezone),
                                  backup_triggers(db, kind), site,
                                  LOG_QUEUE if kind == "log" else DEFAULT_QUEUE))
        if cfg.replica is not None:
            specs.append(Spec(REPLICA_LAG, f"{db}-replica-lag", params,
                              f"DR replica lag of {db}; alerts past replica.max_lag_seconds",
                              ["drkit", f"db:{db}", "dr"], Schedule("* * * * *", "UTC"), work_pool=control))
        if cfg.schedules.verify is not None:
            specs.append(Spec(VERIFY_CHAIN, f"{db}-verify-chain", params,
                              f"restore the newest chain of {db} end to end and check it (daily)",
                              ["drkit", f"db:{db}", "verify"], Schedule(cfg.schedules.verify, cfg.timezone),
                              work_pool=site))
        if cfg.schedules.drill is not None:
            specs.append(Spec(DRILL, f"{db}-dr-drill", params,
                              f"DR drill of {db}: restore the newest chain into scratch, measure RTO and RPO "
                              f"against rto_target/rpo_target, notify a miss (on '{cfg.schedules.drill}', "
                              f"{cfg.timezone})",
                              ["drkit", f"db:{db}", "drill"], Schedule(cfg.schedules.drill, cfg.timezone),
                              work_pool=site))
    if policy.retention_schedule is not None:
        specs.append(Spec(RETENTION, "retention-sweep", {"config": config},
                          "copy, move and expire backups across tiers, never breaking a restore chain",
                          ["drkit", "retention"], Schedule(policy.retention_schedule, "UTC"), work_pool=control))
    if policy.catalog_check_schedule is not None:
        specs.append(Spec(CATALOG_CHECK, "catalog-check", {"config": config, "deep": False, "repair": True},
                          "every copy the catalog counts on exists with its size; stale runs and debris cleared",
                          ["drkit", "catalog"], Schedule(policy.catalog_check_schedule, "UTC"), work_pool=control))
    return specs


def _runbooks(policy: Policy, config: str) -> list[Spec]:
    rt = Runtime(policy)  # lazy: nothing is opened to read an engine's declared features
    specs = []
    control = policy.control_work_pool()
    for db, cfg in policy.databases.items():
        params = {"db": db, "config": config}
        tags = ["drkit", f"db:{db}", "runbook"]
        site = policy.work_pool_of(db)
        specs.append(Spec(RESTORE, f"{db}-restore", params,
                          f"Point-in-time restore of {db} into a new place (Run → Custom run: the target time, "
                          "`into`, and `keep_running` to keep it as a new standby); validated, with a report "
                          "artifact.", tags, work_pool=site))
        specs.append(Spec(VERIFY_BACKUP, f"{db}-verify-backup", params,
                          f"Verify one backup of {db} (default: the newest full) by restoring it into a scratch "
                          "copy and checking it; a failure marks it corrupt.", tags, work_pool=site))
        if open_engine(rt, db).features.standby_restore:
            specs.append(Spec(RECOVER, f"{db}-recover", params,
                              f"Corruption recovery of {db}: restore a standby to `before` (the last good moment), "
                              "validate it, pause for approval, then switch to it.", tags, work_pool=control))
        if cfg.replica is not None:
            specs.append(Spec(FAILOVER, f"{db}-failover", params,
                              f"Unplanned failover of {db} to its DR replica: probes, then pauses for a listed "
                              "approver to confirm the region failure.", tags, work_pool=control))
            specs.append(Spec(FAILBACK, f"{db}-failback", params,
                              f"Planned failback of {db} to its primary region, or stay on DR: pauses for the "
                              "decision.", tags, work_pool=control))
    specs.append(Spec(CATALOG_CHECK, "catalog-check-now", {"config": config, "deep": False, "repair": False},
                      "Check the catalog against every store now (Custom run: `deep` hashes every copy, `repair` "
                      "fixes what it can); fails while findings remain.", ["drkit", "catalog", "runbook"],
                      work_pool=control))
    return specs


def deployment_specs(policy: Policy, config: str) -> list[Spec]:
    """Every deployment for ``policy``: scheduled flows first, then the on-demand runbooks."""
    return _scheduled(policy, config) + _runbooks(policy, config)


def build_deployments(policy: Policy, config_path: str) -> list[RunnerDeployment]:
    """What ``serve`` serves: every deployment, each with its database and policy path as parameters."""
    return [spec.to_deployment() for spec in deployment_specs(policy, config_path)]


def serve_all(config_path: str) -> None:
    """Serve every deployment, with the policy's HTTP listener (metrics, Alertmanager receiver) beside them."""
    from prefect import serve

    from deployments.metrics_sources import start_listener

    policy = load_policy(config_path)
    deployments = build_deployments(policy, config_path)
    listener = start_listener(policy)
    try:
        serve(*deployments, limit=DEFAULT_LIMIT)
    finally:
        if listener is not None:
            listener.stop()
