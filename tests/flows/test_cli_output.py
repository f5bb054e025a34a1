"""`drkit` flow commands as a real process: the result alone on stdout, one error line on stderr, and
Prefect's log lines in the run's log in the Prefect API (on stderr only with --verbose)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from drkit.catalog import Catalog
from drkit.sandbox import Sandbox
from tests.support.policies import policy_variant

pytestmark = [pytest.mark.slow, pytest.mark.integration]
DRKIT = str(Path(sys.executable).with_name("drkit"))


def run_drkit(sandbox: Sandbox, scratch: Path, *args: str) -> subprocess.CompletedProcess[str]:
    from prefect.settings import PREFECT_API_URL
    env = {**sandbox.environ(), "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "PREFECT_HOME": str(scratch / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", None)
    return subprocess.run([DRKIT, *args], env=env, capture_output=True, text=True, timeout=600, check=False)


def api_log_messages(flow_name: str) -> list[str]:
    """Log messages of the newest run of ``flow_name``, as the Prefect UI shows them."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)
        assert runs, f"no run of {flow_name}"
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[runs[0].id])))
    return [log.message for log in logs]


def test_backup_prints_only_its_id_and_logs_to_the_api(sandbox: Sandbox, scratch: Path) -> None:
    proc = run_drkit(sandbox, scratch, "--config", str(sandbox.policy_path), "backup", "full", "app")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    backup_id = proc.stdout.strip()
    assert proc.stdout == backup_id + "\n" and backup_id.startswith("app-full-")
    with Catalog.open(f"sqlite:///{sandbox.root / 'catalog.db'}") as cat:
        assert cat.get(backup_id).status in ("completed", "verified")
    messages = api_log_messages("full-backup")
    assert any("Finished in state Completed" in m for m in messages), messages


def test_a_failed_backup_is_one_error_line(sandbox: Sandbox, scratch: Path) -> None:
    # A fresh, empty catalog: a differential has no full to start from, so the flow fails.
    policy = policy_variant(sandbox, scratch, catalog=f"sqlite:///{scratch / 'empty-catalog.db'}")
    proc = run_drkit(sandbox, scratch, "--config", str(policy), "backup", "diff", "app")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no completed full backup of 'app' to base a differential on")
    messages = api_log_messages("differential-backup")
    assert any("Finished in state Failed" in m for m in messages), messages

    # --verbose: Prefect's log lines and the traceback on stderr, the same error line last.
    proc = run_drkit(sandbox, scratch, "--verbose", "--config", str(policy), "backup", "diff", "app")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "Beginning flow run" in proc.stderr and "Traceback" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: no completed full backup of 'app'")


def test_the_quiet_default_does_not_leak_into_the_environment(sandbox: Sandbox) -> None:
    from typer.testing import CliRunner

    from cli import app
    before = os.environ.get("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")
    CliRunner().invoke(app, ["--config", str(sandbox.policy_path), "backups", "app"])
    assert os.environ.get("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL") == before
