"""DR drill measurements: RTO/RPO arithmetic, met or missed and why, the audit detail, the report; the policy keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deployments.serve import DRILL, deployment_specs
from drkit.config import parse_policy
from drkit.drill import DrillResult, failed_checks_error, failed_detail, failed_markdown, notice
from drkit.errors import ConfigError, RestorePlanError
from drkit.verify import CheckResult

START = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)


def drill(*, validated_after: float = 300.0, writable_after: float = 240.0, reached_before: float = 600.0,
          rto: timedelta = timedelta(hours=1), rpo: timedelta = timedelta(minutes=30)) -> DrillResult:
    return DrillResult(
        database="orders", backup_id="orders-full-1", pieces=("orders-full-1", "orders-log-2"),
        location="/srv/scratch/orders/drill-1", started=START,
        writable_at=START + timedelta(seconds=writable_after), validated_at=START + timedelta(seconds=validated_after),
        reached=START - timedelta(seconds=reached_before), rto_target=rto, rpo_target=rpo,
        checks=(CheckResult("amcheck", True, "12 relations", 1.5),
                CheckResult("sql: SELECT count(*) FROM t", True, "SELECT count(*) FROM t → 1200", 0.1)))


def test_rto_runs_to_the_validated_copy_and_rpo_back_to_the_point_reached() -> None:
    d = drill()
    assert d.rto_seconds == 300.0  # validated, not merely writable (240 s)
    assert d.rpo_seconds == 600.0
    assert d.met and d.rto_met and d.rpo_met and d.reasons == []


def test_each_missed_target_is_a_reason_naming_its_policy_key() -> None:
    rto_missed = drill(rto=timedelta(milliseconds=1))
    assert not rto_missed.met and rto_missed.rpo_met
    assert len(rto_missed.reasons) == 1 and "rto_target" in rto_missed.reasons[0]
    assert "5 min 0 s" in rto_missed.reasons[0]

    both = drill(validated_after=7300, reached_before=3600)
    assert not both.rto_met and not both.rpo_met
    assert [r.split()[0] for r in both.reasons] == ["RTO", "RPO"]
    assert "rpo_target" in both.reasons[1] and "2026-12-06T02:00:00+00:00" in both.reasons[1]


def test_a_target_met_exactly_is_met() -> None:
    assert drill(validated_after=3600, reached_before=1800).met


def test_the_audit_detail_has_exactly_the_keys_the_metrics_exporter_reads() -> None:
    detail = drill(rto=timedelta(milliseconds=1)).audit_detail()
    assert detail == {"rto_seconds": 300.0, "rpo_seconds": 600.0, "rto_target_seconds": 0.001,
                      "rpo_target_seconds": 1800.0, "met": False, "backup_id": "orders-full-1",
                      "reached": "2026-12-06T02:50:00+00:00"}
    assert failed_detail(RestorePlanError("no full backup")) == {"error": "no full backup"}
    # Another library's message may carry a secret: the catalog keeps only its class and where it was raised.
    leaked = failed_detail(RuntimeError("connection to postgresql://drkit:hunter2@db failed"))
    assert "hunter2" not in leaked["error"] and "RuntimeError" in leaked["error"]


def test_the_report_shows_figures_targets_verdict_and_the_checks() -> None:
    met = drill().markdown()
    assert "# DR drill of orders: targets **MET**" in met
    assert "| 5 min 0 s | 1 h 0 min | ok |" in met and "| 10 min 0 s | 30 min 0 s | ok |" in met
    assert "orders-full-1, orders-log-2" in met and "→ 1200" in met and "/srv/scratch/orders/drill-1" in met
    missed = drill(rto=timedelta(seconds=30)).markdown()
    assert "**MISSED**" in missed and "**Missed:** RTO 5 min 0 s is above the target of 30.0 s" in missed
    subject, body = notice(drill(rto=timedelta(seconds=30)))
    assert "orders" in subject and "missed" in subject and "rto_target" in body


def test_a_failed_drill_reports_the_error_and_failed_checks() -> None:
    checks = [CheckResult("amcheck", False, "block 3 | corrupt", 1.0), CheckResult("visibility map", True, "", 0.2)]
    assert failed_checks_error("/x", checks) == ("the copy restored into /x failed validation: "
                                                 "amcheck: block 3 | corrupt")
    assert failed_checks_error("/x", checks[1:]) is None
    text = failed_markdown("orders", START, "no full backup of 'orders'", checks)
    assert "**FAILED**" in text and "no full backup" in text and "block 3 \\| corrupt" in text


def _policy(db: dict[str, object]) -> dict[str, object]:
    return {"databases": {"orders": {"engine": "postgres", "dsn_env": "X", "data_dir": "/d", **db}}}


def test_policy_targets_and_drill_schedule_default_and_parse() -> None:
    cfg = parse_policy(_policy({}), base_dir=Path(".")).database("orders")
    assert cfg.rpo_target == timedelta(minutes=30) and cfg.rto_target == timedelta(hours=1)
    assert cfg.schedules.drill == "0 3 * * 0"
    cfg = parse_policy(_policy({"rpo_target": "5m", "rto_target": "90s", "schedules": {"drill": None}}),
                       base_dir=Path(".")).database("orders")
    assert cfg.rpo_target == timedelta(minutes=5) and cfg.rto_target == timedelta(seconds=90)
    assert cfg.schedules.drill is None


@pytest.mark.parametrize(("db", "key"), [({"rto_target": "soon"}, "databases.orders.rto_target"),
                                         ({"rpo_target": -1}, "databases.orders.rpo_target"),
                                         ({"schedules": {"drill": "weekly"}}, "databases.orders.schedules.drill")])
def test_bad_drill_keys_are_refused_naming_the_key(db: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_policy(_policy(db), base_dir=Path("."))


def test_the_drill_is_deployed_weekly_in_the_database_timezone_and_not_when_off() -> None:
    policy = parse_policy(_policy({"timezone": "Europe/Berlin"}), base_dir=Path("."))
    spec = next(s for s in deployment_specs(policy, "drkit.yaml") if s.name == "orders-dr-drill")
    assert spec.target == DRILL and spec.parameters == {"db": "orders", "config": "drkit.yaml"}
    assert spec.schedule is not None and (spec.schedule.cron, spec.schedule.timezone) == ("0 3 * * 0", "Europe/Berlin")
    off = parse_policy(_policy({"schedules": {"drill": None}}), base_dir=Path("."))
    assert all(s.target != DRILL for s in deployment_specs(off, "drkit.yaml"))


def test_drkit_drill_refuses_an_unknown_database_as_bad_input() -> None:
    from typer.testing import CliRunner

    from cli import app

    examples = Path(__file__).resolve().parents[2] / "examples" / "drkit.yaml"
    out = CliRunner().invoke(app, ["--config", str(examples), "drill", "nope"])
    assert out.exit_code == 2 and out.stdout == ""
    assert out.stderr.startswith("error: unknown database 'nope'") and "orders" in out.stderr
