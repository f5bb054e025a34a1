"""Opening a restored cluster to clients (the corruption runbook's switch): the backup's own listen settings.

A restored cluster listens on a private Unix socket only; before clients are switched to it, drkit
restarts it with the backup's own listen_addresses and pg_hba.conf. It must never relax authentication
(a backup without pg_hba.conf stays peer-only: TCP clients are refused) and, as root, never write
through a link the database's OS user planted in the data directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import pq
from psycopg.conninfo import make_conninfo

from drkit.engines import open_engine
from drkit.engines.postgres.pgctl import LocalCluster
from drkit.engines.postgres.pgrestore import hba_is_drkit_peer_only, open_to_clients
from drkit.engines.postgres.restore import restore
from drkit.errors import EngineError
from drkit.plans import RestoreResult
from drkit.runtime import Runtime
from drkit.sandbox import Sandbox
from tests.support.pgdata import connect

pytestmark = [pytest.mark.slow, pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="plays root against the postgres OS user")]

PG = pwd.getpwnam("postgres")


def _ping(port: int) -> pq.Ping:
    return pq.PGconn.ping(make_conninfo(host="127.0.0.1", port=str(port), connect_timeout="3").encode())


def _cluster(rt: Runtime, res: RestoreResult) -> LocalCluster:
    return LocalCluster(res.data_dir, res.port, rt.bin_dir("app"), rt.os_user("app"))


def _plant(link: Path, target: Path) -> None:
    """A link as the database's OS user would make it (it owns the data directory)."""
    os.symlink(target, link)
    os.lchown(link, PG.pw_uid, PG.pw_gid)


@pytest.fixture
def victim(scratch: Path) -> Iterator[Path]:
    path = scratch / "root-only" / "victim"
    path.parent.mkdir()
    path.write_text("precious\n")
    os.chmod(path, 0o644)
    yield path
    st = os.lstat(path)
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o644) and path.read_text() == "precious\n", "victim changed"


@pytest.fixture
def ledger(sandbox: Sandbox) -> None:
    with connect(sandbox.dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS opened(id int PRIMARY KEY)")
        conn.execute("TRUNCATE opened")
        conn.execute("INSERT INTO opened SELECT generate_series(1, 7)")


def test_a_backup_with_its_own_pg_hba_lets_its_clients_in_over_tcp(
    sandbox: Sandbox, rt: Runtime, scratch: Path, ledger: None, victim: Path
) -> None:
    open_engine(rt, "app").take_backup("full")
    res = restore(rt, "app", into=scratch / "r", keep_running=True)
    cluster = _cluster(rt, res)
    try:
        assert _ping(res.port) == pq.Ping.NO_RESPONSE  # restored: socket only
        assert not hba_is_drkit_peer_only(res.data_dir)
        hba = (res.data_dir / "pg_hba.conf").read_bytes()
        # the OS user plants a link where root writes the new postgresql.auto.conf first
        _plant(res.data_dir / ".postgresql.auto.conf.drkit-tmp", victim)
        opened = open_to_clients(cluster)
        assert opened.listen_addresses == "127.0.0.1" and not opened.peer_only  # the sandbox's own setting
        assert "listen_addresses = ''" in opened.removed
        with connect(make_conninfo(sandbox.dsn, port=str(res.port))) as conn:  # the source's credentials
            assert conn.execute("SELECT count(*) FROM opened").fetchone() == (7,)
        assert (res.data_dir / "pg_hba.conf").read_bytes() == hba
        auto = os.lstat(res.data_dir / "postgresql.auto.conf")
        assert (auto.st_uid, auto.st_mode & 0o777) == (PG.pw_uid, 0o600)
        # opening again changes nothing and still ends accepting connections
        assert open_to_clients(cluster).removed == []
        assert _ping(res.port) == pq.Ping.OK
    finally:
        cluster.stop()
    assert _ping(res.port) == pq.Ping.NO_RESPONSE


def test_a_backup_without_pg_hba_stays_peer_only_and_tcp_clients_are_refused(
    sandbox: Sandbox, rt: Runtime, scratch: Path, ledger: None
) -> None:
    data = sandbox.primary.data_dir
    shutil.move(data / "pg_hba.conf", scratch / "pg_hba.conf")  # the running source keeps what it loaded
    try:
        open_engine(rt, "app").take_backup("full")
    finally:
        shutil.move(scratch / "pg_hba.conf", data / "pg_hba.conf")
    res = restore(rt, "app", into=scratch / "r", keep_running=True)
    cluster = _cluster(rt, res)
    try:
        assert hba_is_drkit_peer_only(res.data_dir)
        hba = (res.data_dir / "pg_hba.conf").read_bytes()
        opened = open_to_clients(cluster)
        assert opened.peer_only and opened.tcp_clients.startswith("refused")
        assert _ping(res.port) == pq.Ping.OK  # it listens on TCP …
        with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):  # … and lets nobody in
            psycopg.connect(make_conninfo(sandbox.dsn, port=str(res.port), connect_timeout="3")).close()
        assert (res.data_dir / "pg_hba.conf").read_bytes() == hba
    finally:
        cluster.stop()


def test_a_postgresql_auto_conf_that_is_a_link_is_refused(
    sandbox: Sandbox, rt: Runtime, scratch: Path, ledger: None, victim: Path
) -> None:
    open_engine(rt, "app").take_backup("full")
    res = restore(rt, "app", into=scratch / "r", keep_running=True)
    cluster = _cluster(rt, res)
    try:
        (res.data_dir / "postgresql.auto.conf").unlink()
        _plant(res.data_dir / "postgresql.auto.conf", victim)
        with pytest.raises(EngineError, match="symbolic link"):
            open_to_clients(cluster)
        assert _ping(res.port) == pq.Ping.NO_RESPONSE
    finally:
        cluster.stop()
