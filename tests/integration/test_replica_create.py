"""`drkit replica create DB` on real PostgreSQL 15: build, idempotent re-run, restart, refusals, prerequisites.

Each test makes its own primary (drkit.sandbox) in a scratch directory and a policy whose ``replica:`` names a
directory there; every server started here is stopped in ``finally``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from drkit.config import default_bin_dir, load_policy
from drkit.engines import dr_operations, open_engine
from drkit.engines.postgres import replica as replica_module
from drkit.engines.postgres.pgctl import (
    LocalCluster,
    chown_tree,
    effective_os_user,
    free_port,
    make_owned_dir,
    run_as,
)
from drkit.runtime import Runtime
from drkit.sandbox import KEY_ENV, Sandbox, create_sandbox
from tests.support.pgdata import connect

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(240)]
runner = CliRunner()
PASSWORD = "s3cret-never-written"


@dataclass
class World:
    root: Path
    sb: Sandbox
    port: int
    replica_dir: Path
    config: Path

    @property
    def replica(self) -> LocalCluster:
        return LocalCluster(self.replica_dir, self.port, self.sb.primary.bin_dir, self.sb.primary.os_user,
                            log_file=self.replica_dir.with_name(self.replica_dir.name + ".log"))

    def policy(self, **replica: Any) -> None:
        """Rewrite the policy's replica block (defaults: this world's replica, slot drkit_dr)."""
        policy = yaml.safe_load(self.sb.policy_path.read_text())
        block = {"dsn": f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                 "data_dir": str(self.replica_dir), "slot": "drkit_dr", **replica}
        policy["databases"]["app"]["replica"] = {k: v for k, v in block.items() if v is not None}
        self.config.write_text(yaml.safe_dump(policy, sort_keys=False))

    def drkit(self, *args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, ["--config", str(self.config), *args])
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def world(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    sb = create_sandbox(scratch / "w", fsync=False)
    monkeypatch.setenv(KEY_ENV, sb.key_b64)
    w = World(scratch, sb, free_port(), scratch / "w" / "pg" / "dr", scratch / "w" / "drkit.yaml")
    w.policy()
    try:
        yield w
    finally:
        w.replica.stop("immediate")
        sb.primary.stop("immediate")


def _one(dsn: str, query: str) -> Any:
    with connect(dsn) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]


def _wait_for_row(dsn: str, marker: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _one(dsn, f"SELECT count(*) FROM marker WHERE id = {marker}") == 1:
                return
        except psycopg.Error:
            pass
        time.sleep(0.05)
    raise AssertionError(f"row {marker} never reached {dsn}")


def _snapshot(path: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``path`` (itself included): type, mode, owner, size, mtime, content or link target."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirs, files in os.walk(path, followlinks=False):
        for name in ["", *dirs, *files]:
            p = Path(dirpath) / name if name else Path(dirpath)
            st = os.lstat(p)
            body: Any = None
            if stat.S_ISREG(st.st_mode):
                body = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            out[str(p.relative_to(path))] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, body)
    return out


def _auto_conf(data_dir: Path) -> str:
    return (data_dir / "postgresql.auto.conf").read_text()


def test_create_streams_rerun_changes_nothing_stopped_is_started(world: World) -> None:
    passfile = world.root / "pgpass"
    world.policy()
    policy = yaml.safe_load(world.config.read_text())
    # the primary's DSN carries a password (trust auth here ignores it): it must reach no file and no output
    policy["databases"]["app"]["dsn"] = world.sb.dsn + f" password={PASSWORD} passfile={passfile}"
    world.config.write_text(yaml.safe_dump(policy, sort_keys=False))
    with connect(world.sb.dsn) as conn:
        conn.execute("CREATE TABLE marker(id int PRIMARY KEY)")
        conn.execute("INSERT INTO marker VALUES (1)")

    code, out, err = world.drkit("replica", "create", "app")
    assert code == 0, err
    assert f"app: replica created in {world.replica_dir} (127.0.0.1:{world.port}), streaming from " \
           f"127.0.0.1:{world.sb.primary.port} through slot drkit_dr" in out
    assert "lag: " in out and "(streaming)" in out
    assert PASSWORD not in out + err
    rdsn = world.replica.dsn()
    assert _one(rdsn, "SELECT pg_is_in_recovery()") is True
    assert _one(world.sb.dsn, "SELECT active FROM pg_replication_slots WHERE slot_name = 'drkit_dr'") is True
    assert (world.replica_dir / "standby.signal").exists()
    st = os.stat(world.replica_dir)
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == pwd.getpwnam(effective_os_user(None) or "root").pw_uid
    conf = _auto_conf(world.replica_dir)
    assert PASSWORD not in conf and f"passfile={passfile}" in conf and f"port = {world.port}" in conf
    assert not any(PASSWORD.encode() in p.read_bytes() for p in world.replica_dir.glob("*.conf"))
    assert world.replica_dir.with_name("dr.log").is_file()  # its server log, beside the data directory
    # the standby's application_name is its slot name, so pg_stat_replication names it as the policy does
    assert _one(world.sb.dsn, "SELECT application_name FROM pg_stat_replication") == "drkit_dr"
    with connect(world.sb.dsn) as conn:
        conn.execute("INSERT INTO marker VALUES (2)")
    _wait_for_row(rdsn, 2)

    # re-run on a healthy streaming replica: says so, changes nothing
    pid = (world.replica_dir / "postmaster.pid").read_text()
    before = conf
    code, out, err = world.drkit("replica", "create", "app")
    assert code == 0, err
    assert "already streams from" in out and "nothing changed" in out
    assert _auto_conf(world.replica_dir) == before
    assert (world.replica_dir / "postmaster.pid").read_text() == pid

    # `drkit status` shows the replica's lag
    code, out, err = world.drkit("status", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["replica_lag"]["state"] == "streaming"

    # a stopped replica is started, and catches up with what the primary wrote meanwhile
    world.replica.stop("fast")
    assert not world.replica.is_running()
    with connect(world.sb.dsn) as conn:
        conn.execute("INSERT INTO marker VALUES (3)")
        conn.execute("SELECT pg_drop_replication_slot('drkit_dr')")  # someone dropped its slot meanwhile
    code, out, err = world.drkit("replica", "create", "app", "--json")
    assert code == 0, err
    made = json.loads(out)
    assert made["outcome"] == "started" and made["slot"] == "drkit_dr" and made["lag"]["state"] == "streaming"
    _wait_for_row(rdsn, 3)
    assert _one(world.sb.dsn, "SELECT active FROM pg_replication_slots WHERE slot_name = 'drkit_dr'") is True
    rt = Runtime(load_policy(world.config))
    events = rt.catalog.audit_events(database="app", action="replica.create")
    rt.close()
    assert [e.detail["outcome"] for e in events] == ["created", "started"]

    # once promoted (a failover), the directory holds a primary: refused, and left running as one
    _one(rdsn, "SELECT pg_promote(true, 30)")
    code, out, err = world.drkit("replica", "create", "app")
    assert code == 2 and err.count("\n") == 1
    assert "not a replica (no standby.signal)" in err and "nothing was changed" in err
    assert _one(rdsn, "SELECT pg_is_in_recovery()") is False


def test_refuses_what_is_not_a_replica_of_this_primary(world: World) -> None:
    # a directory of someone else's files
    world.replica_dir.mkdir()
    (world.replica_dir / "notes.txt").write_text("keep me\n")
    (world.replica_dir / "sub").mkdir()
    os.symlink("/etc/passwd", world.replica_dir / "sub" / "link")
    before = _snapshot(world.replica_dir)
    code, out, err = world.drkit("replica", "create", "app")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: databases.app.replica.data_dir: ") and "holds no PostgreSQL cluster" in err
    assert _snapshot(world.replica_dir) == before
    assert _one(world.sb.dsn, "SELECT count(*) FROM pg_replication_slots") == 0

    # something that looks like an unfinished base backup, but not one drkit's OS user left
    (world.replica_dir / "PG_VERSION").write_text("15\n")
    (world.replica_dir / "backup_label").write_text("START WAL LOCATION: 0/2000028\n")
    before = _snapshot(world.replica_dir)
    code, _, err = world.drkit("replica", "create", "app")
    assert code == 2 and err.count("\n") == 1 and "holds an incomplete cluster" in err
    assert _snapshot(world.replica_dir) == before

    # a copy of this very primary that is not a replica (a restore, never started): kept
    copy = world.root / "copy"
    make_owned_dir(copy, world.sb.primary.os_user)
    run_as(world.sb.primary.os_user, [str(world.sb.primary.bin_dir / "pg_basebackup"), "-d", world.sb.dsn,
                                      "-D", str(copy), "-c", "fast", "-X", "fetch"])
    world.policy(data_dir=str(copy))
    before = _snapshot(copy)
    code, _, err = world.drkit("replica", "create", "app")
    assert code == 2 and err.count("\n") == 1 and "not a replica (no standby.signal)" in err
    assert _snapshot(copy) == before

    # another cluster, even one that looks like a standby
    other = LocalCluster(world.root / "other", free_port(), world.sb.primary.bin_dir, world.sb.primary.os_user)
    other.initdb()
    run_as(other.os_user, ["touch", str(other.data_dir / "standby.signal")])
    world.policy(data_dir=str(other.data_dir))
    before = _snapshot(other.data_dir)
    code, out, err = world.drkit("replica", "create", "app")
    assert code == 2 and err.count("\n") == 1 and "holds another cluster (system identifier" in err
    assert _snapshot(other.data_dir) == before

    # the primary's own data directory
    world.policy(data_dir=str(world.sb.primary.data_dir))
    code, _, err = world.drkit("replica", "create", "app")
    assert code == 2 and "is the primary's own data directory" in err

    # a link on the way to data_dir, planted by another user: not followed, nothing created behind it
    target = world.root / "elsewhere"
    target.mkdir()
    planted = world.root / "planted"
    os.symlink(target, planted)
    nobody = pwd.getpwnam("nobody")
    os.lchown(planted, nobody.pw_uid, nobody.pw_gid)
    world.policy(data_dir=str(planted / "dr"))
    code, _, err = world.drkit("replica", "create", "app")
    assert code == 2 and err.count("\n") == 1 and "is a symbolic link owned by uid" in err
    assert list(target.iterdir()) == []

    # bad input: an unknown database, a replica drkit does not manage here
    code, _, err = world.drkit("replica", "create", "nope")
    assert code == 2 and err.startswith("error: ") and "nope" in err
    world.policy(data_dir=None)
    code, _, err = world.drkit("replica", "create", "app")
    assert code == 2 and "databases.app.replica.data_dir: not set" in err
    assert _one(world.sb.dsn, "SELECT count(*) FROM pg_replication_slots") == 0

    # `drkit check` names the missing replica; backups are not refused for it
    rt = Runtime(load_policy(world.config))
    try:
        engine = open_engine(rt, "app")
        missing = next(i for i in engine.check() if i.name == "DR replica (slot drkit_dr)")
        assert not missing.ok and missing.current == "missing"
        engine.require_ready()
    finally:
        rt.close()


def test_unmet_prerequisites_are_named_with_their_fix_and_nothing_is_built(world: World) -> None:
    with connect(world.sb.dsn) as conn:
        conn.execute("CREATE ROLE app_user LOGIN")
    hba = world.sb.primary.data_dir / "pg_hba.conf"
    original = hba.read_text()
    lines = [ln for ln in original.splitlines() if "replication" not in ln.split("#")[0]]
    hba.write_text("\n".join(lines) + "\n")
    _one(world.sb.dsn, "SELECT pg_reload_conf()")
    policy = yaml.safe_load(world.config.read_text())
    policy["databases"]["app"]["dsn"] = world.sb.primary.dsn(user="app_user")
    world.config.write_text(yaml.safe_dump(policy, sort_keys=False))
    try:
        code, out, err = world.drkit("replica", "create", "app")
    finally:
        hba.write_text(original)
        _one(world.sb.dsn, "SELECT pg_reload_conf()")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "role 'app_user' may not replicate (fix: ALTER ROLE app_user REPLICATION)" in err
    assert "pg_hba.conf has no replication line for role 'app_user'" in err
    assert not world.replica_dir.exists()


def test_primary_without_rewind_support_warns_that_failback_rebuilds(scratch: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sb = create_sandbox(scratch / "w", fsync=False)
    monkeypatch.setenv(KEY_ENV, sb.key_b64)
    sb.primary.stop("fast")
    # a cluster made without data checksums, wal_log_hints off (pg_rewind cannot work on it), and at first
    # not set up for replication at all
    plain = LocalCluster(scratch / "w" / "pg" / "plain", free_port(), default_bin_dir(), sb.primary.os_user)
    plain.initdb(checksums=False, extra_conf="wal_level = minimal\nmax_wal_senders = 0\n"
                                             "max_replication_slots = 0\nwal_log_hints = off\n")
    plain.start()
    replica_dir = scratch / "w" / "pg" / "dr"
    port = free_port()
    replica = LocalCluster(replica_dir, port, plain.bin_dir, plain.os_user)
    try:
        policy = yaml.safe_load(sb.policy_path.read_text())
        policy["databases"]["app"].update({
            "dsn": plain.dsn(), "data_dir": str(plain.data_dir),
            "replica": {"dsn": f"host=127.0.0.1 port={port} user=postgres", "data_dir": str(replica_dir)}})
        sb.policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
        result = runner.invoke(app, ["--config", str(sb.policy_path), "replica", "create", "app"])
        assert result.exit_code == 1 and result.stderr.count("\n") == 1
        for named in ("wal_level is 'minimal' (fix: ALTER SYSTEM SET wal_level = 'replica', then restart",
                      "max_wal_senders is 0 with 0 in use, 2 more needed (fix: ALTER SYSTEM SET max_wal_senders",
                      "max_replication_slots is 0 with 0 in use, one more needed for slot 'drkit_dr'"):
            assert named in result.stderr
        assert not replica_dir.exists()

        with connect(plain.dsn()) as conn:
            for setting in ("wal_level = 'replica'", "max_wal_senders = 10", "max_replication_slots = 10"):
                conn.execute(f"ALTER SYSTEM SET {setting}")
        plain.stop("fast")
        plain.start()
        result = runner.invoke(app, ["--config", str(sb.policy_path), "replica", "create", "app"])
        assert result.exit_code == 0, result.stderr
        assert "replica created" in result.stdout
        warning = result.stderr.strip()
        assert warning.startswith("warning: pg_rewind cannot run on this cluster (wal_log_hints=off, "
                                  "data_checksums=off") and "a failback will rebuild the old primary" in warning
        assert _one(replica.dsn(), "SELECT pg_is_in_recovery()") is True

        result = runner.invoke(app, ["--config", str(sb.policy_path), "check", "app"])
        assert result.exit_code == 1  # `drkit check` reports the rewind requirement as unmet
        rt = Runtime(load_policy(sb.policy_path))
        items = {i.name: i for i in open_engine(rt, "app").check()}
        rt.close()
        rewind = items["wal_log_hints or data checksums"]
        assert not rewind.ok and rewind.expected == "one of them on (pg_rewind at failback)"
        assert "wal_log_hints = 'on'" in rewind.fix and "failback rebuilds the old primary" in rewind.fix
        assert items["DR replica (slot drkit_dr)"].ok and items["DR replica (slot drkit_dr)"].current == "active"
        replica.stop("fast")
        rt = Runtime(load_policy(sb.policy_path))
        down = next(i for i in open_engine(rt, "app").check() if i.name == "DR replica (slot drkit_dr)")
        rt.close()
        assert not down.ok and down.current.startswith("inactive") and down.fix.startswith("drkit replica create app")

        # what the warning says: after a failover, the failback's resync cannot rewind the old primary; it
        # rebuilds it from a base backup of DR (the old directory kept aside)
        result = runner.invoke(app, ["--config", str(sb.policy_path), "replica", "create", "app"])
        assert result.exit_code == 0 and "replica started" in result.stdout, result.stderr
        plain.stop("immediate")
        _one(replica.dsn(), "SELECT pg_promote(true, 30)")
        rt = Runtime(load_policy(sb.policy_path))
        try:
            resync = dr_operations(rt, "app").resync("primary")
        finally:
            rt.close()
        assert resync.outcome == "rebuilt"
        assert _one(plain.dsn(), "SELECT pg_is_in_recovery()") is True
        assert list(plain.data_dir.parent.glob("plain.drkit-old-*"))
    finally:
        replica.stop("immediate")
        plain.stop("immediate")


def test_slot_in_use_by_another_standby_is_refused(world: World) -> None:
    code, _, err = world.drkit("replica", "create", "app")
    assert code == 0, err
    second = world.root / "w" / "pg" / "dr2"
    world.policy(data_dir=str(second), dsn=f"host=127.0.0.1 port={free_port()} user=postgres")
    code, out, err = world.drkit("replica", "create", "app")
    assert code == 1 and err.count("\n") == 1 and "slot 'drkit_dr'" in err and "in use by another standby" in err
    assert not second.exists()


def test_an_interrupted_base_backup_of_this_primary_is_redone(world: World) -> None:
    # what a killed pg_basebackup leaves: files, backup_label, no pg_control yet (it is copied last)
    world.replica_dir.mkdir(mode=0o700)
    (world.replica_dir / "PG_VERSION").write_text("15\n")
    (world.replica_dir / "backup_label").write_text("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n")
    (world.replica_dir / "base").mkdir()
    chown_tree(world.replica_dir, world.sb.primary.os_user)
    code, out, err = world.drkit("replica", "create", "app")
    assert code == 0, err
    assert "replica created" in out
    assert _one(world.replica.dsn(), "SELECT pg_is_in_recovery()") is True


def test_a_password_reaches_neither_a_command_line_nor_the_replica_which_logs_in_with_a_passfile(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    argvs: list[list[str]] = []
    real_run_as = replica_module.run_as

    def recording_run_as(os_user: str | None, argv: list[str], **kw: Any) -> Any:
        argvs.append(list(argv))
        return real_run_as(os_user, argv, **kw)

    monkeypatch.setattr(replica_module, "run_as", recording_run_as)
    if Path(pwd.getpwnam(world.sb.primary.os_user or "root").pw_dir, ".pgpass").exists():
        pytest.skip("the postgres OS user has a ~/.pgpass, which would log the replica in")
    with connect(world.sb.dsn) as conn:
        conn.execute(f"CREATE ROLE repl LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    hba = world.sb.primary.data_dir / "pg_hba.conf"
    hba.write_text("host all repl 127.0.0.1/32 scram-sha-256\nhost replication repl 127.0.0.1/32 scram-sha-256\n"
                   + hba.read_text())
    _one(world.sb.dsn, "SELECT pg_reload_conf()")
    policy = yaml.safe_load(world.config.read_text())
    policy["databases"]["app"]["dsn"] = world.sb.primary.dsn(user="repl") + f" password={PASSWORD}"
    world.config.write_text(yaml.safe_dump(policy, sort_keys=False))

    # (a superuser, as drkit's DSN is.) Built with the password in pg_basebackup's environment; the replica
    # itself has none, and the error says how to fix that
    code, out, err = world.drkit("replica", "create", "app")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "cannot log in to the primary" in err and "passfile" in err and PASSWORD not in err
    assert (world.replica_dir / "standby.signal").exists() and not world.replica.is_running()
    assert not any(PASSWORD.encode() in p.read_bytes() for p in world.replica_dir.glob("*.conf"))

    # the operator's fix: a passfile the postgres OS user reads, named in the DSN; the rerun starts the replica
    passfile = world.root / "pgpass"
    passfile.write_text(f"127.0.0.1:{world.sb.primary.port}:*:repl:{PASSWORD}\n")
    chown_tree(passfile, world.sb.primary.os_user, mode=0o600)
    policy["databases"]["app"]["dsn"] += f" passfile={passfile}"
    world.config.write_text(yaml.safe_dump(policy, sort_keys=False))
    code, out, err = world.drkit("replica", "create", "app")
    assert code == 0, err
    assert "replica started" in out and PASSWORD not in out + err
    conf = _auto_conf(world.replica_dir)
    assert f"passfile={passfile}" in conf and PASSWORD not in conf
    assert _one(world.sb.dsn, "SELECT usename FROM pg_stat_replication") == "repl"
    assert any(Path(a[0]).name == "pg_basebackup" for a in argvs)
    assert not [a for a in argvs if any(PASSWORD in part for part in a)]
