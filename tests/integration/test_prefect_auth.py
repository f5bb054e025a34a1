"""The Prefect server run with an API auth string (README "Approvals": protect the API).

A real `prefect server start` with PREFECT_SERVER_API_AUTH_STRING refuses clients without the string: the
`drkit` command says so in one line (exit 1); with PREFECT_API_AUTH_STRING set it works.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.prefect_process import PrefectProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]
DRKIT = Path(sys.executable).with_name("drkit")


def test_drkit_needs_the_api_auth_string_of_a_protected_server(tmp_path: Path) -> None:
    auth = f"drkit:{secrets.token_urlsafe(16)}"
    server = PrefectProcess(server_env={"PREFECT_SERVER_API_AUTH_STRING": auth})
    try:
        server.start()
        assert httpx.post(f"{server.api_url}/flow_runs/filter", json={}, timeout=5).status_code == 401

        def drkit(**env: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(DRKIT), "approvals", "--json"], cwd=tmp_path, capture_output=True,
                                  text=True, timeout=120, env=server.environ(**env))

        refused = drkit()
        assert refused.returncode == 1 and refused.stdout == ""
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "PREFECT_API_AUTH_STRING" in lines[0], \
            refused.stderr
        assert auth.split(":")[1] not in refused.stderr

        allowed = drkit(PREFECT_API_AUTH_STRING=auth)
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.strip() == "[]"
    finally:
        server.close()
