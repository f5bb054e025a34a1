"""Policy variants of a sandbox with Azure tiers on Azurite: blob (Cool, 30 d) and archive (Archive, 7 y)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drkit.sandbox import Sandbox
from tests.support.policies import policy_variant

CONN_ENV = "AZURE_STORAGE_CONNECTION_STRING"


def azure_policy(sandbox: Sandbox, directory: Path, container: str, *, backup_tier: str = "local",
                 catalog: str | None = None, **db_changes: Any) -> Path:
    tiers = {
        "local": {"store": "filesystem", "path": str(directory / "local-tier"), "keep_days": 7},
        "blob": {"store": "azure", "container": container, "connection_string_env": CONN_ENV,
                 "access_tier": "Cool", "keep_days": 30},
        "archive": {"store": "azure", "container": container, "connection_string_env": CONN_ENV,
                    "access_tier": "Archive", "keep_days": 2555},
    }
    top: dict[str, Any] = {"tiers": tiers, "backup_tier": backup_tier}
    path = policy_variant(sandbox, directory, db_changes, **top)
    if catalog:
        import yaml
        data = yaml.safe_load(path.read_text())
        data["catalog"] = catalog
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
