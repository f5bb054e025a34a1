"""Without PREFECT_API_URL, the first `drkit` command that runs a flow starts a local Prefect server beside
the policy file (and says so on stderr); later commands reuse it; `drkit server stop` stops it.

Real processes and a real Prefect server, as an operator would see them.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli.prefect_server import LOCAL_DIR, api_request, healthy, recorded, stop_local_server

DRKIT = str(Path(sys.executable).with_name("drkit"))
pytestmark = pytest.mark.slow


def drkit(policy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(policy.parent / "home"),  # no profile naming an API
                "DRKIT_BACKUP_KEY": base64.b64encode(bytes(32)).decode()})
    return subprocess.run([DRKIT, "--config", str(policy), *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_flow_commands_start_one_local_server_and_reuse_it(tmp_path: Path) -> None:
    policy = tmp_path / "drkit.yaml"
    policy.write_text(yaml.safe_dump({
        "catalog": "sqlite:///catalog.db",
        "tiers": {"local": {"store": "filesystem", "path": "local"}},
        "databases": {"app": {"engine": "postgres", "dsn": "postgresql://127.0.0.1:1/app",
                              "data_dir": str(tmp_path / "pg")}},
    }))
    home = tmp_path / LOCAL_DIR
    try:
        first = drkit(policy, "retention", "apply")
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip().endswith("0 change(s)")
        known = recorded(home)
        assert known is not None and healthy(known.url)
        assert f"starting a local Prefect server at {known.url.removesuffix('/api')}" in first.stderr
        assert "drkit server stop" in first.stderr

        second = drkit(policy, "retention", "apply")
        assert second.returncode == 0, second.stderr
        assert "starting" not in second.stderr  # reused
        runs = api_request(known.url, "POST", "flow_runs/filter", {})
        assert len([r for r in runs if r["state_type"] == "COMPLETED"]) == 2  # both ran on that server

        status = drkit(policy, "server", "status", "--json")
        assert json.loads(status.stdout)["local_running"] is True

        stopped = drkit(policy, "server", "stop")
        assert stopped.returncode == 0 and "stopped the local server" in stopped.stdout
        assert not healthy(known.url, timeout=0.5) and recorded(home) is None
    finally:
        stop_local_server(home)
