"""Restores and verification restores as root, with a database OS user that may be hostile.

A database superuser can act as the server's OS user (``COPY … TO PROGRAM``): these tests plant the
links that user could plant, check that root never writes, reads or chowns through them, and check
that what drkit brings up is reachable by nobody else (no TCP, no passwordless login), that database
names are quoted, and that validation leaves the restored databases as they were backed up.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from drkit.config import load_policy
from drkit.engines import open_engine
from drkit.engines.postgres.pgctl import LocalCluster, run_as
from drkit.engines.postgres.restore import restore, restored_dsn
from drkit.engines.postgres.verify import run_checks, verify_backup
from drkit.errors import DrkitError, RestoreError
from drkit.plans import RestoreResult
from drkit.runtime import Runtime
from drkit.sandbox import Sandbox
from tests.support.pgdata import connect, table_hashes
from tests.support.policies import policy_variant

pytestmark = [pytest.mark.slow, pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="plays root against the postgres OS user")]

PG = pwd.getpwnam("postgres")


@pytest.fixture
def home(scratch: Path) -> Path:
    """A directory the postgres OS user can write, like its home: where an operator might restore."""
    path = scratch / "pg-home"
    path.mkdir()
    os.chown(path, PG.pw_uid, PG.pw_gid)
    return path


@pytest.fixture
def victims(scratch: Path) -> tuple[Path, Path, Path]:
    """A root-owned file, a root-owned directory with a file, and an empty root-owned directory."""
    root_only = scratch / "root-only"
    root_only.mkdir()
    victim = root_only / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o644)
    vdir = root_only / "victim-dir"
    vdir.mkdir()
    (vdir / "keep").write_text("precious\n")
    empty = root_only / "empty-dir"
    empty.mkdir()
    return victim, vdir, empty


def _intact(victim: Path, vdir: Path, empty: Path) -> None:
    for p in (victim, vdir, empty, vdir / "keep"):
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (0, 0), f"{p} was chowned"
    assert victim.read_text() == "precious\n" and os.stat(victim).st_mode & 0o777 == 0o644
    assert [p.name for p in vdir.iterdir()] == ["keep"] and (vdir / "keep").read_text() == "precious\n"
    assert list(empty.iterdir()) == []


def _as_postgres(*argv: str) -> bool:
    return run_as("postgres", argv, check=False).returncode == 0


def _stop(rt: Runtime, res: RestoreResult) -> None:
    LocalCluster(res.data_dir, res.port, rt.bin_dir("app"), rt.os_user("app")).stop()


@pytest.fixture
def chain(sandbox: Sandbox, rt: Runtime) -> Iterator[dict[str, tuple[int, str]]]:
    """A full and a log backup; yields the table fingerprints they restore to."""
    with connect(sandbox.dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS hardening(id int PRIMARY KEY)")
        conn.execute("TRUNCATE hardening")
        conn.execute("INSERT INTO hardening SELECT generate_series(1, 100)")
    open_engine(rt, "app").take_backup("full")
    with connect(sandbox.dsn) as conn:
        conn.execute("INSERT INTO hardening SELECT generate_series(101, 150)")
    open_engine(rt, "app").take_backup("log")
    yield table_hashes(sandbox.dsn)


def test_links_the_os_user_plants_before_and_during_a_restore_are_never_followed(
    rt: Runtime, home: Path, victims: tuple[Path, Path, Path], chain: dict[str, tuple[int, str]]
) -> None:
    victim, vdir, empty = victims
    into = home / "r"
    wal = home / ".r.drkit-wal"
    # before: the log beside the restore and the WAL directory's name point at root's files
    assert _as_postgres("ln", "-s", str(victim), str(home / "r.log"))
    assert _as_postgres("ln", "-s", str(vdir), str(wal))
    planted: list[tuple[str, bool]] = []

    def plant(what: str, _frac: float) -> None:
        # during: whatever root is about to write, the OS user tries to point at the victims
        if what.startswith("full"):
            for name in ("postgresql.auto.conf", "PG_VERSION", "recovery.signal", "pg_hba.conf"):
                planted.append((name, _as_postgres("ln", "-s", str(victim), str(into / name))))
            planted.append(("global", _as_postgres("ln", "-s", str(vdir), str(into / "global"))))
        elif what.startswith("log"):
            planted.append(("pg_wal", _as_postgres("ln", "-s", str(vdir), str(wal / "pg_wal"))))

    res = restore(rt, "app", into=into, keep_running=True, on_step=plant)
    try:
        assert {p for p, _ in planted} >= {"postgresql.auto.conf", "pg_wal"}
        assert not any(ok for _, ok in planted), f"the OS user could write where root was working: {planted}"
        assert table_hashes(restored_dsn(res))["public.hardening"] == chain["public.hardening"]
        st = os.lstat(home / "r.log")
        assert not os.path.islink(home / "r.log") and st.st_uid == PG.pw_uid
        assert os.lstat(into).st_uid == PG.pw_uid and os.lstat(into).st_mode & 0o777 == 0o700
    finally:
        _stop(rt, res)
    _intact(victim, vdir, empty)


def test_an_into_that_is_the_os_users_link_is_refused(
    rt: Runtime, home: Path, victims: tuple[Path, Path, Path], chain: dict[str, tuple[int, str]]
) -> None:
    victim, vdir, empty = victims
    for name, target in (("to-file", victim), ("to-empty-dir", empty)):
        assert _as_postgres("ln", "-s", str(target), str(home / name))
        with pytest.raises(RestoreError, match="symbolic link owned by uid .*nothing was changed"):
            restore(rt, "app", into=home / name)
    _intact(victim, vdir, empty)


def test_swapping_into_for_a_link_mid_restore_is_refused(
    rt: Runtime, home: Path, victims: tuple[Path, Path, Path], chain: dict[str, tuple[int, str]]
) -> None:
    victim, vdir, empty = victims
    into = home / "r"

    def swap(what: str, _frac: float) -> None:
        if what.startswith("full"):  # the parent is the OS user's: it may rename what root made there
            assert _as_postgres("mv", str(into), str(home / "moved"))
            assert _as_postgres("ln", "-s", str(empty), str(into))

    with pytest.raises(DrkitError, match="symbolic link"):
        restore(rt, "app", into=into, on_step=swap)
    _intact(victim, vdir, empty)


def test_a_restored_cluster_refuses_tcp_and_its_socket_is_private(
    rt: Runtime, scratch: Path, chain: dict[str, tuple[int, str]]
) -> None:
    res = restore(rt, "app", into=scratch / "r 'one'", keep_running=True)  # quoted wherever it goes
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(make_conninfo(host="127.0.0.1", port=str(res.port), user="postgres",
                                          dbname="postgres", connect_timeout="3")).close()
        sock = res.data_dir / f".s.PGSQL.{res.port}"
        assert os.stat(sock).st_mode & 0o777 == 0o700 and os.stat(res.data_dir).st_mode & 0o777 == 0o700
        with connect(restored_dsn(res)) as conn:  # root, through the socket, as the operator would
            assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
        # another local user cannot log in, even as postgres without a password
        nobody = subprocess.run(
            ["runuser", "-u", "nobody", "--", str(rt.bin_dir("app") / "psql"), "-h", str(res.data_dir), "-p",
             str(res.port), "-U", "postgres", "-w", "-c", "SELECT 1"], capture_output=True, text=True, check=False)
        assert nobody.returncode != 0
    finally:
        _stop(rt, res)


def test_database_names_are_quoted_in_verification(sandbox: Sandbox, rt: Runtime, scratch: Path) -> None:
    names = ("my db", "x port=1")
    with connect(sandbox.dsn) as conn:
        for db in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}"')
            conn.execute(f'CREATE DATABASE "{db}"')
    with connect(make_conninfo(sandbox.dsn, dbname="x port=1")) as conn:
        conn.execute("CREATE TABLE only_here AS SELECT generate_series(1, 3) AS id")
        conn.execute("CREATE INDEX ON only_here(id)")
    full = open_engine(rt, "app").take_backup("full")
    # The SQL checks run in the DSN's database, "x port=1": on the restored server, not on port 1.
    cfg = policy_variant(sandbox, scratch, {
        "dsn": make_conninfo(sandbox.dsn, dbname="x port=1"),
        "verify": {"checks": ["amcheck", "visibility", "SELECT count(*) = 3 FROM only_here",
                              "SELECT current_setting('listen_addresses') = ''"]}})
    vrt = Runtime(load_policy(cfg))
    try:
        report = verify_backup(vrt, "app", full.id)
        assert report.passed, report.error
        assert vrt.catalog.get(full.id).status == "verified"
        assert [c.name for c in report.checks if c.ok][-2:] == [
            "sql: SELECT count(*) = 3 FROM only_here", "sql: SELECT current_setting('listen_addresses') = ''"]
    finally:
        vrt.close()
        with connect(sandbox.dsn) as conn:
            for db in names:
                conn.execute(f'DROP DATABASE "{db}"')


def test_validation_leaves_the_restored_databases_as_backed_up(sandbox: Sandbox, rt: Runtime, scratch: Path) -> None:
    with connect(sandbox.dsn) as conn:
        for db in ("plain", "has_amcheck"):
            conn.execute(f"DROP DATABASE IF EXISTS {db}")
            conn.execute(f"CREATE DATABASE {db}")
    for db in ("plain", "has_amcheck"):
        with connect(make_conninfo(sandbox.dsn, dbname=db)) as conn:
            conn.execute("CREATE TABLE t AS SELECT generate_series(1, 10) AS id")
            conn.execute("CREATE INDEX ON t(id)")
    with connect(make_conninfo(sandbox.dsn, dbname="has_amcheck")) as conn:
        conn.execute("CREATE EXTENSION amcheck")  # the user's own: it must stay
    open_engine(rt, "app").take_backup("full")
    try:
        # `drkit restore` then validates the restored cluster (the restore flow's validate-restored task)
        res = restore(rt, "app", into=scratch / "r", keep_running=True)
        try:
            checks = run_checks(rt, "app", res.port, str(res.data_dir))
            assert [c.name for c in checks] == ["amcheck", "visibility map"]
            assert all(c.ok for c in checks), [(c.name, c.detail) for c in checks]
            pg_dump = str(rt.bin_dir("app") / "pg_dump")
            for db in ("postgres", "template1", "plain", "has_amcheck"):
                theirs = _schema(pg_dump, make_conninfo(sandbox.dsn, dbname=db))
                assert _schema(pg_dump, restored_dsn(res, db)) == theirs, db
            with connect(restored_dsn(res, "has_amcheck")) as conn:
                assert conn.execute("SELECT extname FROM pg_extension WHERE extname IN ('amcheck', 'pg_visibility')"
                                    ).fetchall() == [("amcheck",)]
        finally:
            _stop(rt, res)
    finally:
        with connect(sandbox.dsn) as conn:
            for db in ("plain", "has_amcheck"):
                conn.execute(f"DROP DATABASE {db}")


def _schema(pg_dump: str, conninfo: str) -> list[str]:
    out = subprocess.run([pg_dump, "--schema-only", "--no-password", "-d", conninfo], capture_output=True,
                         text=True, check=True).stdout
    # \restrict lines carry a random key per run (PostgreSQL 15.14+)
    return [ln for ln in out.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict"))]


def test_a_backup_without_pg_hba_conf_gets_peer_auth_on_the_socket_only(
    sandbox: Sandbox, rt: Runtime, scratch: Path
) -> None:
    """Debian keeps pg_hba.conf outside the data directory, so its backups hold none."""
    data = sandbox.primary.data_dir
    etc = scratch / "etc"
    etc.mkdir()
    os.chown(etc, PG.pw_uid, PG.pw_gid)
    conf = data / "postgresql.conf"
    original_conf = conf.read_bytes()
    for name in ("pg_hba.conf", "pg_ident.conf"):
        shutil.move(data / name, etc / name)
    (etc / "files.conf").write_text(f"hba_file = '{etc}/pg_hba.conf'\nident_file = '{etc}/pg_ident.conf'\n")
    with open(conf, "a") as fh:
        fh.write(f"include_if_exists '{etc}/files.conf'\n")
    sandbox.primary.stop()
    sandbox.primary.start()
    try:
        with connect(sandbox.dsn) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS debianlike(id int)")
            conn.execute("TRUNCATE debianlike")
            conn.execute("INSERT INTO debianlike VALUES (1), (2)")
        open_engine(rt, "app").take_backup("full")
        (etc / "files.conf").unlink()  # another host: the restored server must not find the source's files
        res = restore(rt, "app", into=scratch / "r", keep_running=True)
        try:
            with connect(restored_dsn(res)) as conn:
                assert conn.execute("SELECT count(*) FROM debianlike").fetchone() == (2,)
                rules = conn.execute("SELECT type, database, user_name, auth_method, options "
                                     "FROM pg_hba_file_rules WHERE error IS NULL").fetchall()
                assert rules == [("local", ["all"], ["all"], "peer", ["map=drkit"])]
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(make_conninfo(host="127.0.0.1", port=str(res.port), user="postgres",
                                              dbname="postgres", connect_timeout="3")).close()
        finally:
            _stop(rt, res)
    finally:
        sandbox.primary.stop()
        for name in ("pg_hba.conf", "pg_ident.conf"):
            shutil.move(etc / name, data / name)
        conf.write_bytes(original_conf)
        sandbox.primary.start()


def test_a_backup_whose_pg_hba_shuts_drkit_out_fails_at_once_with_one_line(
    sandbox: Sandbox, rt: Runtime, scratch: Path
) -> None:
    """A source whose pg_hba.conf only lets the OS user in over the socket (peer, no map): say so."""
    hba = sandbox.primary.data_dir / "pg_hba.conf"
    original = hba.read_bytes()
    hba.write_bytes(b"local all all peer\n" + original)  # first match wins: root is refused on the socket
    try:
        open_engine(rt, "app").take_backup("full")  # (the sandbox's DSN is TCP: the backup still works)
    finally:
        hba.write_bytes(original)
    with pytest.raises(RestoreError) as info:
        restore(rt, "app", into=scratch / "r", recovery_timeout=600)
    message = str(info.value)
    assert "pg_hba.conf" in message and "local all postgres" in message and "\n" not in message
