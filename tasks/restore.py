"""Restore tasks: plan (pure, fast) and execute (long, with a progress artifact)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from drkit import dr
from drkit.engines import open_engine
from drkit.plans import RestorePlan, RestoreResult
from drkit.verify import CheckResult
from tasks.common import artifact_key, runtime


@task(name="plan-restore", cache_policy=NO_CACHE)
def plan_restore(db: str, target: datetime | None, config: str | None, target_lsn: str | None = None) -> RestorePlan:
    rt = runtime(config)
    try:
        return open_engine(rt, db).plan_restore(target, position=target_lsn)
    finally:
        rt.close()


@task(name="execute-restore", cache_policy=NO_CACHE)
def execute_restore(db: str, plan: RestorePlan, into: str, port: int | None, keep_running: bool,
                    config: str | None) -> RestoreResult:
    rt = runtime(config)
    pid = create_progress_artifact(progress=0.0, key=artifact_key(db, "restore-progress"),
                                   description=f"restore of {db} into {into}")
    assert isinstance(pid, UUID)

    def on_step(what: str, frac: float) -> None:
        update_progress_artifact(artifact_id=pid, progress=round(frac * 100, 1))

    try:
        return open_engine(rt, db).restore(plan, into, port=port, keep_running=keep_running, on_step=on_step)
    finally:
        rt.close()


@task(name="publish-restore-report", cache_policy=NO_CACHE)
def publish_restore_report(result: RestoreResult, checks: list[CheckResult] | None = None,
                           running: bool | None = None) -> None:
    """The restore's report artifact. ``running``: whether the restored copy is left running when the run ends
    (default: whether it runs now, e.g. a standby that waits for an approval)."""
    plan = result.plan
    running = result.running if running is None else running
    lines = [f"# Restore of {plan.database}", "",
             f"* target: **{plan.target_time.isoformat() if plan.target_time else 'latest'}**"
             f" (recovery: {plan.recovery}, reaches {plan.reaches.isoformat()})",
             f"* into: `{result.location}` "
             + (f"(running; to connect: `{result.connect}`)" if running else "(stopped after the checks)"),
             f"* {result.bytes_read} bytes restored in {result.seconds:.1f} s", "",
             "| piece | backup | tier | bytes |", "|---|---|---|---|"]
    lines += [f"| {p.role} | {p.backup.id} | {result.read_from.get(p.backup.id, p.tier)} | {p.stored_bytes} |"
              for p in plan.pieces]
    lines += ["", "Why:"] + [f"* {r}" for r in plan.reasons]
    lines += (["", "Warnings (copies found missing or corrupt, read from the next tier instead):"]
              + [f"* {w}" for w in result.warnings] if result.warnings else [])
    lines += ["", "| step | at (s) |", "|---|---|"] + [f"| {s} | {t} |" for s, t in result.steps]
    if checks:
        lines += ["", "| validation | result | detail |", "|---|---|---|"]
        lines += [f"| {c.name} | {'ok' if c.ok else 'FAILED'} | {c.detail[:200].replace('|', '/')} |" for c in checks]
    create_markdown_artifact(markdown="\n".join(lines), key=artifact_key(plan.database, "restore-report"),
                             description=f"restore of {plan.database}")


@task(name="release-restored", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def release_restored(db: str, result: RestoreResult, config: str | None) -> None:
    """Stop what the restore left running (a restored PostgreSQL cluster); nothing for a server-side restore."""
    rt = runtime(config)
    try:
        open_engine(rt, db).release_restored(result)
    finally:
        rt.close()


@task(name="client-access", cache_policy=NO_CACHE)
def client_access(db: str, result: RestoreResult, config: str | None) -> str:
    """How clients will log in to the restored standby once it is opened to them (for the approval form)."""
    rt = runtime(config)
    try:
        return open_engine(rt, db).client_access(result)
    finally:
        rt.close()


@task(name="open-to-clients", cache_policy=NO_CACHE)
def open_to_clients(db: str, data_dir: str, port: int, config: str | None) -> dict[str, object]:
    """Restart a restored standby as the database's primary: archiving into drkit (as `drkit setup` sets it),
    on its port for good, with the backup's own listen settings, until 127.0.0.1:port accepts connections."""
    rt = runtime(config)
    try:
        return open_engine(rt, db).open_to_clients(data_dir, port).as_dict()
    finally:
        rt.close()


@task(name="switch-endpoint", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 5, 15])
def switch_endpoint(db: str, port: int, data_dir: str, actor: str, config: str | None) -> dict[str, Any]:
    """Record a restored cluster on this host (127.0.0.1:``port``, ``data_dir``) as the primary of ``db`` in the
    catalog: one ``endpoint.set``; the record as it stands."""
    rt = runtime(config)
    try:
        return dr.record_recovered(rt, db, host_port=f"127.0.0.1:{port}", data_dir=data_dir, actor=actor).as_dict()
    finally:
        rt.close()
