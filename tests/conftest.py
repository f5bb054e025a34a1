"""Fixtures that start real components: a PostgreSQL primary (system binaries) wired to drkit."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from drkit.config import load_policy
from drkit.runtime import Runtime
from drkit.sandbox import KEY_ENV, Sandbox, create_sandbox


def _scratch(prefix: str) -> Path:
    # pytest's tmp_path lives under a 0700 directory the postgres OS user cannot enter.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = _scratch("drkit-t-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    root = _scratch("drkit-sb-")
    sb = create_sandbox(root / "world", fsync=False)
    try:
        yield sb
    finally:
        sb.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def rt(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    monkeypatch.setenv(KEY_ENV, sandbox.key_b64)
    runtime = Runtime(load_policy(sandbox.policy_path))
    yield runtime
    runtime.close()
