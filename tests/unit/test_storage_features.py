"""Stores declare what they can do beyond the core operations; tier code follows the declaration.

A filesystem declares nothing: its objects are always readable, so a restore from it never waits for a
rehydration, and it keeps no labels beside the three objects of a backup. An Azure store declares access
tiers, rehydration, metadata and index tags (exercised against Azurite in
tests/integration/test_azure_tier_features.py).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from drkit.backup import begin, finish_backup, write_encrypted
from drkit.catalog.records import BackupRecord
from drkit.config import parse_policy
from drkit.errors import StoreError
from drkit.runtime import Runtime
from drkit.storage import NO_FEATURES, FilesystemStore, Store
from drkit.storage.azure import AZURE_FEATURES, AzureStore
from drkit.tiers.moves import archived_keys, copy_backup, rearchive, rehydrated, start_rehydration
from drkit.tiers.naming import DATA_OBJECT, blob_labels, object_key
from tests.support.azurite import connection_string

KEY = "DRKIT_BACKUP_KEY"


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    policy = parse_policy({
        "catalog": f"sqlite:///{tmp_path}/catalog.db",
        "tiers": {"local": {"store": "filesystem", "path": str(tmp_path / "local")},
                  # an access tier set on a filesystem tier by mistake: there is no such thing on disk
                  "cold": {"store": "filesystem", "path": str(tmp_path / "cold"), "access_tier": "Archive"}},
    }, base_dir=tmp_path)
    return Runtime(policy, {KEY: base64.b64encode(os.urandom(32)).decode()})


def _backup(rt: Runtime, tier: str) -> BackupRecord:
    rec = begin(rt, "app", "full")
    _, data = write_encrypted(rt, tier, object_key(rec, DATA_OBJECT), lambda w: w.write(b"x" * 1000))
    return finish_backup(rt, tier, rec, data, {"format": "test"}, timeline=1, lineage="1", start_lsn=50331688,
                         end_lsn=50331900, start_wal=None, end_wal=None, start_time=None, end_time=None)


def test_each_store_declares_its_features_and_hands_out_exactly_those_interfaces(tmp_path: Path) -> None:
    fs = FilesystemStore(tmp_path, name="local")
    # no network call: the client is only built
    az = AzureStore(BlobServiceClient.from_connection_string(connection_string("127.0.0.1", 1)), "backups",
                    name="blob")
    stores: list[Store] = [fs, az]
    assert fs.features == NO_FEATURES and fs.access_tiers() is None and fs.labels() is None
    assert az.features == AZURE_FEATURES
    assert (az.features.access_tiers, az.features.rehydration, az.features.metadata, az.features.index_tags) == (
        True, True, True, True)
    for store in stores:
        assert (store.access_tiers() is not None) == store.features.access_tiers
        assert (store.labels() is not None) == (store.features.metadata or store.features.index_tags)


def test_a_filesystem_tier_has_nothing_to_rehydrate_or_rearchive(rt: Runtime) -> None:
    done = _backup(rt, "local")
    copy_backup(rt, done.id, "local", "cold")
    key = object_key(done, DATA_OBJECT)

    # A restore from either tier asks for no rehydration and finds every piece readable at once.
    assert archived_keys(rt, "local", [key]) == [] and archived_keys(rt, "cold", [key]) == []
    assert rehydrated(rt, "cold", key)
    with pytest.raises(StoreError, match=r"tier 'cold' .* has no access tiers: .*nothing to rehydrate"):
        start_rehydration(rt, "cold", key)
    # "Re-archiving" after the read leaves the copy as it was, readable.
    rearchive(rt, "cold", key)
    with rt.store("cold").reader(key) as fh:
        assert len(fh.read()) == rt.store("cold").size(key)


def test_a_filesystem_keeps_no_labels_and_labels_name_positions_in_any_engines_terms(rt: Runtime) -> None:
    done = _backup(rt, "local")
    # finish_backup labelled the copy: on a filesystem that writes nothing beside the three objects
    assert sorted(rt.store("local").list()) == [f"app/{done.id}/{n}"
                                               for n in ("backup.json", "data.drk", "manifest.drk")]
    meta, tags = blob_labels(done)
    assert meta["drkit_lsn_range"] == "50331688-50331900"  # plain decimal, not PostgreSQL's 0/3000028
    assert meta["drkit_lineage"] == "1" and "drkit_timeline" not in meta
    assert tags == {"database": "app", "kind": "full", "backup": done.id}
