"""Backups in Azure Blob (Azurite): land there, restore from there, survive the loss of the catalog."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from drkit.config import load_policy
from drkit.engines import open_engine
from drkit.engines.postgres.pgctl import LocalCluster
from drkit.engines.postgres.restore import restore, restored_dsn
from drkit.runtime import Runtime
from drkit.sandbox import KEY_ENV, Sandbox
from drkit.tiers.rebuild import rebuild_catalog
from tests.support.azure_policy import CONN_ENV, azure_policy
from tests.support.azurite import Azurite, azurite  # noqa: F401 - the fixture
from tests.support.pgdata import connect

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _markers(dsn: str, ids: range) -> dict[int, datetime]:
    out: dict[int, datetime] = {}
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS az_marker(id int PRIMARY KEY)")
        for i in ids:
            conn.execute("INSERT INTO az_marker VALUES (%s)", [i])
            row = conn.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            out[i] = row[0]
            time.sleep(0.2)
    return out


def _restored_ids(rt: Runtime, into: Path, target: datetime | None) -> tuple[list[int], list[str]]:
    plan = open_engine(rt, "app").plan_restore(target)
    res = restore(rt, "app", into=into, plan=plan, keep_running=True)
    try:
        with connect(restored_dsn(res)) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM az_marker ORDER BY id").fetchall()]
    finally:
        LocalCluster(res.data_dir, res.port, rt.bin_dir("app"), rt.os_user("app")).stop()
    return ids, sorted({p.tier for p in plan.pieces})


def test_full_diff_log_in_azurite_restore_exactly_and_the_catalog_rebuilds_from_the_container(
    sandbox: Sandbox, azurite: Azurite, scratch: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv(KEY_ENV, sandbox.key_b64)
    monkeypatch.setenv(CONN_ENV, azurite.connection_string)
    container = f"t{uuid.uuid4().hex[:12]}"
    cfg = azure_policy(sandbox, scratch, container, backup_tier="blob",
                       catalog=f"sqlite:///{scratch}/first-catalog.db")
    rt = Runtime(load_policy(cfg))
    full = open_engine(rt, "app").take_backup("full")
    first = _markers(sandbox.dsn, range(1, 4))
    diff = open_engine(rt, "app").take_backup("diff")
    second = _markers(sandbox.dsn, range(4, 7))
    log = open_engine(rt, "app").take_backup("log")
    assert log is not None
    store, labels = rt.store("blob"), rt.store("blob").labels()
    assert labels is not None  # an Azure tier declares labels
    assert store.exists(f"app/{full.id}/data.drk") and labels.tags(f"app/{full.id}/data.drk")["kind"] == "full"
    ids, tiers = _restored_ids(rt, scratch / "r1", first[2])
    assert ids == [1, 2] and tiers == ["blob"]
    ids, _ = _restored_ids(rt, scratch / "r2", second[5])
    assert ids == [1, 2, 3, 4, 5]
    rt.close()

    # The region is gone with its catalog: only the container and the key remain.
    (scratch / "dr").mkdir()
    cfg2 = azure_policy(sandbox, scratch / "dr", container, backup_tier="blob",
                        catalog=f"sqlite:///{scratch}/dr/rebuilt.db")
    rt2 = Runtime(load_policy(cfg2))
    counts = rebuild_catalog(rt2, "blob")
    assert counts["imported"] >= 3
    rebuilt = {b.id: b for b in rt2.catalog.list_backups("app")}
    assert rebuilt[diff.id].base_id == full.id and rebuilt[log.id].end_wal == log.end_wal
    ids, _ = _restored_ids(rt2, scratch / "dr" / "r3", second[4])
    assert ids == [1, 2, 3, 4]
    assert rebuild_catalog(rt2, "blob")["imported"] == 0  # idempotent
    rt2.close()
