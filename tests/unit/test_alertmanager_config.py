"""deploy/alertmanager/alertmanager.yml, the routing example: Alertmanager's amtool accepts it, each severity
reaches the receivers the README promises, the backup alerts also reach drkit's webhook, and no secret is
written in it (every key and token is read from a file). amtool comes with Debian's prometheus-alertmanager
package, which `make install` (so `make test`) installs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RULES = ROOT / "deploy" / "prometheus" / "drkit-rules.yml"

amtool = shutil.which("amtool")
needs_amtool = pytest.mark.skipif(
    amtool is None, reason="amtool is missing: install Debian's prometheus-alertmanager (scripts/install-system.sh)")


def run_amtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert amtool is not None
    return subprocess.run([amtool, *args], capture_output=True, text=True, timeout=60, check=False)


def receivers_for(**labels: str) -> set[str]:
    out = run_amtool("config", "routes", "test", f"--config.file={CONFIG}",
                     *(f"{k}={v}" for k, v in labels.items()))
    assert out.returncode == 0, out.stdout + out.stderr
    return set(out.stdout.strip().split(","))


def receiver(name: str) -> dict[str, Any]:
    doc = yaml.safe_load(CONFIG.read_text())
    return next(r for r in doc["receivers"] if r["name"] == name)


@needs_amtool
def test_amtool_accepts_the_example() -> None:
    out = run_amtool("check-config", str(CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_amtool
def test_amtool_rejects_a_broken_config(tmp_path: Path) -> None:
    """The check above can fail: a route to a receiver that does not exist is refused."""
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(CONFIG.read_text().replace("receiver: dba-chat", "receiver: nobody"))
    assert run_amtool("check-config", str(broken)).returncode == 1


@needs_amtool
def test_each_severity_reaches_its_receivers() -> None:
    assert receivers_for(alertname="DrkitRpoAboveTarget", severity="P1", database="app") == {"dba-page"}
    assert receivers_for(alertname="Drkit321Broken", severity="P2", database="app") == {"dba-chat"}
    assert receivers_for(alertname="DrkitDrillMissedTarget", severity="P3", database="app") == {"dba-email"}
    assert {"pagerduty_configs", "slack_configs", "email_configs"} <= set(receiver("dba-page"))
    assert {"slack_configs", "email_configs"} <= set(receiver("dba-chat"))
    assert "pagerduty_configs" not in receiver("dba-chat")
    assert set(receiver("dba-email")) == {"name", "email_configs"}


@needs_amtool
def test_the_backup_alerts_also_reach_drkit() -> None:
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    for name in ("DrkitLogBackupTooOld", "DrkitFullBackupTooOld"):
        severity = rules[name]["labels"]["severity"]
        assert receivers_for(alertname=name, severity=severity, database="app") == {"drkit-runbooks", "dba-chat"}
    hook = receiver("drkit-runbooks")["webhook_configs"][0]
    assert hook["url"].endswith("/alertmanager")
    assert hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["credentials_file"]


def test_no_secret_is_written_in_the_example() -> None:
    doc = yaml.safe_load(CONFIG.read_text())
    inline = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if re.search(r"(key|password|secret|token|credentials|api_url)$", str(k)) and not str(k).endswith(
                        "_file") and v:
                    inline.append(f"{path}.{k}")
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
    walk(doc, "")
    assert not inline, f"secrets written inline instead of read from a file: {inline}"
    for must_be_file in ("routing_key_file", "credentials_file", "smtp_auth_password_file", "slack_api_url_file"):
        assert must_be_file in CONFIG.read_text()
