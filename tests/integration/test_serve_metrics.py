"""`drkit serve` starts the policy's metrics listener beside the deployments (a real Prefect server): /metrics
answers with the catalog's metrics and the approvals waiting, /healthz says ok; with `listen: null` there is none."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from drkit.engines.postgres.pgctl import free_port
from tests.support.prefect_process import running_prefect_server
from tests.support.procs import stop_group

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
DRKIT = Path(sys.executable).with_name("drkit")


@pytest.fixture(scope="module")
def api_env() -> Iterator[dict[str, str]]:
    with running_prefect_server() as server:
        yield server.environ()


def _policy(tmp_path: Path, listen: str | None) -> Path:
    path = tmp_path / "drkit.yaml"
    path.write_text(yaml.safe_dump({"catalog": f"sqlite:///{tmp_path / 'catalog.db'}",
                                    "tiers": {"local": {"store": "filesystem", "path": str(tmp_path / "local")}},
                                    "catalog_check_schedule": None, "retention_schedule": None,
                                    "metrics": {"listen": listen}}))
    return path


def _serve(policy: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([str(DRKIT), "--config", str(policy), "serve"], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def test_serve_answers_metrics_beside_the_deployments(tmp_path: Path, api_env: dict[str, str]) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    serve = _serve(_policy(tmp_path, f"127.0.0.1:{port}"), api_env, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert serve.poll() is None, log.read_text()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)  # until drkit serve has bound its listener
        assert r.status_code == 200
        samples = {s.name: s.value for f in text_string_to_metric_families(r.text) for s in f.samples}
        assert samples["drkit_exporter_collect_success"] == 1
        assert samples["drkit_approvals_waiting"] == 0  # asked of the Prefect API it serves against
        assert samples["drkit_approval_oldest_wait_seconds"] == 0
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).text == "ok\n"
        assert f"GET http://127.0.0.1:{port}/metrics" in log.read_text()
    finally:
        stop_group(serve)


def test_listen_null_serves_no_listener(tmp_path: Path, api_env: dict[str, str]) -> None:
    log = tmp_path / "serve.log"
    serve = _serve(_policy(tmp_path, None), api_env, log)
    try:
        deadline = time.monotonic() + 120
        while "catalog-check-now" not in log.read_text():  # serve has started serving its deployments
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert "/metrics" not in log.read_text()
    finally:
        stop_group(serve)
