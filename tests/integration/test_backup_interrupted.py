"""A backup killed outright (SIGKILL) against a real Prefect server: the next one is not held up by the dead
run's lock, and it clears what the dead run left (its 'running' row, its partial object)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from drkit.config import load_policy
from drkit.runtime import Runtime
from drkit.sandbox import KEY_ENV, Sandbox
from tests.support.policies import policy_variant
from tests.support.prefect_process import PrefectProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DRKIT = str(Path(sys.executable).with_name("drkit"))
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[PrefectProcess]:
    # the server looks for lapsed leases every second (Prefect's default: 15 s), so a dead holder's slot
    # comes back soon after its lease runs out
    s = PrefectProcess(server_env={"PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1"})
    try:
        s.start()
        yield s
    finally:
        s.close()


@pytest.fixture
def cfg(sandbox: Sandbox, scratch: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(KEY_ENV, sandbox.key_b64)
    return policy_variant(sandbox, scratch, {"verify": {"after": []}})


def _drkit(server: PrefectProcess, sandbox: Sandbox, cfg: Path, *args: str, fault: str | None = None,
           ) -> subprocess.Popen[str]:
    extra = {KEY_ENV: sandbox.key_b64, "PYTHONPATH": str(ROOT)}
    if fault:
        extra["DRKIT_FAULT"] = fault
    verbose = [a for a in args if a == "--verbose"]
    command = [a for a in args if a != "--verbose"]
    return subprocess.Popen([DRKIT, "--config", str(cfg), *verbose, *command], cwd=ROOT, env=server.environ(**extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen[str], timeout: float = 150) -> tuple[int, str, str]:
    # A hang guard, not a timing assertion: a dead run's slot held to Prefect's default 300 s lease trips it.
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, out, err


def test_a_killed_backup_neither_blocks_the_next_one_nor_leaves_its_row_and_partial_object(
    server: PrefectProcess, sandbox: Sandbox, cfg: Path
) -> None:
    local = Path(load_policy(cfg).tier_path("local"))
    killed = _drkit(server, sandbox, cfg, "backup", "full", "app", fault="backup.stream")
    code, _, err = _finish(killed)
    assert code == -9, err  # SIGKILLed by the fault point, after the first bytes reached the store
    rt = Runtime(load_policy(cfg))
    try:
        (dead,) = rt.catalog.list_backups("app", statuses=["running"])
        assert dead.meta["process"]["pid"] == killed.pid
        assert list((local / "app" / dead.id).glob(".data.drk.part-*")), "the dead run left no partial object"

        code, out, err = _finish(_drkit(server, sandbox, cfg, "--verbose", "backup", "full", "app"))
        assert code == 0, err
        # Taken over because the holder's process is gone, not because its lease ran out.
        assert (f"released the backup lock of app: its holder, process {killed.pid} on host "
                f"{socket.gethostname()}, is gone") in err
        new_id = out.strip().splitlines()[-1]
        assert rt.catalog.get(new_id).status == "completed"
        old = rt.catalog.get(dead.id)
        assert old.status == "failed"
        assert old.error == (f"interrupted: process {killed.pid} on host {socket.gethostname()} gone (found by "
                             "the next backup of app, which holds its lock)")
        assert not list((local / "app" / dead.id).iterdir()), "the dead run's objects are still there"
        audit = [e for e in rt.catalog.audit_events(database="app", action="backup.status") if e.subject == dead.id]
        assert audit and audit[-1].detail["to"] == "failed"
    finally:
        rt.close()

    runner = CliRunner()
    check = runner.invoke(app, ["--config", str(cfg), "catalog", "check", "--json"])
    assert check.exit_code == 0, check.output
    assert json.loads(check.stdout)["clean"] is True
    status = runner.invoke(app, ["--config", str(cfg), "status", "--json"])
    assert json.loads(status.stdout)[0]["catalog_check"]["clean"] is True


def test_a_run_killed_after_writing_backup_json_is_found_by_catalog_check_and_repaired(
    server: PrefectProcess, sandbox: Sandbox, cfg: Path
) -> None:
    killed = _drkit(server, sandbox, cfg, "backup", "full", "app", fault="backup.descriptor:after")
    code, _, err = _finish(killed)
    assert code == -9, err
    local = Path(load_policy(cfg).tier_path("local"))
    runner = CliRunner()
    found = runner.invoke(app, ["--config", str(cfg), "catalog", "check", "--json"])
    assert found.exit_code == 1, found.output
    (stale,) = json.loads(found.stdout)["findings"]
    assert stale["kind"] == "stale" and stale["database"] == "app"
    assert {p.name for p in (local / "app" / stale["subject"]).iterdir()} == {"data.drk", "manifest.drk",
                                                                             "backup.json"}
    repaired = runner.invoke(app, ["--config", str(cfg), "catalog", "check", "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert "1 finding(s), 1 repaired, 0 remain" in repaired.stdout
    rt = Runtime(load_policy(cfg))
    try:
        row = rt.catalog.get(stale["subject"])
        assert row.status == "failed"
        assert row.error == (f"interrupted: process {killed.pid} on host {socket.gethostname()} gone "
                             "(found by catalog check)")
        assert [e.detail["repair"] for e in rt.catalog.audit_events(action="catalog.repair")
                if e.subject == row.id] == ["fail-backup"]
    finally:
        rt.close()
    assert not list((local / "app" / stale["subject"]).iterdir())
    again = runner.invoke(app, ["--config", str(cfg), "catalog", "check"])
    assert again.exit_code == 0 and "catalog check: clean" in again.stdout


def test_a_dead_holder_on_another_host_loses_the_lock_when_its_lease_lapses(
    server: PrefectProcess, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.common import database_lock

    # A holder that records itself as a process of another host, then dies without releasing: this host
    # cannot judge it, so the lock comes back only when the server repossesses the unrenewed lease.
    holder = ("import os, signal\n"
              "from prefect.variables import Variable\n"
              "from tasks.common import _holder_variable, database_lock\n"
              "with database_lock('elsewhere'):\n"
              "    record = Variable.get(_holder_variable('elsewhere'))\n"
              "    record['process']['host'] = 'another-host'\n"
              "    Variable.set(_holder_variable('elsewhere'), record, overwrite=True)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", holder], cwd=ROOT, env=server.environ(PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}), database_lock("elsewhere",
                                                                                      timeout_seconds=150):
        pass  # a lease of Prefect's default 300 s would not be back within this timeout
    assert "released the backup lock" not in caplog.text
