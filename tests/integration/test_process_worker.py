"""The generated prefect.yaml works as documented: `prefect deploy --all` to a process work pool, a
`prefect worker start --pool drkit`, and runs triggered through the API complete with their effect in the
catalog (a scheduled backup deployment, then an on-demand runbook)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from drkit.catalog import Catalog
from drkit.config import load_policy
from drkit.sandbox import Sandbox
from tests.support.policies import policy_variant
from tests.support.prefect_process import PREFECT, PrefectProcess
from tests.support.procs import stop_group

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
DRKIT = Path(sys.executable).with_name("drkit")


@pytest.fixture
def server() -> Iterator[PrefectProcess]:
    srv = PrefectProcess()
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def _run(cmd: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_a_process_worker_runs_the_generated_deployments(sandbox: Sandbox, scratch: Path,
                                                         server: PrefectProcess) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # no verification right after the full: the on-demand verify-backup runbook is what verifies it here
    policy = policy_variant(sandbox, scratch, {"verify": {"after": []}})
    env = server.environ(DRKIT_HOME=str(ROOT), DRKIT_BACKUP_KEY=sandbox.key_b64,
                         PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1")
    yaml_file = scratch / "prefect.yaml"
    _run([str(DRKIT), "--config", str(policy), "deployments", "--output", str(yaml_file)], env)
    _run([str(PREFECT), "work-pool", "create", "drkit", "--type", "process"], env)
    _run([str(PREFECT), "--no-prompt", "deploy", "--all", "--prefect-file", str(yaml_file)], env)

    log = (scratch / "worker.log").open("wb")
    worker = subprocess.Popen([str(PREFECT), "worker", "start", "--pool", "drkit"], cwd=scratch, env=env,
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    catalog = Catalog.open(load_policy(policy).catalog_url())
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            backup = run_deployment("full-backup/app-full", timeout=300, poll_interval=1)
            assert backup.state is not None and backup.state.is_completed(), (
                backup.state, (scratch / "worker.log").read_text(errors="replace")[-3000:])
            fulls = catalog.list_backups("app", kinds=["full"])
            assert [b.status for b in fulls] == ["completed"]

            verify = run_deployment("verify-backup/app-verify-backup", parameters={"backup_id": fulls[0].id},
                                    timeout=300, poll_interval=1)
            assert verify.state is not None and verify.state.is_completed(), (
                verify.state, (scratch / "worker.log").read_text(errors="replace")[-3000:])
            assert catalog.get(fulls[0].id).status == "verified"
            assert verify.parameters["config"] == str(policy)  # filled in by the deployment
    finally:
        catalog.close()
        stop_group(worker)
        log.close()
