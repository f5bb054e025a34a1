"""Two sites, one work pool each: the generated prefect.yaml puts each database's backups on its own site's
pool, a process worker per pool runs them, and both land in one shared catalog.

Everything as the README's "Sites and work pools" describes it: a Prefect server on PostgreSQL
(``PREFECT_SERVER_DATABASE_CONNECTION_URL``), the drkit catalog in another database of that same cluster,
the pools and their ``log`` queue created with a better priority, ``prefect deploy --all``, and one
``prefect worker start --pool ...`` per site. Two small PostgreSQL clusters stand for the sites' databases.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
import yaml

from drkit.catalog import Catalog
from drkit.config import default_bin_dir
from drkit.engines.postgres.pgctl import LocalCluster, effective_os_user, free_port
from drkit.sandbox import Sandbox, create_sandbox
from tests.support.prefect_process import PREFECT, PrefectProcess
from tests.support.procs import stop_group

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
DRKIT = Path(sys.executable).with_name("drkit")
SITES = {"east": "orders", "west": "crm"}  # site -> the database whose primary runs there


@pytest.fixture
def shared_pg(scratch: Path) -> Iterator[LocalCluster]:
    """The shared PostgreSQL: the Prefect server's database and the drkit catalog."""
    cluster = LocalCluster(scratch / "shared" / "data", free_port(), default_bin_dir(), effective_os_user(None),
                           log_file=scratch / "shared" / "pg.log")
    (scratch / "shared").mkdir()
    (scratch / "shared").chmod(0o755)
    cluster.initdb(checksums=False, extra_conf="fsync = off\n")
    cluster.start()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE prefect")
            conn.execute("CREATE DATABASE drkit_catalog")
        yield cluster
    finally:
        cluster.stop("immediate")


@pytest.fixture
def site_dbs(scratch: Path) -> Iterator[dict[str, Sandbox]]:
    """One small cluster per site, sharing a backup key."""
    made: dict[str, Sandbox] = {}
    try:
        for site, db in SITES.items():
            made[site] = create_sandbox(scratch / site, db=db, fsync=False, shared_buffers="16MB",
                                        key_b64=next(iter(made.values())).key_b64 if made else None)
        yield made
    finally:
        for sb in made.values():
            sb.stop()


def _policy(site_dbs: dict[str, Sandbox], catalog_url: str, directory: Path) -> Path:
    databases: dict[str, Any] = {}
    for site, sb in site_dbs.items():
        cfg = yaml.safe_load(sb.policy_path.read_text())["databases"][sb.db]
        # lean: only the schedules this test looks at (fewer deployments to deploy), no verification restore
        databases[sb.db] = {**cfg, "site": site, "verify": {"after": []},
                            "schedules": {"diff": None, "verify": None, "drill": None}}
    policy = {
        "catalog": catalog_url,
        "encryption": {"key_env": "DRKIT_BACKUP_KEY"},
        "tiers": {"local": {"store": "filesystem", "path": str(directory / "backups"), "keep_days": 7}},
        "scratch_dir": str(directory / "drkit-scratch"),
        "retention_schedule": None, "catalog_check_schedule": None,
        "sites": {site: {"work_pool": f"drkit-{site}"} for site in SITES},
        "databases": databases,
    }
    path = directory / "drkit.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def _run(cmd: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_each_sites_worker_backs_up_its_own_database_into_the_shared_catalog(
        scratch: Path, shared_pg: LocalCluster, site_dbs: dict[str, Sandbox]) -> None:
    from prefect import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    catalog_url = f"postgresql+psycopg://postgres@127.0.0.1:{shared_pg.port}/drkit_catalog"
    policy = _policy(site_dbs, catalog_url, scratch)
    catalog = Catalog.open(catalog_url)  # its schema made once, before two workers write to it
    server = PrefectProcess(server_env={
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{shared_pg.port}/prefect"})
    workers: list[subprocess.Popen[bytes]] = []
    try:
        server.start()
        env = server.environ(DRKIT_HOME=str(ROOT), DRKIT_BACKUP_KEY=site_dbs["east"].key_b64,
                             PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1")
        yaml_file = scratch / "prefect.yaml"
        _run([str(DRKIT), "--config", str(policy), "deployments", "--output", str(yaml_file)], env)
        for site in SITES:
            _run([str(PREFECT), "work-pool", "create", f"drkit-{site}", "--type", "process"], env)
            _run([str(PREFECT), "work-queue", "create", "log", "--pool", f"drkit-{site}", "--priority", "1"], env)
        _run([str(PREFECT), "--no-prompt", "deploy", "--all", "--prefect-file", str(yaml_file)], env)

        def worker_logs() -> str:
            return "\n".join((scratch / f"worker-{s}.log").read_text(errors="replace")[-2000:] for s in SITES)

        with temporary_settings(updates={PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
            # the log backups' queue is ahead of the default one in each site's pool: of two due runs, a
            # worker is handed the log backup first, though the full was due earlier
            for site in SITES:
                queues = {q.name: q.priority for q in client.read_work_queues(work_pool_name=f"drkit-{site}")}
                assert queues["log"] < queues["default"], queues
            deployment = client.read_deployment_by_name("log-backup/orders-log")
            assert (deployment.work_pool_name, deployment.work_queue_name) == ("drkit-east", "log")
            due = [client.create_flow_run_from_deployment(
                client.read_deployment_by_name(name).id) for name in ("full-backup/orders-full",
                                                                       "log-backup/orders-log")]
            handed = [r.flow_run.id for r in client.get_scheduled_flow_runs_for_work_pool(
                "drkit-east", scheduled_before=datetime.now(UTC) + timedelta(seconds=5))]
            assert [i for i in handed if i in {r.id for r in due}] == [due[1].id, due[0].id]
            for r in due:
                client.delete_flow_run(r.id)  # not for the workers

            for site in SITES:
                log = (scratch / f"worker-{site}.log").open("wb")
                workers.append(subprocess.Popen(
                    [str(PREFECT), "worker", "start", "--pool", f"drkit-{site}", "--name", f"{site}-worker"],
                    cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True))
                log.close()

            started: dict[str, UUID] = {}
            for site, db in SITES.items():  # both at once, each through the API
                run = run_deployment(f"full-backup/{db}-full", timeout=0)
                assert isinstance(run, FlowRun)  # called from sync code: never a coroutine
                started[site] = run.id
            done: dict[str, FlowRun] = {}
            deadline = time.monotonic() + 300
            while len(done) < len(started):
                assert time.monotonic() < deadline, worker_logs()
                for site, run_id in started.items():
                    current = client.read_flow_run(run_id)
                    if current.state is not None and current.state.is_final():
                        done[site] = current
                time.sleep(0.5)

        for site, run in done.items():
            assert run.state is not None and run.state.is_completed(), (run.state, worker_logs())
            assert run.work_pool_name == f"drkit-{site}"
            assert run.labels["prefect.worker.name"] == f"{site}-worker"  # picked up by its own site's worker
        fulls = {db: [(b.kind, b.status) for b in catalog.list_backups(db, kinds=["full"])] for db in SITES.values()}
        assert fulls == {"orders": [("full", "completed")], "crm": [("full", "completed")]}
        with psycopg.connect(shared_pg.dsn("prefect")) as conn:  # the server keeps its state in PostgreSQL
            stored = conn.execute("SELECT id FROM flow_run WHERE id = ANY(%s)", [[r.id for r in done.values()]])
            assert len(stored.fetchall()) == len(SITES)
    finally:
        for worker in workers:
            stop_group(worker)
        server.close()
        catalog.close()
