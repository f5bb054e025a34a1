"""deploy/prometheus (alert rules, their promtool unit tests) and deploy/grafana (the dashboard): Prometheus's own
tools accept them, every alert has a firing and a quiet test case, and every metric they name is one drkit's
exporter (drkit/metrics.py) defines and the README lists. promtool comes with Debian's `prometheus` package,
which `make install` (so `make test`) installs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "drkit-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "drkit-rules.test.yml"
LONG_RULE_TESTS = RULE_TESTS.with_name("drkit-rules.long.test.yml")  # 36 h of evaluations, at a coarser interval
DASHBOARD = ROOT / "deploy" / "grafana" / "drkit-dashboard.json"
EXPORTER = ROOT / "drkit" / "metrics.py"

ALERTS = {  # the names the README's alert table and the Alertmanager example route on
    "DrkitFullBackupTooOld", "DrkitLogBackupTooOld", "DrkitRpoAboveTarget", "DrkitVerificationFailed",
    "DrkitVerificationTooOld", "DrkitReplicaLagHigh", "DrkitReplicaDown", "Drkit321Broken", "DrkitApprovalWaiting",
    "DrkitDrillMissedTarget", "DrkitCatalogCheckFindings", "DrkitExporterDown",
}
WITHOUT_DATABASE = {"DrkitApprovalWaiting", "DrkitCatalogCheckFindings", "DrkitExporterDown"}
NOT_DRKIT = {"up", "ALERTS"}  # Prometheus's own series the rules and the dashboard may read
PROMQL_WORDS = {"on", "ignoring", "by", "without", "and", "or", "unless", "bool", "group_left", "group_right",
                "offset", "Inf", "NaN", "inf", "nan"}

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="promtool is missing: install Debian's prometheus package (scripts/install-system.sh)")


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert promtool is not None
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for group in doc["groups"] for r in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every panel target, with Grafana's variables replaced by what they stand for."""
    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for p in panels:
            yield from walk(p.get("panels", []))
            for t in p.get("targets", []):
                yield p["title"], t["expr"].replace("$database", ".*")
    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (label matchers, label lists, ranges, strings left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(on|ignoring|by|without|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = {m.group(1) for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", expr)}
    return names - PROMQL_WORDS


def exporter_names() -> list[re.Pattern[str]]:
    """The names drkit/metrics.py sets (f-string parts such as {what} match any word)."""
    found = re.findall(r'f?"(drkit_[a-z_{}]+)"', EXPORTER.read_text())
    assert len(found) > 20, "drkit/metrics.py no longer names its metrics as string literals: update this test"
    return [re.compile(re.sub(r"\\\{[a-z_]+\\\}", "[a-z]+", re.escape(n))) for n in set(found)]


def readme_names() -> set[str]:
    """The names the README's Monitoring → Metrics table lists."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Metrics"):]
    return set(re.findall(r"^\| `(drkit_\w+)` \|", section, flags=re.MULTILINE))


def test_the_exporter_defines_every_metric_the_rules_and_the_dashboard_read() -> None:
    defined, listed = exporter_names(), readme_names()
    used = {name: f"rule {r['alert']}" for r in rules() for name in metric_names(r["expr"])}
    used |= {name: f"dashboard panel {title!r}" for title, expr in dashboard_exprs() for name in metric_names(expr)}
    assert any(n.startswith("drkit_") for n in used)
    unknown = {name: where for name, where in used.items() if name not in NOT_DRKIT and not (
        any(p.fullmatch(name) for p in defined) and name in listed)}
    assert not unknown, f"metric names drkit/metrics.py does not set or the README does not list: {unknown}"


def test_metric_name_extraction_sees_through_promql() -> None:
    expr = ('(drkit_a{kind="full"} unless on(job, instance) drkit_b) and on() up{job="x"} == 0 '
            'or sum by (tier) (rate(drkit_c[5m])) > 26 * 3600 or absent(drkit_d)')
    assert metric_names(expr) == {"drkit_a", "drkit_b", "up", "drkit_c", "drkit_d"}


def test_every_alert_has_a_severity_and_a_runbook() -> None:
    rs = rules()
    assert {r["alert"] for r in rs} == ALERTS
    for r in rs:
        assert r["labels"]["severity"] in {"P1", "P2", "P3"}, r["alert"]
        notes = r["annotations"]
        assert {"summary", "description", "runbook"} <= set(notes), r["alert"]
        if r["alert"] not in WITHOUT_DATABASE:  # a per-database alert says which database
            assert "{{ $labels.database }}" in notes["summary"], r["alert"]
            assert "{{ $labels.database }}" in notes["description"], r["alert"]
    severities = {r["alert"]: r["labels"]["severity"] for r in rs}
    assert severities["DrkitRpoAboveTarget"] == severities["DrkitVerificationFailed"] == "P1"


def test_the_readme_tells_what_each_alert_means_and_what_to_do() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Alerts"):]
    rows = {m.group(1): (m.group(2), m.group(3).replace("`", "")) for m in re.finditer(
        r"^\| `(\w+)` \| (P\d) \| [^|]+ \| ([^|]+) \|$", section, flags=re.MULTILINE)}
    assert set(rows) == ALERTS
    for r in rules():
        severity, todo = rows[r["alert"]]
        assert severity == r["labels"]["severity"], r["alert"]
        first_step = re.split(r"[;(]", r["annotations"]["runbook"])[0].strip()
        assert first_step.replace("{{ $labels.database }}", "DB") in todo, (r["alert"], first_step)


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    cases = [c for f in (RULE_TESTS, LONG_RULE_TESTS) for t in yaml.safe_load(f.read_text())["tests"]
             for c in t.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert fires == quiet == ALERTS


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    out = run_promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_the_rules_pass_their_promtool_unit_tests() -> None:
    out = run_promtool("test", "rules", RULE_TESTS.name, LONG_RULE_TESTS.name, cwd=RULES.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == 2, out.stdout


@needs_promtool
def test_promtool_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests can fail: one expected annotation changed makes promtool say which alert differs."""
    shutil.copy(RULES, tmp_path / RULES.name)
    text = RULE_TESTS.read_text()
    assert text.count("newest log backup is 31m 0s old") == 1
    (tmp_path / RULE_TESTS.name).write_text(text.replace("31m 0s old", "29m 0s old"))
    out = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert out.returncode == 1
    assert "DrkitLogBackupTooOld" in out.stdout + out.stderr


def test_the_dashboard_is_grafana_json_with_its_variables() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "label_values(" in variables["database"]["definition"]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    read = {name for _, expr in dashboard_exprs() for name in metric_names(expr)}
    for wanted in ("drkit_backup_age_seconds", "drkit_rpo_seconds", "drkit_rpo_target_seconds",
                   "drkit_restorable_until_timestamp_seconds", "drkit_verification_last_success",
                   "drkit_estimated_rto_seconds", "drkit_drill_last_rto_seconds", "drkit_replica_lag_seconds",
                   "drkit_replica_max_lag_seconds", "drkit_chain_copies", "drkit_chain_stores",
                   "drkit_stored_bytes", "drkit_approvals_waiting", "drkit_catalog_check_findings"):
        assert wanted in read, f"no dashboard panel shows {wanted}"


@needs_promtool
def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    """promtool has no expression checker; each expression as a recording rule goes through its parser."""
    exprs = dashboard_exprs()
    recording = [{"record": f"drkit:dashboard:expr{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)]
    doc = {"groups": [{"name": "dashboard", "rules": recording}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(doc))
    out = run_promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in out.stdout
    # and the check does catch a broken one
    recording.append({"record": "drkit:dashboard:broken", "expr": "sum by (tier (drkit_stored_bytes)"})
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(doc))
    assert run_promtool("check", "rules", "dashboard.yml", cwd=tmp_path).returncode == 1
