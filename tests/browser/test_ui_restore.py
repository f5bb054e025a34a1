"""A point-in-time restore started by a person from the Prefect UI's deployment Run form.

`drkit serve` serves the sandbox policy's deployments against a real `prefect server start` (with its UI);
Debian's chromium (playwright-core from .tools/playwright, driven by restore.mjs) opens the `app-restore`
deployment, fills its Custom run form (into, the target time from the picker, keep_running), starts it,
watches it complete and opens its restore report. The restored copy holds what was committed before the
target and nothing after it.

Screenshots: set DRKIT_SCREENSHOTS to a directory to keep the README's ones there (`make screenshots`
writes docs/img/ this way); otherwise they are kept only when the test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drkit.config import load_policy
from drkit.engines import open_engine
from drkit.engines.postgres.pgctl import LocalCluster
from drkit.runtime import Runtime
from drkit.sandbox import Sandbox
from tests.support.browser import missing_tools, node_environ
from tests.support.pgdata import connect
from tests.support.policies import policy_variant
from tests.support.prefect_process import PrefectProcess
from tests.support.procs import stop_group

ROOT = Path(__file__).resolve().parents[2]
RESTORE_JS = Path(__file__).with_name("restore.mjs")
DRKIT = Path(sys.executable).with_name("drkit")
README_SHOTS = {"run-form.png": "ui-restore-run-form.png", "run-completed.png": "ui-restore-completed.png",
                "report.png": "ui-restore-report.png"}

pytestmark = [pytest.mark.slow, pytest.mark.integration,
              pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or "")]


@pytest.fixture
def ui_server() -> Iterator[PrefectProcess]:
    """A Prefect server with its UI, not started yet: the test starts it once its rows before the target are in."""
    server = PrefectProcess(ui=True)
    try:
        yield server
    finally:
        server.close()


def _now(dsn: str) -> datetime:
    with connect(dsn) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0].astimezone(UTC)


def _insert(dsn: str, *ids: int) -> None:
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS marker (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        for i in ids:
            conn.execute("INSERT INTO marker(id) VALUES (%s)", [i])


def _wait_for_deployment(name: str, api_url: str, timeout: float = 120) -> str:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        while True:
            try:
                return str(client.read_deployment_by_name(name).id)
            except ObjectNotFound:
                if time.monotonic() > deadline:
                    raise AssertionError(f"`drkit serve` never registered {name}") from None
            time.sleep(0.5)


def test_point_in_time_restore_from_the_deployment_run_form(sandbox: Sandbox, scratch: Path,
                                                            ui_server: PrefectProcess) -> None:
    # runbooks only: no scheduled backup runs while the test works
    policy = policy_variant(sandbox, scratch, {"schedules": {"full": None, "diff": None, "log": None,
                                                             "verify": None}},
                            retention_schedule=None, catalog_check_schedule=None)
    env = ui_server.environ(DRKIT_BACKUP_KEY=sandbox.key_b64, PREFECT_RUNNER_POLL_FREQUENCY="1")
    rt = Runtime(load_policy(policy), environ=sandbox.environ())
    try:
        open_engine(rt, "app").take_backup("full")
        _insert(sandbox.dsn, 1, 2, 3)
    finally:
        rt.close()
    # the picker chooses minutes: the target is the next whole minute, the last row comes after it. The
    # servers start while that minute runs out, so little of it is left to wait for.
    target = (_now(sandbox.dsn) + timedelta(minutes=1)).replace(second=0, microsecond=0)
    ui_server.start()

    log = (scratch / "serve.log").open("wb")
    serve = subprocess.Popen([str(DRKIT), "--config", str(policy), "serve"], cwd=ROOT, env=env,
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    keep = os.environ.get("DRKIT_SCREENSHOTS")
    shots = Path(tempfile.mkdtemp(prefix="drkit-ui-shots-", dir="/tmp"))
    into = scratch / "restored"
    ok = False
    try:
        deployment_id = _wait_for_deployment("restore-point-in-time/app-restore", ui_server.api_url)
        while _now(sandbox.dsn) < target + timedelta(seconds=1):
            time.sleep(0.2)
        _insert(sandbox.dsn, 4)
        rt = Runtime(load_policy(policy), environ=sandbox.environ())
        try:
            open_engine(rt, "app").take_backup("log")
        finally:
            rt.close()
        ui = subprocess.run(
            ["node", str(RESTORE_JS), ui_server.url, deployment_id, str(into),
             target.astimezone(UTC).strftime("%Y-%m-%dT%H:%M"), str(shots)],
            cwd=ROOT, capture_output=True, text=True, timeout=400,
            env=node_environ())
        assert ui.returncode == 0, (f"the browser could not run the restore (screenshots/HTML in {shots}):\n"
                                    f"{ui.stdout}\n{ui.stderr}\n{(scratch / 'serve.log').read_text()[-3000:]}\n"
                                    f"{ui_server.log_path.read_text(errors='replace')[-3000:]}")
        lines = dict(line.split(": ", 1) for line in ui.stdout.splitlines() if line.startswith(("run: ", "report: ")))
        # the report names the restored target and where the copy runs
        assert f"target: {target.astimezone(UTC).isoformat()}" in lines["report"], lines["report"]
        assert f"into: {into}" in lines["report"]

        from prefect import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings
        with temporary_settings(updates={PREFECT_API_URL: ui_server.api_url}), \
                get_client(sync_client=True) as client:
            run = client.read_flow_run(lines["run"])
        assert run.state is not None and run.state.is_completed()
        assert run.parameters["keep_running"] is True and run.parameters["into"] == str(into)
        assert datetime.fromisoformat(run.parameters["target"]) == target

        # kept running as a new standby: what was written before the target, and nothing after it
        port = int((into / "postmaster.pid").read_text().splitlines()[3])
        restored = LocalCluster(into, port, rt.bin_dir("app"), rt.os_user("app"), socket_dir=into)
        try:
            with connect(restored.dsn()) as conn:
                ids = [r[0] for r in conn.execute("SELECT id FROM marker ORDER BY id").fetchall()]
        finally:
            restored.stop()
        assert ids == [1, 2, 3]
        ok = True
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for shot, name in README_SHOTS.items():
                shutil.copyfile(shots / shot, Path(keep) / name)
    finally:
        stop_group(serve)
        log.close()
        if ok:
            shutil.rmtree(shots, ignore_errors=True)
        else:
            print(f"screenshots kept in {shots}", file=sys.stderr)
