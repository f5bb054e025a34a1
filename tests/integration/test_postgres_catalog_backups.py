"""The whole backup → plan → restore path with the catalog in a real PostgreSQL database."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from drkit.config import load_policy
from drkit.engines import open_engine
from drkit.engines.postgres.restore import restore, restored_dsn
from drkit.runtime import Runtime
from drkit.sandbox import KEY_ENV, Sandbox
from tests.support.pgdata import connect, table_hashes

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_backups_and_restore_with_a_postgresql_catalog(
    sandbox: Sandbox, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect(sandbox.dsn) as conn:
        conn.execute("CREATE DATABASE drkit_catalog")
        conn.execute("CREATE TABLE pgcat(id int)")
        conn.execute("INSERT INTO pgcat SELECT generate_series(1, 500)")
    data = yaml.safe_load(sandbox.policy_path.read_text())
    data["catalog"] = f"postgresql+psycopg://postgres@127.0.0.1:{sandbox.primary.port}/drkit_catalog"
    data["tiers"]["local"]["path"] = str(scratch / "tier")
    path = scratch / "drkit.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv(KEY_ENV, sandbox.key_b64)
    rt = Runtime(load_policy(path))
    try:
        full = open_engine(rt, "app").take_backup("full")
        with connect(sandbox.dsn) as conn:
            conn.execute("INSERT INTO pgcat SELECT generate_series(501, 900)")
        diff = open_engine(rt, "app").take_backup("diff")
        log = open_engine(rt, "app").take_backup("log")
        assert log is not None
        expected = {k: v for k, v in table_hashes(sandbox.dsn).items() if k == "public.pgcat"}
        plan = open_engine(rt, "app").plan_restore(None)
        assert [p.backup.id for p in plan.pieces][:2] == [full.id, diff.id]
        res = restore(rt, "app", into=scratch / "r", plan=plan, keep_running=True)
        try:
            got = {k: v for k, v in table_hashes(restored_dsn(res)).items() if k == "public.pgcat"}
        finally:
            from drkit.engines.postgres.pgctl import LocalCluster
            LocalCluster(res.data_dir, res.port, rt.bin_dir("app"), rt.os_user("app")).stop()
        assert got == expected
        assert rt.catalog.url.startswith("postgresql+psycopg://")
    finally:
        rt.close()
