"""Tier movement and retention through the Prefect API, on Azurite, under a simulated clock."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prefect import flow

from drkit.config import load_policy
from drkit.engines import open_engine
from drkit.engines.postgres.verify import verify_backup
from drkit.runtime import Runtime
from drkit.sandbox import KEY_ENV, Sandbox
from drkit.storage.azure import ObjectArchivedError
from drkit.tiers.naming import DATA_OBJECT, object_key
from flows.restore import restore_point_in_time
from flows.retention import retention_sweep
from tasks.backup import base_backup
from tests.support.azure_policy import CONN_ENV, azure_policy
from tests.support.azurite import Azurite, azurite, connection_string  # noqa: F401 - the fixture
from tests.support.pgdata import connect
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _tiers_of(rt: Runtime, backup_id: str) -> set[str]:
    return {c.tier for c in rt.catalog.copies(backup_id) if c.status == "complete"}


def test_local_then_blob_once_verified_then_archive_then_expiry(
    sandbox: Sandbox, azurite: Azurite, scratch: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv(KEY_ENV, sandbox.key_b64)
    monkeypatch.setenv(CONN_ENV, azurite.connection_string)
    cfg = str(azure_policy(sandbox, scratch, f"t{uuid.uuid4().hex[:12]}",
                           catalog=f"sqlite:///{scratch}/tiers.db", verify={"after": []}))
    rt = Runtime(load_policy(cfg))
    first = open_engine(rt, "app").take_backup("full")
    t0 = datetime.now(UTC)

    retention_sweep(config=cfg, now=t0)
    assert _tiers_of(rt, first.id) == {"local"}  # not verified: never leaves the local tier
    assert verify_backup(rt, "app", first.id).passed
    retention_sweep(config=cfg, now=t0)
    assert _tiers_of(rt, first.id) == {"local", "blob"}
    assert rt.store("blob").exists(object_key(first, DATA_OBJECT))

    with connect(sandbox.dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS tier_rows(id int)")
        conn.execute("INSERT INTO tier_rows VALUES (1)")
    second = open_engine(rt, "app").take_backup("full")
    assert verify_backup(rt, "app", second.id).passed
    retention_sweep(config=cfg, now=t0)

    # 31 days on: the old full leaves local and blob, and sits in the Archive access tier.
    retention_sweep(config=cfg, now=t0 + timedelta(days=31))
    assert _tiers_of(rt, first.id) == {"archive"}
    assert _tiers_of(rt, second.id)  # the newest verified full keeps a copy
    archive = rt.store("archive")
    access = archive.access_tiers()
    assert access is not None  # an Azure tier declares access tiers
    key = object_key(first, DATA_OBJECT)
    assert access.get_tier(key).archived
    with pytest.raises(ObjectArchivedError), archive.reader(key):
        pass

    # A restore to the old full's time rehydrates it first, then reads it, then archives it again.
    out = restore_point_in_time(db="app", into=str(scratch / "from-archive"), target=first.end_time, config=cfg)
    assert out["pieces"] == [first.id]
    assert access.get_tier(key).archived

    # Seven years on it expires, unless a legal hold says otherwise.
    later = t0 + timedelta(days=2556)
    rt.catalog.add_hold(first.id, reason="litigation INC-7", actor="counsel@example.com")
    retention_sweep(config=cfg, now=later)
    assert _tiers_of(rt, first.id) == {"archive"}
    rt.catalog.remove_hold(first.id, actor="counsel@example.com", reason="case closed")
    retention_sweep(config=cfg, now=later)
    assert _tiers_of(rt, first.id) == set()
    assert not archive.exists(key)
    assert _tiers_of(rt, second.id)
    # Rerunning changes nothing (idempotent).
    assert retention_sweep(config=cfg, now=later) == []
    rt.close()


def test_a_cut_upload_is_retried_and_leaves_no_half_blob(
    sandbox: Sandbox, azurite: Azurite, scratch: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    proxy = TcpProxy("127.0.0.1", azurite.port)
    monkeypatch.setenv(KEY_ENV, sandbox.key_b64)
    monkeypatch.setenv(CONN_ENV, connection_string("127.0.0.1", proxy.port))
    container = f"t{uuid.uuid4().hex[:12]}"
    path = azure_policy(sandbox, scratch, container, backup_tier="blob", catalog=f"sqlite:///{scratch}/cut.db")
    data = yaml.safe_load(path.read_text())
    data["tiers"]["blob"]["request_retries"] = 0  # let the task's retry do the work
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = str(path)
    rt = Runtime(load_policy(cfg))
    proxy.sever_after(1_000_000)  # mid-way through the full's data object

    def heal() -> None:  # bring the network back once the first attempt has failed
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if rt.catalog.list_backups("app", statuses=["failed"]):
                proxy.restore()
                return
            time.sleep(0.1)

    healer = threading.Thread(target=heal)
    healer.start()

    @flow
    def backup_with_fast_retry() -> str:
        return base_backup.with_options(retry_delay_seconds=[1])("app", "full", cfg).id

    try:
        done = backup_with_fast_retry()
        names = list(rt.store("blob").list())
    finally:
        healer.join()
        proxy.close()
    failed = rt.catalog.list_backups("app", statuses=["failed"])
    assert len(failed) == 1 and rt.catalog.copies(failed[0].id) == []
    assert rt.catalog.get(done).status == "completed" and _tiers_of(rt, done) == {"blob"}
    assert names and all(done in n for n in names)  # nothing from the failed attempt was committed
    rt.close()
