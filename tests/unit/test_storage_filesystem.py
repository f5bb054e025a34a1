"""Tests for FilesystemStore: an object is either completely there or not there at all.

These are the properties backups and retention depend on: failed writes leave
nothing behind, overwrites never expose half-written data, keys cannot escape
the store root, and stale temporary files can be cleaned up.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from drkit.errors import ObjectNotFoundError, StoreError
from drkit.storage import FilesystemStore, Store, validate_key


@pytest.fixture
def store(tmp_path: Path) -> FilesystemStore:
    return FilesystemStore(tmp_path / "tier", name="local")


def put(store: FilesystemStore, key: str, data: bytes) -> None:
    with store.writer(key) as f:
        f.write(data)


def get(store: FilesystemStore, key: str) -> bytes:
    with store.reader(key) as f:
        return f.read()


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_filesystem_store_is_a_store(store: FilesystemStore) -> None:
    assert isinstance(store, Store)
    assert store.name == "local"


def test_write_read_exists_size_delete(store: FilesystemStore) -> None:
    assert not store.exists("db1/full/0001.drk")
    put(store, "db1/full/0001.drk", b"backup bytes")
    assert store.exists("db1/full/0001.drk")
    assert get(store, "db1/full/0001.drk") == b"backup bytes"
    assert store.size("db1/full/0001.drk") == len(b"backup bytes")
    assert (store.root / "db1" / "full" / "0001.drk").read_bytes() == b"backup bytes"
    store.delete("db1/full/0001.drk")
    assert not store.exists("db1/full/0001.drk")
    store.delete("db1/full/0001.drk")  # idempotent
    store.delete("never/existed")


def test_large_object_round_trips(store: FilesystemStore) -> None:
    data = os.urandom(5 * 1024 * 1024 + 7)
    with store.writer("big") as f:
        for i in range(0, len(data), 65536):
            f.write(data[i : i + 65536])
    assert get(store, "big") == data
    assert store.size("big") == len(data)


def test_list_is_sorted_and_filtered_by_prefix(store: FilesystemStore) -> None:
    assert list(store.list()) == []  # root does not exist yet
    for key in ["db10/a", "db1/wal/0002", "db1/wal/0001", "db1/full/x", "top"]:
        put(store, key, key.encode())
    assert list(store.list()) == ["db1/full/x", "db1/wal/0001", "db1/wal/0002", "db10/a", "top"]
    assert list(store.list("db1/")) == ["db1/full/x", "db1/wal/0001", "db1/wal/0002"]
    assert list(store.list("db1")) == ["db1/full/x", "db1/wal/0001", "db1/wal/0002", "db10/a"]
    assert list(store.list("db1/wal/000")) == ["db1/wal/0001", "db1/wal/0002"]
    assert list(store.list("nothing/")) == []


def test_missing_objects_raise_object_not_found(store: FilesystemStore) -> None:
    put(store, "dir/file", b"x")
    for key in ["missing", "dir", "dir/file/deeper"]:
        with pytest.raises(ObjectNotFoundError, match=repr(key)), store.reader(key):
            pass
        with pytest.raises(ObjectNotFoundError):
            store.size(key)
        assert not store.exists(key)


def test_object_is_invisible_until_the_writer_exits(store: FilesystemStore) -> None:
    with store.writer("db/obj") as f:
        f.write(b"half")
        assert not store.exists("db/obj")
        assert list(store.list()) == []
        with pytest.raises(ObjectNotFoundError):
            store.size("db/obj")
    assert list(store.list()) == ["db/obj"]


def test_exception_in_writer_leaves_nothing_behind(store: FilesystemStore) -> None:
    with pytest.raises(RuntimeError, match="dump failed"), store.writer("db/full/1") as f:
        f.write(os.urandom(100_000))
        raise RuntimeError("dump failed")
    assert not store.exists("db/full/1")
    assert list(store.list()) == []
    assert all_files(store.root) == []  # not even a hidden .part file
    with pytest.raises(ObjectNotFoundError):
        get(store, "db/full/1")


def test_failed_overwrite_keeps_the_old_object(store: FilesystemStore) -> None:
    put(store, "k", b"old complete backup")
    with pytest.raises(KeyboardInterrupt), store.writer("k") as f:
        f.write(b"new but partial")
        raise KeyboardInterrupt
    assert get(store, "k") == b"old complete backup"
    assert all_files(store.root) == ["k"]


def test_overwrite_is_atomic_for_readers(store: FilesystemStore) -> None:
    old = os.urandom(300_000)
    new = os.urandom(200_000)
    put(store, "k", old)
    with store.reader("k") as r:
        first = r.read(1000)
        put(store, "k", new)  # replaced while a reader has the old one open
        rest = r.read()
    assert first + rest == old
    assert get(store, "k") == new
    assert all_files(store.root) == ["k"]


def test_caller_closing_the_file_still_commits(store: FilesystemStore) -> None:
    with store.writer("k") as f:
        f.write(b"data")
        f.close()
    assert get(store, "k") == b"data"


def test_commit_failure_is_a_store_error_and_leaves_nothing(store: FilesystemStore) -> None:
    put(store, "a/b", b"x")  # "a" is now a directory: no object can be committed at key "a"
    with pytest.raises(StoreError, match="'a'"):
        put(store, "a", b"y")
    assert all_files(store.root) == ["a/b"]


@pytest.mark.parametrize(
    "key",
    ["", "/etc/passwd", "..", "../escape", "a/../../b", "a/./b", "a//b", "a/", "a\\b", "a\x00b", "./a"],
)
def test_bad_keys_are_refused_naming_the_key(store: FilesystemStore, key: str) -> None:
    with pytest.raises(StoreError) as info:
        validate_key(key)
    assert repr(key) in str(info.value)
    with pytest.raises(StoreError, match="invalid object key"), store.writer(key):
        pass
    for call in (store.exists, store.size, store.delete):
        with pytest.raises(StoreError, match="invalid object key"):
            call(key)
    with pytest.raises(StoreError, match="invalid object key"), store.reader(key):
        pass
    assert not (store.root.parent / "escape").exists()


def test_good_keys_are_accepted() -> None:
    for key in ["a", "db1/full/2024-05-01T00:00:00Z.tar.drk", ".hidden", "a..b", "..a/b"]:
        assert validate_key(key) == key


def test_keys_that_look_like_partials_are_refused(store: FilesystemStore) -> None:
    with pytest.raises(StoreError, match="reserved"):
        put(store, "db/.x.part-" + "a" * 32, b"")


@pytest.mark.parametrize("umask", [0o002, 0o077])
def test_permissions_do_not_depend_on_umask(store: FilesystemStore, umask: int) -> None:
    old_umask = os.umask(umask)
    try:
        put(store, "db/full/1", b"secret-ish")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((store.root / "db/full/1").stat().st_mode) == 0o640
    for d in (store.root, store.root / "db", store.root / "db/full"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o750


def test_cleanup_partials_removes_only_stale_temp_files(store: FilesystemStore) -> None:
    put(store, "db/keep", b"committed")
    stale = store.root / "db" / (".obj.part-" + "1" * 32)
    fresh = store.root / "db" / (".obj.part-" + "2" * 32)
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"still being written")
    hour_ago = time.time() - 7200
    os.utime(stale, (hour_ago, hour_ago))
    assert list(store.list()) == ["db/keep"]  # partials are never listed
    assert store.cleanup_partials(older_than_seconds=3600) == 1
    assert not stale.exists() and fresh.exists()
    assert store.cleanup_partials(older_than_seconds=0) == 1
    assert all_files(store.root) == ["db/keep"]
    assert FilesystemStore(store.root / "absent").cleanup_partials() == 0


def test_describe_names_the_tier_and_location(store: FilesystemStore) -> None:
    text = store.describe()
    assert "local" in text and str(store.root) in text
