"""prefect.yaml declares what `python -m deployments` builds from examples/drkit.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from deployments.serve import build_deployments
from drkit.config import load_policy

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_matches_the_policy_built_deployments() -> None:
    declared = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    policy = load_policy(ROOT / "examples" / "drkit.yaml")
    built = build_deployments(policy, "examples/drkit.yaml")
    assert {d["name"]: d["schedules"][0]["cron"] for d in declared} == {
        d.name: d.schedules[0].schedule.cron for d in built}
    assert {d["name"]: d.get("parameters") for d in declared} == {d.name: d.parameters for d in built}
    for d in declared:
        module, func = d["entrypoint"].split(":")
        mod = __import__(module.removesuffix(".py").replace("/", "."), fromlist=[func])
        assert hasattr(mod, func), d["entrypoint"]
