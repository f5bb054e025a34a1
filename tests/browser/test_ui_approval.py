"""A paused failover in a real Prefect server, approved by a person through the UI's Resume form.

The approver types the code from their authenticator app into the form; the flow judges it: a wrong
code is refused (the run pauses again and its form says why), the right one approves.

Debian's chromium is driven by playwright-core (Node, from .tools/playwright; both installed by
scripts/install-browser.sh, no browser download). The Prefect server is a real `prefect server start`
with its own PREFECT_HOME, not the session's test harness: this directory is not under tests/flows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest

from drkit.engines.postgres import replica
from drkit.engines.postgres.pgctl import LocalCluster, free_port
from drkit.errors import DrkitError
from flows.approvals import pause_of, paused_runs
from flows.dr import dr_failover
from tests.flows.test_dr_failover import World, world  # noqa: F401  (the fixture: primary + standby + HAProxy)
from tests.support.approvers import answer, authenticator, wrong_code
from tests.support.browser import ROOT, missing_tools, node_environ

APPROVE_JS = Path(__file__).with_name("approve.mjs")
APPROVER = "alice@example.com"
REASON = "region down, INC-42 (approved in the UI)"


pytestmark = [pytest.mark.slow, pytest.mark.integration,
              pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or "")]


@pytest.fixture
def prefect_server() -> Iterator[str]:
    """A real `prefect server start` (API + UI) on a free port; yields its base URL; stopped by PID."""
    home = Path(tempfile.mkdtemp(prefix="drkit-pfui-", dir="/tmp"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # The UI asks /ui-settings where the API is; without this it says port 4200 whatever --port is.
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_SERVER_UI_API_URL=f"{url}/api")
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the Prefect server did not start:\n"
                                     + (home / "server.log").read_text(errors="replace")[-3000:])
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def _in_recovery(c: LocalCluster) -> bool:
    with psycopg.connect(c.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def _wait_paused(name: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in paused_runs() if r["name"] == name]
        if runs:
            return str(runs[0]["id"])
        time.sleep(0.3)
    raise AssertionError(f"{name} never paused for approval")


def _form_after_refusal(run_id: str, timeout: float = 60) -> str:
    """The Resume form's text once the run has paused again after a refused answer."""
    from prefect.input.actions import read_flow_run_input

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = str(read_flow_run_input(pause_of(run_id)["description"], flow_run_id=UUID(run_id)))
        except DrkitError:  # between two pauses
            text = ""
        if "refused" in text:
            return text
        time.sleep(0.3)
    raise AssertionError("the run did not pause again after the refused answer")


def _drain_prefect_workers() -> None:
    """Send the queued logs and events to this server now: once it is stopped they would be retried at exit."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(RuntimeError):  # never started
        APILogWorker.instance().drain()
    EventsWorker.drain_all(timeout=10)


def test_failover_approved_through_the_prefect_ui(world: World, prefect_server: str) -> None:  # noqa: F811
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = f"{prefect_server}/api"
    keep = os.environ.get("DRKIT_UI_SHOTS")  # set it to a directory to keep the screenshots of a passing run
    shots = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="drkit-ui-shots-", dir="/tmp"))
    world.sb.primary.stop("immediate")  # the primary region dies
    out: dict[str, Any] = {}

    def run_failover() -> None:
        # Prefect's settings context is per thread: this thread gets its own, pointing at the real server.
        with temporary_settings(updates={PREFECT_API_URL: api}):
            try:
                out["result"] = dr_failover(db="app", config=world.config, probe_interval_seconds=0.2,
                                            approval_timeout_seconds=120)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                out["error"] = exc

    ok, run_id = False, ""
    with temporary_settings(updates={PREFECT_API_URL: api}):
        flow_thread = threading.Thread(target=run_failover, daemon=True)
        flow_thread.start()
        try:
            run_id = _wait_paused("failover-app")
            assert _in_recovery(world.standby)  # nothing promoted before the approval

            app = authenticator(APPROVER)  # enrolled in this server (`drkit approvers enroll`)

            def resume_in_the_ui(code: str, shots_dir: Path) -> subprocess.CompletedProcess[str]:
                ui = subprocess.run(
                    ["node", str(APPROVE_JS), prefect_server, run_id, APPROVER, REASON, str(shots_dir)],
                    cwd=ROOT, capture_output=True, text=True, timeout=90,
                    env={**node_environ(), "DRKIT_APPROVAL_CODE": code})
                assert ui.returncode == 0, (f"the browser could not answer (screenshot/HTML in {shots_dir}):\n"
                                            f"{ui.stdout}\n{ui.stderr}")
                return ui

            # A wrong code: the flow refuses it, the run waits again and its form says why.
            resume_in_the_ui(wrong_code(APPROVER), shots / "wrong-code")
            assert "wrong or expired code" in _form_after_refusal(run_id)
            assert _in_recovery(world.standby)

            t0 = time.monotonic()
            ui = resume_in_the_ui(app.next_code(), shots)
            browser_seconds = time.monotonic() - t0

            flow_thread.join(90)
            assert not flow_thread.is_alive(), "the failover did not finish after the UI approval"
            assert "error" not in out, f"the failover raised: {out.get('error')!r}"
            result = out["result"]
            assert result["failed_over"] is True
            assert result["approver"] == APPROVER
            assert result["reason"] == REASON
            assert result["resumed"] is False
            assert not _in_recovery(world.standby)  # the replica was promoted
            assert replica.current_timeline(world.standby.dsn()) == 2

            with get_client(sync_client=True) as client:
                run = client.read_flow_run(UUID(run_id))
            assert run.state is not None and run.state.is_completed(), run.state
            ok = True
            print(f"UI approval took {browser_seconds:.1f} s in chromium:\n{ui.stdout}")
        finally:
            if flow_thread.is_alive() and run_id:  # failed while paused: reject through the API so it ends
                with contextlib.suppress(Exception):
                    answer(run_id, approve=False, approver=APPROVER, reason="browser test failed")
                flow_thread.join(30)
            _drain_prefect_workers()
            if ok and not keep:
                shutil.rmtree(shots, ignore_errors=True)
            else:
                print(f"screenshots kept in {shots}", file=sys.stderr)
