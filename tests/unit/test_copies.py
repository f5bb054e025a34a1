"""``drkit.copies``: the next good copy of a backup, and recording a copy found missing or corrupt."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from drkit.catalog.records import BackupRecord
from drkit.config import parse_policy
from drkit.copies import CopyPicker, complete_copies, record_damage
from drkit.errors import IntegrityError, ObjectNotFoundError, RestoreError, StoreError
from drkit.plans import RestorePiece
from drkit.runtime import Runtime

KEY = "DRKIT_BACKUP_KEY"


def _runtime(tmp_path: Path, tiers: dict[str, Any]) -> Runtime:
    policy = parse_policy({"catalog": f"sqlite:///{tmp_path}/catalog.db", "tiers": tiers}, base_dir=tmp_path)
    return Runtime(policy, {KEY: base64.b64encode(os.urandom(32)).decode(), "CONN": "UseDevelopmentStorage=true"})


def _backup(rt: Runtime, tiers: list[str], size: int = 100) -> BackupRecord:
    rec = rt.catalog.begin_backup("app", "full")
    key = f"app/{rec.id}/data.drk"
    done = rt.catalog.complete_backup(rec.id, raw_bytes=size, stored_bytes=size, sha256="ab" * 32, format="t",
                                      key_id=None, timeline=1, start_lsn=None, end_lsn=None, start_wal=None,
                                      end_wal=None, start_time=None, end_time=None,
                                      copies=[(tiers[0], key, size, "ab" * 32)])
    for tier in tiers[1:]:
        rt.catalog.add_copy(rec.id, tier, key, status="complete", stored_bytes=size, sha256="ab" * 32)
    for tier in tiers:
        if rt.policy.tiers[tier].store == "filesystem":
            with rt.store(tier).writer(key) as fh:
                fh.write(b"x" * size)
    return done


def _piece(b: BackupRecord, tier: str) -> RestorePiece:
    return RestorePiece(backup=b, tier=tier, store_key=f"app/{b.id}/data.drk", stored_bytes=b.stored_bytes,
                        sha256=b.sha256)


def test_a_damaged_copy_is_marked_with_every_tier_sharing_its_objects_and_audited(tmp_path: Path) -> None:
    azure = {"store": "azure", "container": "c", "connection_string_env": "CONN"}
    rt = _runtime(tmp_path, {"local": {"store": "filesystem", "path": "local"},
                             "blob": {**azure, "access_tier": "Cool"}, "archive": {**azure, "access_tier": "Archive"}})
    b = _backup(rt, ["local", "blob", "archive"])
    marked = record_damage(rt, b, "blob", "corrupt", "frame 3 failed authentication", actor="t", found_by="test")
    assert sorted(marked) == ["archive", "blob"]  # one container, two access tiers: the same objects
    assert {c.tier: c.status for c in rt.catalog.copies(b.id)} == {
        "local": "complete", "blob": "corrupt", "archive": "corrupt"}
    events = rt.catalog.audit_events(action="copy.corrupt")
    assert sorted(e.detail["tier"] for e in events) == ["archive", "blob"]
    assert all(e.subject == b.id and e.detail["reason"] == "frame 3 failed authentication" for e in events)
    assert [c.tier for c in complete_copies(rt, b.id)] == ["local"]
    with pytest.raises(ValueError):
        record_damage(rt, b, "local", "deleted", "no", actor="t", found_by="test")


@pytest.fixture
def two_disks(tmp_path: Path) -> Runtime:
    return _runtime(tmp_path, {"local": {"store": "filesystem", "path": "local"},
                               "offsite": {"store": "filesystem", "path": "offsite"}})


def test_pick_skips_a_missing_copy_records_it_and_says_so(two_disks: Runtime) -> None:
    rt = two_disks
    b = _backup(rt, ["local", "offsite"])
    rt.store("local").delete(f"app/{b.id}/data.drk")
    seen: list[str] = []
    picker = CopyPicker(rt, actor="t", found_by="test", on_warning=seen.append)
    copy = picker.pick(_piece(b, "local"))
    assert copy.tier == "offsite" and picker.read_from == {b.id: "offsite"}
    assert {c.tier: c.status for c in rt.catalog.copies(b.id)} == {"local": "missing", "offsite": "complete"}
    assert seen == picker.warnings and len(seen) == 1
    assert "the local copy is missing" in seen[0] and "recorded missing" in seen[0]


def test_pick_prefers_the_plans_tier_and_a_size_mismatch_is_corrupt(two_disks: Runtime) -> None:
    rt = two_disks
    b = _backup(rt, ["local", "offsite"])
    assert CopyPicker(rt, actor="t", found_by="test").pick(_piece(b, "offsite")).tier == "offsite"
    with rt.store("offsite").writer(f"app/{b.id}/data.drk") as fh:
        fh.write(b"short")
    picker = CopyPicker(rt, actor="t", found_by="test")
    assert picker.pick(_piece(b, "offsite")).tier == "local"
    assert {c.tier: c.status for c in rt.catalog.copies(b.id)} == {"local": "complete", "offsite": "corrupt"}


def test_no_copy_left_names_each_one_and_only_damage_counts_as_damage(two_disks: Runtime) -> None:
    rt = two_disks
    b = _backup(rt, ["local", "offsite"])
    picker = CopyPicker(rt, actor="t", found_by="test")
    first = picker.pick(_piece(b, "local"))
    picker.failed(first, IntegrityError("frame 2 failed authentication"))  # found mid-read
    second = picker.pick(_piece(b, "local"))
    assert second.tier == "offsite"
    picker.failed(second, StoreError("connection reset"))  # the store failed: proves nothing about the copy
    with pytest.raises(RestoreError) as info:
        picker.pick(_piece(b, "local"))
    message = str(info.value)
    assert "\n" not in message and f"no readable copy of full {b.id}" in message
    assert "local: corrupt (frame 2" in message and "offsite: unreadable (connection reset)" in message
    assert {c.tier: c.status for c in rt.catalog.copies(b.id)} == {"local": "corrupt", "offsite": "complete"}
    assert not picker.damaged_only(b.id)
    with pytest.raises(KeyError):
        picker.failed(second, KeyError("not about the copy"))  # re-raised as it is


def test_missing_only_is_damage_only(two_disks: Runtime) -> None:
    rt = two_disks
    b = _backup(rt, ["local"])
    picker = CopyPicker(rt, actor="t", found_by="test")
    picker.failed(picker.pick(_piece(b, "local")), ObjectNotFoundError("gone"))
    with pytest.raises(RestoreError, match="local: missing"):
        picker.pick(_piece(b, "local"))
    assert picker.damaged_only(b.id)
