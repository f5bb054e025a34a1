"""prefect.yaml is what `drkit deployments` generates from examples/drkit.yaml, and declares exactly what
`serve` builds from it: the same deployments, entrypoints, parameters, tags and schedules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
from pydantic import TypeAdapter
from typer.testing import CliRunner

from cli import app
from deployments.serve import build_deployments
from drkit.config import load_policy

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_prefect_yaml_is_what_the_generator_makes() -> None:
    out = CliRunner().invoke(app, ["--config", str(ROOT / "examples" / "drkit.yaml"), "deployments"])
    assert out.exit_code == 0, out.output
    assert out.stdout == (ROOT / "prefect.yaml").read_text(), (
        "prefect.yaml is stale: run `drkit --config examples/drkit.yaml deployments --output prefect.yaml`")


def test_the_policy_is_named_as_runs_see_it_from_the_project_root(tmp_path: Path) -> None:
    target = tmp_path / "prefect.yaml"
    out = CliRunner().invoke(app, ["--config", str(ROOT / "examples" / "drkit.yaml"), "deployments",
                                   "--output", str(target), "--pool", "dr-site"])
    assert out.exit_code == 0, out.output
    doc = yaml.safe_load(target.read_text())
    assert {d["work_pool"]["name"] for d in doc["deployments"]} == {"dr-site"}
    assert {d["parameters"]["config"] for d in doc["deployments"]} == {"examples/drkit.yaml"}
    # a policy outside the project is named by its absolute path
    (tmp_path / "drkit.yaml").write_text((ROOT / "examples" / "drkit.yaml").read_text())
    out = CliRunner().invoke(app, ["--config", str(tmp_path / "drkit.yaml"), "deployments"])
    assert out.exit_code == 0, out.output
    doc = yaml.safe_load(out.stdout)
    assert {d["parameters"]["config"] for d in doc["deployments"]} == {str(tmp_path / "drkit.yaml")}


def test_prefect_yaml_declares_what_serve_builds() -> None:
    declared = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert declared["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $DRKIT_HOME }}"}}]
    cwd = Path.cwd()
    os.chdir(ROOT)  # Prefect names a served flow's entrypoint relative to the working directory
    try:
        built = build_deployments(load_policy(ROOT / "examples" / "drkit.yaml"), "examples/drkit.yaml")
    finally:
        os.chdir(cwd)

    triggers = TypeAdapter(list[DeploymentTriggerTypes])  # how `prefect deploy` reads `triggers:`

    def served(d: Any) -> dict[str, Any]:
        return {"entrypoint": d.entrypoint, "parameters": d.parameters, "tags": d.tags,
                "description": d.description,
                "schedules": [(s.schedule.cron, s.schedule.timezone, s.active) for s in d.schedules],
                "triggers": [t.model_dump(mode="json") for t in d.triggers]}

    def yaml_side(d: dict[str, Any]) -> dict[str, Any]:
        return {"entrypoint": d["entrypoint"], "parameters": d["parameters"], "tags": d["tags"],
                "description": d["description"],
                "schedules": [(s["cron"], s["timezone"], s["active"]) for s in d["schedules"]],
                "triggers": [t.model_dump(mode="json") for t in triggers.validate_python(d.get("triggers", []))]}

    assert {d["name"]: yaml_side(d) for d in declared["deployments"]} == {d.name: served(d) for d in built}
    assert {d["name"] for d in declared["deployments"] if not d["schedules"]} == {
        "orders-restore", "orders-verify-backup", "orders-recover", "catalog-check-now"}


def test_backup_too_old_alerts_start_the_backup_of_their_database() -> None:
    declared = {d["name"]: d.get("triggers", []) for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())[
        "deployments"]}
    started = {name: [(t["expect"], t["match"], t["posture"], t["threshold"]) for t in ts]
               for name, ts in declared.items() if ts}
    assert started == {
        "orders-full": [(["drkit.alert.firing"], {"prefect.resource.id": "drkit.database.orders",
                                                  "drkit.alertname": "DrkitFullBackupTooOld"}, "Reactive", 1)],
        "orders-log": [(["drkit.alert.firing"], {"prefect.resource.id": "drkit.database.orders",
                                                 "drkit.alertname": "DrkitLogBackupTooOld"}, "Reactive", 1)]}
    # repeats of a firing alert inside the window start nothing more
    assert declared["orders-log"][0]["within"] == 1800
    assert declared["orders-full"][0]["within"] == 6 * 3600


def test_writing_prefect_yaml_needs_no_prefect_server(tmp_path: Path) -> None:
    policy = tmp_path / "drkit.yaml"
    policy.write_text((ROOT / "examples" / "drkit.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    out = subprocess.run([str(Path(sys.executable).with_name("drkit")), "--config", str(policy), "deployments",
                          "--output", str(tmp_path / "prefect.yaml")],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stderr) == (0, ""), out.stderr  # no server started, nothing announced
    assert out.stdout == f"wrote {tmp_path / 'prefect.yaml'}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drkit.yaml", "prefect.yaml"]
    assert yaml.safe_load((tmp_path / "prefect.yaml").read_text())["deployments"]


def test_each_deployment_goes_to_its_databases_site_pool_or_the_control_pool() -> None:
    policy = load_policy(ROOT / "examples" / "two-sites.yaml")
    out = CliRunner().invoke(app, ["--config", str(ROOT / "examples" / "two-sites.yaml"), "deployments"])
    assert out.exit_code == 0, out.output
    declared = {d["name"]: d for d in yaml.safe_load(out.stdout)["deployments"]}
    assert {(policy.site_of(db), policy.replica_site_of(db)) for db in policy.databases} == {
        ("east", "west"), ("west", "east")}
    on_site = ("full", "diff", "log", "verify-chain", "dr-drill", "restore", "verify-backup")
    control = ("replica-lag", "recover", "failover", "failback")
    expected = {}
    for db in policy.databases:
        site_pool = policy.sites[policy.site_of(db)].work_pool
        expected.update({f"{db}-{kind}": site_pool for kind in on_site})
        expected.update({f"{db}-{kind}": "drkit-control" for kind in control})
    expected.update({n: "drkit-control" for n in ("retention-sweep", "catalog-check", "catalog-check-now")})
    assert {n: d["work_pool"]["name"] for n, d in declared.items()} == expected
    assert {n: d["work_pool"]["work_queue_name"] for n, d in declared.items() if d["work_pool"][
        "work_queue_name"] != "default"} == {"orders-log": "log", "crm-log": "log"}
    # the header says how to create every pool, the log queue ahead of `default`, and a worker per pool
    header = [line for line in out.stdout.splitlines() if line.startswith("#")]
    for pool in ("drkit-east", "drkit-west", "drkit-control"):
        assert f"#   prefect work-pool create {pool} --type process" in header
        assert f"#   DRKIT_HOME=$PWD prefect worker start --pool {pool}" in header
    assert [h for h in header if "work-queue create" in h] == [
        f"#   prefect work-queue create log --pool {p} --priority 1   (log backups first)"
        for p in ("drkit-east", "drkit-west")]


def test_the_single_site_default_keeps_everything_on_the_drkit_pool() -> None:
    declared = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert {d["work_pool"]["name"] for d in declared} == {"drkit"}
    assert {d["name"]: d["work_pool"]["work_queue_name"] for d in declared if d["name"].endswith("-log")} == {
        "orders-log": "log"}
