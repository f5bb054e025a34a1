"""FilesystemStore.files and cleanup_partials(prefix=...): what a catalog check and a dead run's cleanup see."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from drkit.storage import FilesystemStore


def _partial(root: Path, directory: str, name: str, age: float = 0) -> Path:
    path = root / directory / f".{name}.part-{'a' * 32}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half")
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_files_lists_objects_and_partial_writes_with_sizes(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    with store.writer("app/b1/data.drk") as fh:
        fh.write(b"12345")
    _partial(tmp_path, "app/b2", "data.drk")
    found = {(f.key, f.size, f.partial) for f in store.files()}
    assert found == {("app/b1/data.drk", 5, False), (f"app/b2/.data.drk.part-{'a' * 32}", 4, True)}
    assert [f.key for f in store.files("app/b1/")] == ["app/b1/data.drk"]
    assert list(store.list()) == ["app/b1/data.drk"]  # partials stay invisible to readers


def test_cleanup_with_a_prefix_removes_only_that_backups_partials(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    dead = _partial(tmp_path, "app/dead", "data.drk")
    alive = _partial(tmp_path, "app/alive", "data.drk")
    assert store.cleanup_partials(0, prefix="app/dead/") == 1
    assert not dead.exists() and alive.exists()


@pytest.mark.parametrize(("age", "removed"), [(7200, 1), (60, 0)])
def test_cleanup_leaves_writes_younger_than_the_threshold(tmp_path: Path, age: float, removed: int) -> None:
    store = FilesystemStore(tmp_path)
    _partial(tmp_path, "app/x", "manifest.drk", age=age)
    assert store.cleanup_partials(3600) == removed
