"""A tier's connection string can live in a Prefect Secret block instead of the worker's environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.blocks.system import Secret

from drkit.errors import ConfigError
from tasks.common import runtime
from tests.support.azurite import ACCOUNT_KEY, connection_string

pytestmark = [pytest.mark.slow]


def _policy(tmp_path: Path, block: str) -> str:
    path = tmp_path / "drkit.yaml"
    path.write_text(yaml.safe_dump({
        "tiers": {"local": {"store": "filesystem", "path": "local"},
                  "blob": {"store": "azure", "container": "backups", "connection_string_env": "DRKIT_T_AZ",
                           "secret_block": block}},
    }, sort_keys=False))
    return str(path)


def test_the_secret_block_fills_the_variable_and_never_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRKIT_T_AZ", raising=False)
    Secret(value=connection_string("127.0.0.1", 1)).save("drkit-test-azure", overwrite=True)
    rt = runtime(_policy(tmp_path, "drkit-test-azure"))
    store = rt.store("blob")
    assert "127.0.0.1:1" in store.describe()
    assert ACCOUNT_KEY not in store.describe() and ACCOUNT_KEY not in repr(store)
    with pytest.raises(ConfigError, match="no Prefect Secret block named 'missing-block'"):
        runtime(_policy(tmp_path, "missing-block"))
