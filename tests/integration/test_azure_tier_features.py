"""An Azure tier (Azurite) does what its store declares: labels on the data object, Archive, rehydration.

The filesystem side of the same behaviour (nothing to rehydrate, no labels) is in
tests/unit/test_storage_features.py.
"""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import pytest

from drkit.backup import begin, finish_backup, write_encrypted
from drkit.config import parse_policy
from drkit.runtime import Runtime
from drkit.storage.azure import AZURE_FEATURES, ObjectArchivedError
from drkit.tiers.moves import archived_keys, copy_backup, move_backup, rearchive, rehydrated, start_rehydration
from drkit.tiers.naming import DATA_OBJECT, object_key
from tests.support.azurite import Azurite, azurite  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY, CONN = "DRKIT_BACKUP_KEY", "AZURE_STORAGE_CONNECTION_STRING"


def test_an_azure_tier_labels_the_backup_then_archives_rehydrates_and_rearchives_it(
    azurite: Azurite, tmp_path: Path  # noqa: F811
) -> None:
    container = f"t{uuid.uuid4().hex[:12]}"
    azure = {"store": "azure", "container": container, "connection_string_env": CONN}
    policy = parse_policy({
        "catalog": f"sqlite:///{tmp_path}/catalog.db", "backup_tier": "blob",
        "tiers": {"local": {"store": "filesystem", "path": str(tmp_path / "local")},
                  "blob": {**azure, "access_tier": "Cool"},
                  "archive": {**azure, "access_tier": "Archive", "rehydrate_to": "Hot"}},
    }, base_dir=tmp_path)
    rt = Runtime(policy, {KEY: base64.b64encode(os.urandom(32)).decode(), CONN: azurite.connection_string})
    try:
        blob = rt.store("blob")
        assert blob.features == AZURE_FEATURES
        labels, access = blob.labels(), rt.store("archive").access_tiers()
        assert labels is not None and access is not None

        rec = begin(rt, "app", "full")
        _, data = write_encrypted(rt, "blob", object_key(rec, DATA_OBJECT), lambda w: w.write(b"x" * 5000))
        done = finish_backup(rt, "blob", rec, data, {"format": "test"}, timeline=1, lineage="1",
                             start_lsn=50331688, end_lsn=50331900, start_wal=None, end_wal=None,
                             start_time=None, end_time=None)
        key = object_key(done, DATA_OBJECT)

        # The data object describes the backup without the catalog: index tags and metadata.
        assert labels.tags(key) == {"database": "app", "kind": "full", "backup": done.id}
        meta = labels.metadata(key)
        assert (meta["drkit_backup"], meta["drkit_lsn_range"], meta["drkit_lineage"]) == (
            done.id, "50331688-50331900", "1")
        assert meta["drkit_sha256"] == done.sha256

        # A copy to the filesystem tier is readable at once: nothing there to rehydrate.
        copy_backup(rt, done.id, "blob", "local")
        assert archived_keys(rt, "local", [key]) == []

        # Retention moves it to the archive tier: the same blob, now in the Archive access tier.
        move_backup(rt, done.id, "blob", "archive")
        assert access.get_tier(key).tier == "Archive"
        assert archived_keys(rt, "archive", [key]) == [key]
        assert not rehydrated(rt, "archive", key)
        with pytest.raises(ObjectArchivedError), rt.store("archive").reader(key):
            pass

        # A restore from it rehydrates first (Azurite completes that at once), reads, then re-archives.
        said = start_rehydration(rt, "archive", key)
        assert said.startswith(f"{key}: rehydrating to Hot (Azure says rehydration takes up to 15 hours")
        assert rehydrated(rt, "archive", key) and access.get_tier(key).tier == "Hot"
        with rt.store("archive").reader(key) as fh:
            assert len(fh.read()) == done.stored_bytes
        rearchive(rt, "archive", key)
        assert archived_keys(rt, "archive", [key]) == [key]
    finally:
        rt.close()
