"""Defect: the catalog said "completed" for a backup whose objects were deleted. The record is now completed
last, once every object exists and is labelled; a step that fails before fails the backup with its own error."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

from drkit.config import load_policy
from drkit.engines import open_engine
from drkit.errors import StoreError
from drkit.runtime import Runtime
from drkit.sandbox import KEY_ENV, Sandbox
from tests.support.azure_policy import CONN_ENV, azure_policy
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, azurite  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _sas_connection_string(az: Azurite, *, tags: bool) -> str:
    sas = generate_account_sas(
        ACCOUNT, ACCOUNT_KEY, resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(read=True, write=True, delete=True, list=True, create=True, add=True,
                                         tag=tags, filter_by_tags=tags),
        expiry=datetime.now(UTC) + timedelta(hours=1))
    return f"BlobEndpoint={az.blob_endpoint};SharedAccessSignature={sas}"


def test_a_sas_without_the_tag_permission_fails_the_backup_with_azures_error_and_completes_nothing(
    sandbox: Sandbox, azurite: Azurite, scratch: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv(KEY_ENV, sandbox.key_b64)
    monkeypatch.setenv(CONN_ENV, _sas_connection_string(azurite, tags=False))
    cfg = azure_policy(sandbox, scratch, f"t{uuid.uuid4().hex[:12]}", backup_tier="blob",
                       catalog=f"sqlite:///{scratch}/catalog.db")
    rt = Runtime(load_policy(cfg))
    try:
        with pytest.raises(StoreError) as failed:
            open_engine(rt, "app").take_backup("full")
        assert "cannot set the tags of" in str(failed.value) and "access denied" in str(failed.value)
        (row,) = rt.catalog.list_backups("app")
        assert row.status == "failed" and row.error is not None and "cannot set the tags of" in row.error
        assert rt.catalog.copies(row.id) == []
        assert list(rt.store("blob").list(f"app/{row.id}/")) == []
    finally:
        rt.close()

    monkeypatch.setenv(CONN_ENV, _sas_connection_string(azurite, tags=True))
    rt = Runtime(load_policy(cfg))
    try:
        done = open_engine(rt, "app").take_backup("full")
        assert done.status == "completed"
        store = rt.store("blob")
        assert list(store.list(f"app/{done.id}/")) == [f"app/{done.id}/{n}"
                                                      for n in ("backup.json", "data.drk", "manifest.drk")]
        labels = store.labels()
        assert labels is not None and labels.tags(f"app/{done.id}/data.drk")["backup"] == done.id
        (copy,) = rt.catalog.copies(done.id)
        assert (copy.tier, copy.status, copy.stored_bytes) == ("blob", "complete", store.size(copy.store_key))
    finally:
        rt.close()


def test_a_deep_check_lists_a_shared_container_once_and_leaves_archived_objects_unread(
    sandbox: Sandbox, azurite: Azurite, scratch: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from drkit.catalog_check import run_check
    from drkit.tiers.moves import copy_backup

    monkeypatch.setenv(KEY_ENV, sandbox.key_b64)
    monkeypatch.setenv(CONN_ENV, azurite.connection_string)
    cfg = azure_policy(sandbox, scratch, f"t{uuid.uuid4().hex[:12]}", catalog=f"sqlite:///{scratch}/catalog.db")
    rt = Runtime(load_policy(cfg))
    try:
        done = open_engine(rt, "app").take_backup("full")
        copy_backup(rt, done.id, "local", "blob")
        copy_backup(rt, done.id, "blob", "archive")  # one container: the blob now sits in the Archive tier
        report = run_check(rt, deep=True)
        assert report.clean, report.as_json()
        assert dict(report.checked)["stores"] == 2  # local, and the container shared by blob and archive
        assert dict(report.checked)["copies"] == 3
    finally:
        rt.close()
