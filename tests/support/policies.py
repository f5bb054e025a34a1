"""Policy-file variants of a sandbox's policy (same catalog, tiers and server unless changed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from drkit.sandbox import Sandbox


def policy_variant(sandbox: Sandbox, directory: Path, db_changes: dict[str, Any] | None = None,
                   **top: Any) -> Path:
    data = yaml.safe_load(sandbox.policy_path.read_text())
    data["catalog"] = f"sqlite:///{sandbox.root}/catalog.db"
    if "tiers" not in top:
        data["tiers"]["local"]["path"] = str(sandbox.root / "backups" / "local")
    data["scratch_dir"] = str(sandbox.root / "scratch")
    data["databases"][sandbox.db].update(db_changes or {})
    data.update(top)
    path = directory / "drkit.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
