"""From an alert to a runbook, with every part real: Alertmanager notifies `drkit serve`'s receiver, the
receiver emits a Prefect event, the `<db>-log` deployment's trigger starts a log backup, and the backup
lands in the catalog. A call with a wrong token is refused and starts nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from drkit.catalog import Catalog
from drkit.config import load_policy
from drkit.engines.postgres.pgctl import free_port
from drkit.sandbox import KEY_ENV, Sandbox
from tests.support.browser import missing_tools, node_environ
from tests.support.pgdata import connect
from tests.support.policies import policy_variant
from tests.support.prefect_process import PrefectProcess
from tests.support.procs import stop_group

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
DRKIT = Path(sys.executable).with_name("drkit")
UI_JS = ROOT / "tests" / "browser" / "alert_run.mjs"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
TOKEN = "am-7c1d0e5b9f2a4c68"  # noqa: S105 - a test token
YEARLY = "0 0 1 1 *"  # nothing scheduled runs during the test: every run seen was started by an alert
T = TypeVar("T")


def poll(what: str, probe: Callable[[], T | None], timeout: float = 240, logs: tuple[Path, ...] = ()) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@pytest.fixture
def server(request: pytest.FixtureRequest) -> PrefectProcess:
    srv = PrefectProcess(ui=True)  # with its UI: the test looks at the run there too
    request.addfinalizer(srv.close)
    srv.start()
    return srv


def _started_runs(api: str, deployment: str) -> list[dict[str, Any]]:
    """Flow runs of ``deployment`` (flow/name) that no schedule made."""
    dep = httpx.get(f"{api}/deployments/name/{deployment}", timeout=10)
    dep.raise_for_status()
    runs = httpx.post(f"{api}/flow_runs/filter", timeout=10,
                      json={"flow_runs": {"deployment_id": {"any_": [dep.json()["id"]]}}})
    runs.raise_for_status()
    return [r for r in runs.json() if not r["auto_scheduled"]]


def _seen_in_the_ui(server: PrefectProcess, run_id: str, automation: str) -> None:
    """The run's page in the Prefect UI shows it Completed under its name; the Automations page lists its
    trigger. Screenshots are kept (and named) only when it fails."""
    if missing_tools() is not None:
        warnings.warn(f"the Prefect UI part is skipped: {missing_tools()}", stacklevel=2)
        return
    name = httpx.get(f"{server.api_url}/flow_runs/{run_id}", timeout=10).json()["name"]  # log-DB once it ran
    shots = Path(tempfile.mkdtemp(prefix="drkit-alert-shots-", dir="/tmp"))
    ui = subprocess.run(["node", str(UI_JS), server.url, run_id, name, automation, str(shots)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, env=node_environ())
    assert ui.returncode == 0, f"the Prefect UI did not show it (screenshots in {shots}):\n{ui.stdout}\n{ui.stderr}"
    shutil.rmtree(shots, ignore_errors=True)


def _final_state(api: str, run_id: str) -> dict[str, Any] | None:
    state: dict[str, Any] = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]
    return state if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None


def _notification(db: str, *alertnames: str) -> bytes:
    """A webhook notification as Alertmanager sends it, for firing alerts of ``db``."""
    return json.dumps({"version": "4", "status": "firing", "receiver": "drkit", "alerts": [
        {"status": "firing", "labels": {"alertname": name, "database": db, "severity": "P2"}, "annotations": {},
         "startsAt": datetime.now(UTC).isoformat(), "fingerprint": f"{i:016x}"}
        for i, name in enumerate(alertnames)]}).encode()


def _automations(api: str) -> list[dict[str, Any]]:
    out = httpx.post(f"{api}/automations/filter", json={}, timeout=10)
    return list(out.json()) if out.status_code == 200 else []


def _alertmanager_config(directory: Path, receiver_url: str) -> Path:
    token_file = directory / "drkit-alert-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config = directory / "alertmanager.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "route": {"receiver": "drkit", "group_by": ["alertname", "database"], "group_wait": "0s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "drkit", "webhook_configs": [{
            "url": receiver_url, "send_resolved": True,
            "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}}]}]}))
    return config


@pytest.mark.skipif(ALERTMANAGER is None, reason="Alertmanager is not installed (scripts/install-system.sh)")
def test_a_firing_log_backup_alert_runs_the_log_backup(sandbox: Sandbox, scratch: Path,
                                                       server: PrefectProcess) -> None:
    db = sandbox.db
    listen_port, am_port = free_port(), free_port()
    policy = policy_variant(
        sandbox, scratch,
        {"schedules": {"full": YEARLY, "diff": None, "log": YEARLY, "verify": None}, "verify": {"after": []}},
        metrics={"listen": f"127.0.0.1:{listen_port}"})
    receiver = f"http://127.0.0.1:{listen_port}/alertmanager"
    serve_log, am_log = scratch / "serve.log", scratch / "alertmanager.log"
    env = server.environ(DRKIT_HOME=str(ROOT), **{KEY_ENV: sandbox.key_b64, "DRKIT_ALERT_TOKEN": TOKEN})
    # log backups start from a full one; then the database changes
    full = subprocess.run([str(DRKIT), "--config", str(policy), "backup", "full", db], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stdout + full.stderr
    with connect(sandbox.dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS alerted(id int)")
        conn.execute("INSERT INTO alerted SELECT generate_series(1, 100)")
    catalog = Catalog.open(load_policy(policy).catalog_url())
    logs_before = {b.id for b in catalog.list_backups(db, kinds=["log"])}

    with serve_log.open("wb") as out:
        serve = subprocess.Popen([str(DRKIT), "--config", str(policy), "serve"], cwd=ROOT, env=env,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    am: subprocess.Popen[bytes] | None = None
    try:
        # drkit serve is up: its receiver answers and the two backup deployments carry their triggers
        poll("drkit serve's listener", lambda: _answers(f"http://127.0.0.1:{listen_port}/healthz"), logs=(serve_log,))
        names = poll("the alert triggers", lambda: {a["name"] for a in _automations(server.api_url)} >= {
            f"{db}: DrkitLogBackupTooOld", f"{db}: DrkitFullBackupTooOld"}, logs=(serve_log,))
        assert names

        # a caller without the token is refused, and its alert starts nothing
        wrong = httpx.post(receiver, headers={"Authorization": "Bearer not-the-token"}, timeout=10,
                           content=_notification(db, "DrkitFullBackupTooOld"))
        assert (wrong.status_code, wrong.text) == (401, "missing or wrong bearer token\n")

        am_dir = scratch / "am"
        am_dir.mkdir()
        config = _alertmanager_config(am_dir, receiver)
        with am_log.open("wb") as out:
            am = subprocess.Popen(
                [str(ALERTMANAGER), f"--config.file={config}", f"--storage.path={am_dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
                cwd=am_dir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        am_url = f"http://127.0.0.1:{am_port}"
        poll("Alertmanager", lambda: _answers(f"{am_url}/-/ready"), logs=(am_log,))

        # Prometheus's part: the rule fires and the alert is posted to Alertmanager
        posted = httpx.post(f"{am_url}/api/v2/alerts", timeout=10, json=[{
            "labels": {"alertname": "DrkitLogBackupTooOld", "database": db, "severity": "P2"},
            "annotations": {"summary": f"the newest log backup of {db} is older than 30 minutes"},
            "startsAt": datetime.now(UTC).isoformat()}])
        assert posted.status_code == 200, posted.text

        logs = (serve_log, am_log, server.log_path)
        [run] = poll(f"a run of {db}-log started by the alert",
                     lambda: _started_runs(server.api_url, f"log-backup/{db}-log"), logs=logs)
        assert run["parameters"] == {"db": db, "config": str(policy)}

        state = poll(f"the run {run['name']} to finish", lambda: _final_state(server.api_url, run["id"]), logs=logs)
        assert state["type"] == "COMPLETED", (state, serve_log.read_text(errors="replace")[-4000:])
        new_logs = [b for b in catalog.list_backups(db, kinds=["log"]) if b.id not in logs_before]
        assert [b.status for b in new_logs] == ["completed"]
        _seen_in_the_ui(server, run["id"], f"{db}: DrkitLogBackupTooOld")

        # the event is Prefect's to show (Event feed), about the database, with the alert's labels
        events = httpx.post(f"{server.api_url}/events/filter", timeout=10, json={
            "filter": {"event": {"name": ["drkit.alert.firing"]}, "any_resource": {"id": [f"drkit.database.{db}"]}}})
        assert events.status_code == 200, events.text
        [event] = events.json()["events"]
        assert event["resource"]["drkit.alertname"] == "DrkitLogBackupTooOld"
        assert event["payload"]["labels"] == {"alertname": "DrkitLogBackupTooOld", "database": db, "severity": "P2"}
        # the refused call started no full backup (its event would have been handled before the log's)
        assert _started_runs(server.api_url, f"full-backup/{db}-full") == []

        # a repeat of the notification (Alertmanager's repeat_interval) inside the trigger's 30 minutes starts
        # no second log backup; the full-backup alert sent after it in the same notification starts <db>-full,
        # and once that run exists the repeat before it has been judged
        again = httpx.post(receiver, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10,
                           content=_notification(db, "DrkitLogBackupTooOld", "DrkitFullBackupTooOld"))
        assert (again.status_code, again.text) == (200, "2 event(s) emitted\n")
        [full_run] = poll(f"a run of {db}-full started by the alert",
                          lambda: _started_runs(server.api_url, f"full-backup/{db}-full"), logs=logs)
        state = poll(f"the run {full_run['name']} to finish", lambda: _final_state(server.api_url, full_run["id"]),
                     logs=logs)
        assert state["type"] == "COMPLETED", (state, serve_log.read_text(errors="replace")[-4000:])
        assert len(catalog.list_backups(db, kinds=["full"])) == 2
        assert [r["id"] for r in _started_runs(server.api_url, f"log-backup/{db}-log")] == [run["id"]]
        assert TOKEN not in serve_log.read_text(errors="replace") + am_log.read_text(errors="replace")
    finally:
        catalog.close()
        if am is not None:
            stop_group(am)
        stop_group(serve)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
