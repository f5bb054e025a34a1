"""Debian's chromium and playwright-core (Node) for the browser tests: where they are, and what is missing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("DRKIT_CHROMIUM", "/usr/bin/chromium"))
PLAYWRIGHT = Path(os.environ.get("DRKIT_PLAYWRIGHT_DIR", ROOT / ".tools" / "playwright"))


def missing_tools() -> str | None:
    """Why a browser test cannot run here (with the fix), or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (run `make install`: scripts/install-browser.sh installs Debian's chromium)"
    if not (PLAYWRIGHT / "node_modules" / "playwright-core" / "package.json").exists():
        return f"playwright-core is missing from {PLAYWRIGHT} (run `make install`: scripts/install-browser.sh)"
    if shutil.which("node") is None:
        return "node is missing (run `make install`)"
    return None


def node_environ() -> dict[str, str]:
    """The environment for a node script driving chromium."""
    return {**os.environ, "DRKIT_CHROMIUM": str(CHROMIUM), "DRKIT_PLAYWRIGHT_DIR": str(PLAYWRIGHT)}
