"""A real Prometheus (Debian's package) scrapes drkit's real metrics listener (`drkit metrics --listen`) over a real
SQLite catalog and evaluates the real deploy/prometheus/drkit-rules.yml: a log backup that ended two hours ago
makes DrkitLogBackupTooOld fire for that database (with the labels and runbook Alertmanager would get), not for
a database whose log backups are fresh; a fresh log backup written to the catalog resolves it.

Scrape and evaluation every second; every wait polls Prometheus's /api/v1/alerts with a deadline."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from drkit.catalog import Catalog
from drkit.catalog.records import BackupRecord
from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE, segment_name
from drkit.engines.postgres.pgctl import free_port
from tests.support.procs import stop_group

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(300),
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is missing: install "
                                 "Debian's prometheus package (scripts/install-system.sh, run by make install)")]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "drkit-rules.yml"
DRKIT = Path(sys.executable).with_name("drkit")
SEG = DEFAULT_SEGMENT_SIZE


def record(id: str, db: str, kind: str, first: int, last: int, end: datetime, base_id: str | None = None
           ) -> BackupRecord:
    """A completed PostgreSQL backup of WAL segments first..last (a full: one segment) that ended at ``end``."""
    started = end - timedelta(minutes=2)
    return BackupRecord(
        id=id, database=db, kind=kind, status="completed", base_id=base_id, timeline=1,
        start_lsn=first * SEG + (0 if kind == "log" else 0x28), end_lsn=(last + 1) * SEG,
        start_wal=segment_name(1, first), end_wal=segment_name(1, last), started_at=started, finished_at=end,
        start_time=started, end_time=end, raw_bytes=2000, stored_bytes=1000, sha256="ab" * 32, format="t",
        key_id="k", error=None, verified_at=None, meta={"segment_size": SEG})


def put(cat: Catalog, b: BackupRecord) -> None:
    cat.import_backup(b, [("local", f"local/{b.id}", b.stored_bytes, "ab" * 32)])


@dataclass
class Prometheus:
    url: str
    drkit_target: str

    def alerts(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/alerts", timeout=10)
        assert r.status_code == 200, r.text
        alerts: list[dict[str, Any]] = r.json()["data"]["alerts"]
        return alerts

    def poll(self, what: str, until: Callable[[list[dict[str, Any]]], bool], timeout: float = 90) -> list[
            dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            alerts = self.alerts()
            if until(alerts):
                return alerts
            assert time.monotonic() < deadline, f"{what}: Prometheus's alerts are {alerts}"
            time.sleep(0.5)  # between polls


def log_too_old(alerts: list[dict[str, Any]], db: str) -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"]["alertname"] == "DrkitLogBackupTooOld"
            and a["labels"].get("database") == db]


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{what} did not answer {url}"
        time.sleep(0.2)  # between polls


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Catalog, Prometheus]]:
    """A policy with databases app and web over a SQLite catalog; drkit's listener; Prometheus scraping it."""
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    policy = tmp_path / "drkit.yaml"
    policy.write_text(yaml.safe_dump({
        "catalog": catalog_url,
        "tiers": {"local": {"store": "filesystem", "path": str(tmp_path / "local")}},
        "databases": {db: {"engine": "postgres", "dsn": f"host=127.0.0.1 port=1 user=x dbname={db}",
                           "data_dir": str(tmp_path / db)} for db in ("app", "web")},
    }))
    cat = Catalog.open(catalog_url)
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        drkit_port = free_port()
        procs.append(subprocess.Popen(  # noqa: S603 - our own venv's drkit, fixed arguments
            [str(DRKIT), "--config", str(policy), "metrics", "--listen", f"127.0.0.1:{drkit_port}"],
            stdout=(logs / "drkit.out").open("wb"), stderr=subprocess.STDOUT, start_new_session=True))
        wait_http(f"http://127.0.0.1:{drkit_port}/metrics", procs[-1], "drkit metrics --listen")

        prom_port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "drkit",
                                "static_configs": [{"targets": [f"127.0.0.1:{drkit_port}"]}]}],
        }))
        procs.append(subprocess.Popen(  # noqa: S603 - Debian's prometheus, fixed arguments
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=(logs / "prometheus.out").open("wb"), stderr=subprocess.STDOUT, start_new_session=True))
        prom_url = f"http://127.0.0.1:{prom_port}"
        wait_http(f"{prom_url}/-/ready", procs[-1], "prometheus")
        yield cat, Prometheus(prom_url, f"127.0.0.1:{drkit_port}")
    finally:
        for p in reversed(procs):
            stop_group(p)
        cat.close()


def test_an_old_log_backup_fires_then_a_fresh_one_resolves(world: tuple[Catalog, Prometheus]) -> None:
    cat, prom = world
    now = datetime.now(UTC)
    put(cat, record("A-F1", "app", "full", 2, 2, now - timedelta(hours=3)))
    put(cat, record("A-L1", "app", "log", 2, 5, now - timedelta(hours=2)))  # log shipping stopped 2 h ago
    put(cat, record("W-F1", "web", "full", 2, 2, now - timedelta(hours=3)))
    put(cat, record("W-L1", "web", "log", 2, 5, now - timedelta(minutes=1)))

    alerts = prom.poll("DrkitLogBackupTooOld fires for app",
                       lambda a: any(x["state"] == "firing" for x in log_too_old(a, "app")))
    [fired] = log_too_old(alerts, "app")
    assert fired["labels"] == {"alertname": "DrkitLogBackupTooOld", "severity": "P2", "database": "app",
                               "kind": "log", "job": "drkit", "instance": prom.drkit_target}
    assert fired["annotations"]["summary"].startswith("app: newest log backup is 2h 0m ")
    assert fired["annotations"]["runbook"].startswith("drkit backup log app ")
    assert float(fired["value"]) > 2 * 3600
    assert log_too_old(alerts, "web") == [], "web's log backup is a minute old"

    # the log backup the alert asks for: a fresh one continuing the chain resolves the alert
    put(cat, record("A-L2", "app", "log", 6, 7, datetime.now(UTC)))
    alerts = prom.poll("DrkitLogBackupTooOld resolves for app", lambda a: log_too_old(a, "app") == [])
    assert log_too_old(alerts, "web") == []
    # the scrape kept working all along: no exporter alert
    assert not [a for a in alerts if a["labels"]["alertname"] == "DrkitExporterDown"]
