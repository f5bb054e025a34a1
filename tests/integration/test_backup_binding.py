"""Trust in what a store holds: a wrong key, a swapped object or a forged backup.json is refused by name.

Real PostgreSQL backups into a filesystem tier of the test's own, with a catalog of its own; the
stored objects are then tampered with the way an accident or an attacker with store access would.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from drkit.catalog.records import BackupRecord
from drkit.config import load_policy
from drkit.engines import open_engine
from drkit.engines.postgres.chain import plan_for_backup
from drkit.engines.postgres.restore import restore
from drkit.engines.postgres.verify import verify_backup
from drkit.errors import DrkitError, EncryptionKeyError
from drkit.retention import Action
from drkit.runtime import Runtime
from drkit.sandbox import KEY_ENV, Sandbox
from drkit.tiers.moves import apply_action
from drkit.tiers.naming import DATA_OBJECT, DESCRIPTOR_OBJECT, object_key
from drkit.tiers.rebuild import rebuild_catalog, write_descriptor

pytestmark = [pytest.mark.slow, pytest.mark.integration]
runner = CliRunner()
WRONG_KEY = base64.b64encode(os.urandom(32)).decode()


def policy(sandbox: Sandbox, directory: Path, catalog: str, *, far: bool = False) -> Path:
    """The sandbox's policy with this test's own tier(s) and the named catalog (a file in ``directory``)."""
    data = yaml.safe_load(sandbox.policy_path.read_text())
    data["catalog"] = f"sqlite:///{directory / catalog}"
    data["tiers"]["local"]["path"] = str(directory / "local")
    if far:
        data["tiers"]["far"] = {"store": "filesystem", "path": str(directory / "far"), "keep_days": 30}
    data["scratch_dir"] = str(directory / "scratch")
    path = directory / f"{Path(catalog).stem}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def runtime(path: Path, key_b64: str) -> Runtime:
    return Runtime(load_policy(path), environ={**os.environ, KEY_ENV: key_b64})


def put_object(rt: Runtime, key: str, data: bytes) -> None:
    with rt.store("local").writer(key) as fh:
        fh.write(data)


def get_object(rt: Runtime, key: str) -> bytes:
    with rt.store("local").reader(key) as fh:
        data: bytes = fh.read()
    return data


def test_a_swapped_data_object_is_refused_by_name_at_restore_and_at_verify(sandbox: Sandbox, scratch: Path) -> None:
    rt = runtime(policy(sandbox, scratch, "catalog.db"), sandbox.key_b64)
    a = open_engine(rt, "app").take_backup("full")
    b = open_engine(rt, "app").take_backup("full")
    # B's data put in A's place, and a catalog that agrees with it (size and SHA-256), as a catalog
    # rebuilt from a tampered store or edited would: only the binding of the stream to A can tell.
    put_object(rt, object_key(a, DATA_OBJECT), get_object(rt, object_key(b, DATA_OBJECT)))
    with sqlite3.connect(scratch / "catalog.db") as db:
        db.execute("UPDATE copies SET stored_bytes = ?, sha256 = ? WHERE backup_id = ?",
                   [b.stored_bytes, b.sha256, a.id])
        db.execute("UPDATE backups SET stored_bytes = ?, sha256 = ? WHERE id = ?", [b.stored_bytes, b.sha256, a.id])
    named = f"object is backup {b.id}'s data.drk, expected backup {a.id}'s data.drk"

    plan = plan_for_backup(rt.catalog.get(a.id), rt.catalog.list_backups("app"), rt.catalog.all_copies("app"),
                           tier_order=rt.tier_order)
    with pytest.raises(DrkitError) as info:
        restore(rt, "app", into=scratch / "restored", plan=plan)
    assert named in str(info.value)
    # Nothing of B was laid down as if it were A: the object was refused before it was read.
    assert not (scratch / "restored" / "PG_VERSION").exists()

    rt.catalog.set_copy_status(a.id, "local", "complete")  # the restore recorded the copy corrupt
    report = verify_backup(rt, "app", a.id)
    assert not report.passed and report.corrupt_pieces == [a.id]
    assert any(named in c.detail for c in report.checks if not c.ok), report.checks
    rt.close()


def test_a_catalog_record_that_does_not_match_the_manifest_is_refused_at_restore(
    sandbox: Sandbox, scratch: Path
) -> None:
    rt = runtime(policy(sandbox, scratch, "catalog.db"), sandbox.key_b64)
    a = open_engine(rt, "app").take_backup("full")
    assert a.start_lsn is not None
    with sqlite3.connect(scratch / "catalog.db") as db:  # the catalog altered behind drkit's back
        db.execute("UPDATE backups SET start_lsn = ? WHERE id = ?", [a.start_lsn + 8, a.id])
    altered = rt.catalog.get(a.id)
    plan = plan_for_backup(altered, rt.catalog.list_backups("app"), rt.catalog.all_copies("app"),
                           tier_order=rt.tier_order)
    with pytest.raises(DrkitError) as info:
        restore(rt, "app", into=scratch / "restored", plan=plan)
    msg = str(info.value)
    assert f"backup {a.id}'s data.drk does not match its catalog record" in msg and "start LSN" in msg
    rt.close()


def _backups(rt: Runtime) -> list[BackupRecord]:
    return rt.catalog.list_backups("app")


def test_a_wrong_key_is_refused_in_one_line_wherever_a_backup_is_first_touched(
    sandbox: Sandbox, scratch: Path
) -> None:
    path = policy(sandbox, scratch, "catalog.db")
    rt = runtime(path, sandbox.key_b64)
    full = open_engine(rt, "app").take_backup("full")
    assert open_engine(rt, "app").take_backup("log") is not None
    good_id = rt.key.key_id
    wrong = runtime(path, WRONG_KEY)
    wrong_id = wrong.key.key_id
    before = [(b.id, b.status) for b in _backups(rt)]

    def one_line_naming(exc: BaseException, what: str) -> None:
        msg = str(exc)
        assert "\n" not in msg and what in msg and good_id in msg and wrong_id in msg, msg
        assert WRONG_KEY not in msg and sandbox.key_b64 not in msg

    with pytest.raises(EncryptionKeyError) as info:  # restore-plan (and so restore) refuses at once
        open_engine(wrong, "app").plan_restore(None)
    one_line_naming(info.value, "app-")
    with pytest.raises(EncryptionKeyError) as info:  # verify refuses: a wrong key is not corruption
        verify_backup(wrong, "app", full.id)
    one_line_naming(info.value, full.id)
    with pytest.raises(EncryptionKeyError) as info:  # a diff refuses before it starts
        open_engine(wrong, "app").take_backup("diff")
    one_line_naming(info.value, full.id)
    assert [(b.id, b.status) for b in _backups(rt)] == before  # nothing marked corrupt, no failed row

    # The catalog is lost; rebuilding it from the tier with the wrong key imports nothing.
    dr = policy(sandbox, scratch, "rebuilt.db")
    wrong_dr = runtime(dr, WRONG_KEY)
    with pytest.raises(EncryptionKeyError) as info:
        rebuild_catalog(wrong_dr, "local")
    one_line_naming(info.value, f"app/{full.id}/backup.json")
    assert "nothing was imported" in str(info.value)
    assert _backups(wrong_dr) == []

    result = runner.invoke(app, ["--config", str(dr), "catalog", "rebuild", "--from", "local"],
                           env={KEY_ENV: WRONG_KEY})
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and good_id in lines[0] and wrong_id in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert _backups(wrong_dr) == []

    # With the right key the same rebuild imports every backup.
    right_dr = runtime(dr, sandbox.key_b64)
    assert rebuild_catalog(right_dr, "local") == {"imported": 2, "present": 0, "skipped": 0, "refused": 0}
    for rt_ in (rt, wrong, wrong_dr, right_dr):
        rt_.close()


def test_a_forged_backup_json_is_refused_at_rebuild(sandbox: Sandbox, scratch: Path) -> None:
    rt = runtime(policy(sandbox, scratch, "catalog.db"), sandbox.key_b64)
    kept = open_engine(rt, "app").take_backup("full")
    forged = open_engine(rt, "app").take_backup("full")
    other = open_engine(rt, "app").take_backup("full")
    # Someone with write access to the store: a bad backup made to look verified, another moved.
    desc = object_key(forged, DESCRIPTOR_OBJECT)
    body = json.loads(get_object(rt, desc))
    assert body["status"] == "completed"
    body["status"] = "verified"
    put_object(rt, desc, json.dumps(body).encode())
    (scratch / "local" / "app" / "elsewhere").mkdir()
    shutil.move(scratch / "local" / object_key(other, DESCRIPTOR_OBJECT),
                scratch / "local" / "app" / "elsewhere" / DESCRIPTOR_OBJECT)
    rt.close()

    dr = policy(sandbox, scratch, "rebuilt.db")
    rebuilt = runtime(dr, sandbox.key_b64)
    reasons: list[str] = []
    counts = rebuild_catalog(rebuilt, "local", report=reasons.append)
    assert counts == {"imported": 1, "present": 0, "skipped": 0, "refused": 2}
    assert [b.id for b in _backups(rebuilt)] == [kept.id]
    assert any(r.startswith(f"{desc} failed authentication") for r in reasons), reasons
    assert any(r.startswith(f"app/elsewhere/{DESCRIPTOR_OBJECT} describes backup {other.id}") for r in reasons)
    refusals = rebuilt.catalog.audit_events(action="catalog.rebuild.refused")
    assert sorted(e.subject or "" for e in refusals) == sorted([desc, f"app/elsewhere/{DESCRIPTOR_OBJECT}"])

    result = runner.invoke(app, ["--config", str(dr), "catalog", "rebuild", "--from", "local"],
                           env={KEY_ENV: sandbox.key_b64})
    assert result.exit_code == 1
    refused = [line for line in result.stderr.splitlines() if line.startswith("refused: ")]
    assert len(refused) == 2 and any(f"{desc} failed authentication" in line for line in refused)
    assert "refused 2" in result.stdout
    rebuilt.close()


def test_retention_copies_without_the_key_and_the_copied_backup_json_stays_authentic(
    sandbox: Sandbox, scratch: Path
) -> None:
    path = policy(sandbox, scratch, "catalog.db", far=True)
    rt = runtime(path, sandbox.key_b64)
    full = open_engine(rt, "app").take_backup("full")
    rt.catalog.set_status(full.id, "verified", actor="test", reason="as if verified")
    rt.close()

    keyless = Runtime(load_policy(path), environ={k: v for k, v in os.environ.items() if k != KEY_ENV})
    done = apply_action(keyless, Action("copy", full.id, "app", "local", "far", "offsite"))
    assert done == "copied to far"
    assert write_descriptor(keyless, keyless.catalog.get(full.id)) == []  # nothing sealed without the key
    keyless.close()

    # The copied descriptor (written before the status change) is still authentic: a rebuild from the
    # far tier alone imports the backup, with the status its MAC vouches for.
    dr = runtime(policy(sandbox, scratch, "rebuilt.db", far=True), sandbox.key_b64)
    assert rebuild_catalog(dr, "far")["imported"] == 1
    assert dr.catalog.get(full.id).status == "completed"
    dr.close()
