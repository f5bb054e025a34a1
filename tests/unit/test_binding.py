"""drkit.binding: a backup's key, its manifest and its backup.json are checked before anything is trusted."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from drkit.binding import open_descriptor, require_keys, stream_context
from drkit.catalog.records import BackupRecord
from drkit.engines.postgres.lsn import format_lsn
from drkit.engines.postgres.manifest import check_manifest
from drkit.errors import EncryptionKeyError, IntegrityError
from drkit.pipeline import EncryptionKey
from drkit.tiers.naming import DESCRIPTOR_OBJECT, object_key
from drkit.tiers.rebuild import descriptor_bytes

KEY = EncryptionKey.from_bytes(bytes(range(32)))
OTHER_KEY = EncryptionKey.from_bytes(bytes(range(1, 33)))
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def record(**changes: Any) -> BackupRecord:
    base = BackupRecord(
        id="app-full-1", database="app", kind="full", status="completed", base_id=None, timeline=1,
        start_lsn=0x3000028, end_lsn=0x3000138, start_wal="000000010000000000000003",
        end_wal="000000010000000000000003", started_at=T0, finished_at=T0, start_time=T0, end_time=T0,
        raw_bytes=100, stored_bytes=80, sha256="ab" * 32, format="drkit-pg-1", key_id=KEY.key_id, error=None,
        verified_at=None, meta={"segment_size": 16777216})
    return replace(base, **changes)


def full_manifest(rec: BackupRecord) -> dict[str, Any]:
    assert rec.start_lsn is not None and rec.end_lsn is not None
    return {"format": rec.format, "kind": rec.kind, "database": rec.database, "files": {}, "dirs": [],
            "start_lsn": format_lsn(rec.start_lsn), "stop_lsn": format_lsn(rec.end_lsn), "timeline": rec.timeline,
            "wal": [rec.start_wal], "base": rec.base_id}


# -- key ids ------------------------------------------------------------------------------------------


def test_a_backup_of_another_key_is_refused_in_one_line_naming_it_and_both_key_ids() -> None:
    good = record()
    bad = record(id="app-log-2", kind="log", key_id=OTHER_KEY.key_id)
    require_keys(KEY, [good])
    require_keys(KEY, [record(key_id=None)])  # native SQL Server backups record no key
    with pytest.raises(EncryptionKeyError) as info:
        require_keys(KEY, [good, bad, replace(bad, id="app-log-3")], key_env="DRKIT_BACKUP_KEY")
    msg = str(info.value)
    assert "\n" not in msg
    assert "app-log-2" in msg and OTHER_KEY.key_id in msg and KEY.key_id in msg
    assert "DRKIT_BACKUP_KEY" in msg and "1 more" in msg
    assert OTHER_KEY.key.hex() not in msg and KEY.key.hex() not in msg


# -- stream context -------------------------------------------------------------------------------------


def test_the_stream_context_is_the_objects_place_in_the_store() -> None:
    rec = record()
    assert stream_context(rec, "data.drk") == "app/app-full-1/data.drk" == object_key(rec, "data.drk")


# -- manifest against the catalog record ---------------------------------------------------------------


def test_a_manifest_that_matches_its_record_passes() -> None:
    rec = record()
    check_manifest(rec, full_manifest(rec))
    diff = record(id="app-diff-2", kind="diff", base_id="app-full-1")
    check_manifest(diff, full_manifest(diff))
    log = record(id="app-log-3", kind="log", start_wal="000000010000000000000004",
                 end_wal="000000010000000000000006", start_lsn=0x4000000, end_lsn=0x7000000)
    check_manifest(log, {"format": log.format, "kind": "log", "database": "app", "timeline": 1,
                         "segments": ["000000010000000000000004", "000000010000000000000005",
                                      "000000010000000000000006"], "history": [],
                         "start_lsn": "0/4000000", "end_lsn": "0/7000000"})


@pytest.mark.parametrize(("field", "value", "named"), [
    ("database", "billing", "database 'billing'"),
    ("kind", "diff", "kind 'diff'"),
    ("base", "app-full-0", "base 'app-full-0'"),
    ("stop_lsn", "0/4000000", "end LSN"),
    ("start_lsn", "0/2000028", "start LSN"),
    ("timeline", 2, "timeline 2"),
    ("wal", ["000000010000000000000009"], "first WAL segment"),
])
def test_a_manifest_that_describes_something_else_is_refused_by_name(field: str, value: Any, named: str) -> None:
    rec = record()
    manifest = full_manifest(rec) | {field: value}
    with pytest.raises(IntegrityError) as info:
        check_manifest(rec, manifest)
    msg = str(info.value)
    assert msg.startswith("backup app-full-1's data.drk does not match its catalog record") and named in msg
    assert "\n" not in msg


# -- backup.json ---------------------------------------------------------------------------------------


def test_a_sealed_descriptor_opens_with_its_key_and_carries_no_secret() -> None:
    rec = record()
    raw = descriptor_bytes(rec, KEY)
    fields = open_descriptor(raw, KEY, "app/app-full-1/backup.json")
    assert fields["id"] == rec.id and fields["status"] == "completed" and fields["sha256"] == rec.sha256
    assert "mac" not in fields and "mac_key_id" not in fields
    body = json.loads(raw)
    assert body["descriptor_version"] == 2 and body["mac_key_id"] == KEY.key_id and len(body["mac"]) == 64
    for secret in (KEY.key.hex(), KEY.key.hex().upper()):
        assert secret not in raw.decode()


@pytest.mark.parametrize(("field", "value"), [("status", "verified"), ("sha256", "cd" * 32), ("stored_bytes", 81),
                                              ("kind", "diff"), ("meta", {})])
def test_an_edited_descriptor_fails_authentication(field: str, value: Any) -> None:
    body = json.loads(descriptor_bytes(record(), KEY))
    body[field] = value
    with pytest.raises(IntegrityError, match="app/app-full-1/backup.json failed authentication"):
        open_descriptor(json.dumps(body).encode(), KEY, "app/app-full-1/backup.json")


def test_a_descriptor_is_not_trusted_without_its_mac_or_with_another_key() -> None:
    body = json.loads(descriptor_bytes(record(), KEY))
    unsigned = {k: v for k, v in body.items() if k not in ("mac", "mac_key_id")} | {"descriptor_version": 1}
    with pytest.raises(IntegrityError, match="without the MAC"):
        open_descriptor(json.dumps(unsigned).encode(), KEY, "x/backup.json")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        open_descriptor(b"{not json", KEY, "x/backup.json")
    with pytest.raises(EncryptionKeyError) as info:
        open_descriptor(json.dumps(body).encode(), OTHER_KEY, "app/app-full-1/backup.json", key_env="K")
    msg = str(info.value)
    assert "app/app-full-1/backup.json" in msg and KEY.key_id in msg and OTHER_KEY.key_id in msg and "(K)" in msg


def test_a_descriptor_is_never_sealed_with_another_key_than_its_backups() -> None:
    with pytest.raises(EncryptionKeyError, match="left as it is"):
        descriptor_bytes(record(key_id=OTHER_KEY.key_id), KEY)
    assert open_descriptor(descriptor_bytes(record(key_id=None), KEY), KEY, DESCRIPTOR_OBJECT)["key_id"] is None


def test_the_mac_is_the_documented_hmac_sha256_under_an_hkdf_subkey() -> None:
    body = json.loads(descriptor_bytes(record(), KEY))
    mac = body.pop("mac")
    subkey = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"drkit backup.json v2").derive(KEY.key)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert hmac.new(subkey, canonical, hashlib.sha256).hexdigest() == mac
