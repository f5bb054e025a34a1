"""`drkit catalog check [--deep] [--repair] [--json]` on real backups: what an operator sees and what it fixes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cli import app
from drkit.config import load_policy
from drkit.engines import open_engine
from drkit.runtime import Runtime
from drkit.sandbox import KEY_ENV, Sandbox
from tests.support.pgdata import connect
from tests.support.policies import policy_variant

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _age(path: Path, seconds: float = 7200) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_catalog_check_finds_repairs_and_reports_what_is_lost(
    sandbox: Sandbox, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, sandbox.key_b64)
    cfg = policy_variant(sandbox, scratch)
    runner = CliRunner()

    def check(*args: str) -> Result:
        return runner.invoke(app, ["--config", str(cfg), "catalog", "check", *args])

    rt = Runtime(load_policy(cfg))
    local = load_policy(cfg).tier_path("local")
    try:
        with connect(sandbox.dsn) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS cc(id int)")
        older = open_engine(rt, "app").take_backup("full")
        newer = open_engine(rt, "app").take_backup("full")
        with connect(sandbox.dsn) as conn:
            conn.execute("INSERT INTO cc SELECT generate_series(1, 100)")
        assert open_engine(rt, "app").take_backup("log") is not None
        clean = check()
        assert clean.exit_code == 0, clean.output
        assert "catalog check: clean" in clean.stdout

        # The older full's only copy is lost: reported (exit 1), then marked by --repair.
        (local / "app" / older.id / "data.drk").unlink()
        found = check("--json")
        assert found.exit_code == 1
        report = json.loads(found.stdout)
        assert report["clean"] is False
        assert sorted((f["kind"], f["subject"]) for f in report["findings"]) == [("lost", older.id),
                                                                                 ("missing", older.id)]
        lost = next(f for f in report["findings"] if f["kind"] == "lost")
        assert lost["database"] == "app" and f"full backup {older.id}" in lost["detail"]
        assert "cannot be restored" in lost["detail"]
        repaired = check("--repair")
        assert repaired.exit_code == 1  # the loss itself needs a person: take a new full
        assert "2 finding(s), 1 repaired, 1 remain" in repaired.stdout
        assert [c.status for c in rt.catalog.copies(older.id)] == ["missing"]
        assert [e.detail["found_by"] for e in rt.catalog.audit_events(action="copy.missing")
                if e.subject == older.id] == ["catalog check"]
        assert check().exit_code == 0  # the loss is on record now

        # A flipped byte (same size) is found only by --deep, which marks the copy corrupt.
        data = local / "app" / newer.id / "data.drk"
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
        assert check().exit_code == 0
        deep = check("--deep", "--repair", "--json")
        assert deep.exit_code == 1
        kinds = {(f["kind"], f["subject"]): f for f in json.loads(deep.stdout)["findings"]}
        assert set(kinds) == {("corrupt", newer.id), ("lost", newer.id)}
        assert kinds[("corrupt", newer.id)]["repaired"] is True
        assert "app can no longer be restored at all" in kinds[("lost", newer.id)]["detail"]
        assert [c.status for c in rt.catalog.copies(newer.id)] == ["corrupt"]

        # Debris: an interrupted write and objects of a backup the catalog never had, both old enough.
        part = local / "app" / newer.id / f".data.drk.part-{'0' * 32}"
        part.write_bytes(b"half")
        _age(part)
        stray = local / "app" / "app-full-20200101T000000000000Z"
        stray.mkdir()
        (stray / "data.drk").write_bytes(b"stray")
        _age(stray / "data.drk")
        young = local / "app" / older.id / f".manifest.drk.part-{'1' * 32}"
        young.write_bytes(b"in flight")
        debris = check("--repair")
        assert debris.exit_code == 0, debris.output
        assert "2 finding(s), 2 repaired, 0 remain" in debris.stdout
        assert not part.exists() and not (stray / "data.drk").exists() and young.exists()
        repairs = [e.detail["repair"] for e in rt.catalog.audit_events(action="catalog.repair")]
        assert sorted(repairs) == ["mark-copy", "mark-copy", "remove-objects", "remove-partial"]
        young.unlink()

        # A lost backup.json is written again.
        third = open_engine(rt, "app").take_backup("full")
        descriptor = local / "app" / third.id / "backup.json"
        descriptor.unlink()
        rewritten = check("--repair", "--json")
        assert rewritten.exit_code == 0, rewritten.output
        assert [(f["kind"], f["repaired"]) for f in json.loads(rewritten.stdout)["findings"]] == [("descriptor", True)]
        assert descriptor.exists()

        status = runner.invoke(app, ["--config", str(cfg), "status", "--json"])
        assert json.loads(status.stdout)[0]["catalog_check"]["clean"] is True
    finally:
        rt.close()
    assert runner.invoke(app, ["--config", str(scratch / "missing.yaml"), "catalog", "check"]).exit_code == 2
