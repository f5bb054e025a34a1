"""Replica primitives on real PostgreSQL: standby, lag, failover, rewind (and its CHECKPOINT trap), switchback.

Each test makes its own primary (drkit.sandbox) and standby in a scratch directory, because it kills,
promotes and rewinds them; every server started here is stopped in ``finally``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from drkit.engines.postgres.lsn import parse_lsn
from drkit.engines.postgres.pgctl import LocalCluster, free_port
from drkit.engines.postgres.probe import probe_db
from drkit.engines.postgres.replica import (
    HEARTBEAT_TABLE,
    ReplicaError,
    ReplicaTimeout,
    TimelineDivergedError,
    _pg_rewind,
    apply_node_settings,
    confirm_writable,
    create_standby,
    current_timeline,
    drop_stale_slots,
    ensure_slot,
    fence,
    promote,
    replication_lag,
    rewind_as_standby,
    standby_lag,
    start_standby,
    stop_for_switchover,
    wait_caught_up,
    wait_replayed,
)
from drkit.sandbox import create_sandbox
from tests.support.pgdata import connect, table_hashes

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(180)]


@contextmanager
def _servers() -> Iterator[list[LocalCluster]]:
    started: list[LocalCluster] = []
    try:
        yield started
    finally:
        for c in started:
            c.stop("immediate")


def _write(dsn: str, ids: range, pad: int = 20) -> None:
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO orders SELECT g, repeat('x', %s::int) FROM generate_series(%s::int, %s::int) g",
                     [pad, ids.start, ids.stop - 1])


def _ids(dsn: str) -> list[int]:
    with connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY id").fetchall()]


def _one(dsn: str, query: str) -> object:
    with connect(dsn) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]


def _ckpt_tli(dsn: str) -> int:
    return int(str(_one(dsn, "SELECT timeline_id FROM pg_control_checkpoint()")))


def _auto_conf(cluster: LocalCluster) -> dict[str, str]:
    """The effective (last) value of each key in postgresql.auto.conf."""
    out: dict[str, str] = {}
    for line in (cluster.data_dir / "postgresql.auto.conf").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip().strip("'")
    return out


def test_failover_rewind_and_planned_switchback(scratch: Path) -> None:
    timings: dict[str, float] = {}
    with _servers() as servers:
        sb = create_sandbox(scratch / "world", fsync=False)
        pri = sb.primary
        servers.append(pri)
        with connect(pri.dsn()) as conn:
            conn.execute("CREATE DATABASE app")
        app = pri.dsn("app")

        # -- standby ---------------------------------------------------------------------------------
        t0 = time.monotonic()
        sby = create_standby(pri.dsn(), data_dir=scratch / "world" / "pg" / "standby", port=free_port(),
                             slot="dr1", bin_dir=pri.bin_dir, os_user=pri.os_user, timeout=60)
        servers.append(sby)
        timings["create standby (basebackup + start + streaming)"] = time.monotonic() - t0
        assert _auto_conf(sby)["port"] == str(sby.port) and _auto_conf(sby)["primary_slot_name"] == "dr1"
        # idempotent: a second call finds the running standby and only checks it
        again = create_standby(pri.dsn(), data_dir=sby.data_dir, port=sby.port, slot="dr1",
                               bin_dir=pri.bin_dir, os_user=pri.os_user, timeout=30)
        assert again.data_dir == sby.data_dir

        _write(app, range(1, 101))
        wait_caught_up(pri.dsn(), "dr1", timeout=15)
        lag = replication_lag(pri.dsn(), "dr1")
        assert lag.state == "streaming" and lag.bytes == 0 and lag.seconds is not None and lag.seconds < 5
        # the standby's application_name is its slot name (cluster_name), so either finds it
        assert _one(pri.dsn(), "SELECT application_name FROM pg_stat_replication") == "dr1"
        assert _ids(sby.dsn("app")) == list(range(1, 101))
        slag = standby_lag(sby.dsn())
        assert slag.state == "streaming" and slag.bytes == 0 and slag.last_replay_at is not None
        assert replication_lag(pri.dsn(), "nobody").state == "absent"
        with pytest.raises(ReplicaTimeout, match="'nobody' did not replay"):
            wait_caught_up(pri.dsn(), "nobody", timeout=0.5)

        assert probe_db(pri.dsn(), require_writable=True).ok
        ro = probe_db(sby.dsn(), require_writable=True)
        assert not ro.ok and ro.detail == "read-only (in recovery)" and ro.writable is False
        assert probe_db(sby.dsn()).ok

        # -- unplanned failover ---------------------------------------------------------------------
        _write(app, range(101, 151))
        wait_caught_up(pri.dsn(), "dr1", timeout=15)
        assert fence(pri).action == "stopped"  # pg_ctl -m immediate stop: the region is gone
        assert fence(pri).action == "already down"
        assert fence(pri.dsn()).action == "unreachable"
        deadline = time.monotonic() + 10
        while standby_lag(sby.dsn()).state == "streaming" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert standby_lag(sby.dsn()).state != "streaming"

        t_promote = time.monotonic()
        promo = promote(sby.dsn(), timeout=30)
        first_write = confirm_writable(sby.dsn())
        timings["promotion to first write"] = time.monotonic() - t_promote
        timings["pg_promote"] = promo.seconds
        assert promo.timeline == 2 and not promo.already_primary
        assert _ckpt_tli(sby.dsn()) == 2  # the CHECKPOINT after pg_promote happened (ours or the server's)
        assert probe_db(sby.dsn(), require_writable=True).ok

        twice = promote(sby.dsn(), timeout=30)
        assert twice.already_primary and twice.timeline == 2 and twice.seconds == 0 and not twice.checkpointed
        assert current_timeline(sby.dsn()) == 2
        assert confirm_writable(sby.dsn()) >= first_write
        assert _ids(sby.dsn("app")) == list(range(1, 151))  # everything acknowledged and replicated is there
        _write(sby.dsn("app"), range(151, 201))

        # -- failback, step 1: the old primary follows the new one (pg_rewind) ----------------------
        t0 = time.monotonic()
        outcome = rewind_as_standby(pri, sby.dsn(), slot="pri1", timeout=90, rebuild_on_failure=False)
        timings["rewind old primary + start + streaming"] = time.monotonic() - t0
        assert outcome == "rewound"
        conf = _auto_conf(pri)
        assert conf["port"] == str(pri.port) and conf["primary_slot_name"] == "pri1"  # not the source's
        wait_caught_up(sby.dsn(), "pri1", timeout=15)
        assert _ids(app) == list(range(1, 201))
        assert replication_lag(sby.dsn(), "pri1").state == "streaming"
        assert rewind_as_standby(pri, sby.dsn(), slot="pri1", timeout=30) == "already streaming"

        # -- failback, step 2: planned switchover back, no data loss --------------------------------
        _write(sby.dsn("app"), range(201, 251))
        wait_caught_up(sby.dsn(), "pri1", timeout=15)
        t_stop = time.monotonic()
        ckpt = stop_for_switchover(sby)
        replayed = wait_replayed(pri.dsn(), ckpt, inclusive=False, timeout=30)
        back = promote(pri.dsn(), timeout=30)
        confirm_writable(pri.dsn())
        timings["switchover write-unavailability (stop -> first write)"] = time.monotonic() - t_stop
        assert replayed > ckpt and back.timeline == 3 and not back.already_primary
        assert stop_for_switchover(sby) == ckpt  # idempotent on a stopped primary

        t0 = time.monotonic()
        outcome = rewind_as_standby(sby, pri.dsn(), slot="dr1", timeout=60, rebuild_on_failure=False)
        timings["rewind DR as standby after switchover"] = time.monotonic() - t0
        assert outcome == "no rewind required"
        assert _auto_conf(sby)["port"] == str(sby.port) and _auto_conf(sby)["primary_slot_name"] == "dr1"
        _write(app, range(251, 261))
        wait_caught_up(pri.dsn(), "dr1", timeout=15)
        assert _ids(app) == list(range(1, 261))  # zero rows lost across failover and switchback
        assert table_hashes(app) == table_hashes(sby.dsn("app"))
        assert _one(pri.dsn(), f"SELECT timeline FROM {HEARTBEAT_TABLE}") == 3
        # slots: the new primary has its standby's; the demoted DR node has dropped its stale 'pri1'
        assert drop_stale_slots(pri.dsn(), keep={"dr1"}) == []
        assert _one(sby.dsn(), "SELECT count(*) FROM pg_replication_slots") == 0
        assert standby_lag(sby.dsn()).state == "streaming"

        # a node whose disk was half lost: pg_rewind fails, the fallback rebuilds it from a base backup
        lost = LocalCluster(scratch / "world" / "pg" / "third", free_port(), pri.bin_dir, pri.os_user)
        servers.append(lost)
        lost.data_dir.mkdir()
        (lost.data_dir / "PG_VERSION").write_text("15\n")
        t0 = time.monotonic()
        assert rewind_as_standby(lost, pri.dsn(), slot="dr2", timeout=60) == "rebuilt"
        timings["rebuild after failed rewind"] = time.monotonic() - t0
        assert [p.name.split(".drkit-old-")[0] for p in lost.data_dir.parent.glob("third.drkit-old-*")] == ["third"]
        wait_caught_up(pri.dsn(), "dr2", timeout=15)
        assert table_hashes(lost.dsn("app")) == table_hashes(app)
    print("\nreplica timings (s): " + ", ".join(f"{k}: {v:.2f}" for k, v in timings.items()))


def test_rewind_without_checkpoint_is_detected_then_repaired(scratch: Path) -> None:
    """The trap: pg_promote() without CHECKPOINT → pg_rewind says 'no rewind required' → the node loops."""
    with _servers() as servers:
        sb = create_sandbox(scratch / "world", fsync=False)
        pri = sb.primary
        servers.append(pri)
        with connect(pri.dsn()) as conn:
            conn.execute("CREATE DATABASE app")
        sby = create_standby(pri.dsn(), data_dir=scratch / "world" / "pg" / "standby", port=free_port(),
                             slot="dr1", bin_dir=pri.bin_dir, os_user=pri.os_user, timeout=60)
        servers.append(sby)
        # enough dirty buffers on the standby that the server's own (spread) post-promotion checkpoint
        # takes many seconds: the window in which the trap is armed
        _write(pri.dsn("app"), range(1, 30001), pad=100)
        wait_caught_up(pri.dsn(), "dr1", timeout=30)
        # a reachable primary given by DSN is fenced in SQL: read-only, client sessions cut
        assert fence(pri.dsn()).action == "fenced read-only"
        with pytest.raises(ReplicaError, match="read-only"):
            confirm_writable(pri.dsn())
        assert fence(pri).action == "stopped"

        # a runbook that promotes and crashes (or forgets) before its CHECKPOINT
        _one(sby.dsn(), "SELECT pg_promote(true, 30)")
        assert current_timeline(sby.dsn()) == 2
        assert _ckpt_tli(sby.dsn()) == 1, "the trap is not armed: the server checkpointed on its own already"

        t0 = time.monotonic()
        assert _pg_rewind(pri, sby.dsn(), timeout=60) == "no rewind required"  # the silent symptom
        ensure_slot(sby.dsn(), "pri1")
        apply_node_settings(pri.data_dir, port=pri.port, slot="pri1", os_user=pri.os_user)
        assert "default_transaction_read_only" not in _auto_conf(pri)  # the fence does not follow it back
        with pytest.raises(TimelineDivergedError, match="not in this server's history|forked off"):
            start_standby(pri, timeout=30, expected_timeline=2)
        detected = time.monotonic() - t0
        assert detected < 20 and not pri.is_running()

        # the fix: promote() on the already-promoted node makes up the missing CHECKPOINT ...
        armed = _ckpt_tli(sby.dsn()) == 1
        repair = promote(sby.dsn(), timeout=30)
        assert repair.already_primary and repair.timeline == 2 and repair.checkpointed == armed
        assert _ckpt_tli(sby.dsn()) == 2
        # ... and rewind_as_standby checks it itself: now a real rewind, and the node streams
        _write(sby.dsn("app"), range(30001, 30011))
        assert rewind_as_standby(pri, sby.dsn(), slot="pri1", timeout=90, rebuild_on_failure=False) == "rewound"
        wait_caught_up(sby.dsn(), "pri1", timeout=15)
        assert parse_lsn(str(_one(pri.dsn(), "SELECT pg_last_wal_replay_lsn()::text"))) > 0
        assert _ids(pri.dsn("app")) == list(range(1, 30011))
        assert table_hashes(pri.dsn("app")) == table_hashes(sby.dsn("app"))
    print(f"\ntrap detected {detected:.2f}s after pg_rewind started")


def test_node_settings_are_idempotent_and_own_the_node_keys(scratch: Path) -> None:
    data = scratch / "node"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    (scratch / "other").mkdir()
    (scratch / "other" / "PG_VERSION").write_text("15\n")
    (data / "postgresql.conf").write_text(f"port = 5432\nunix_socket_directories = '{scratch / 'other'}'\n")
    (data / "postgresql.auto.conf").write_text(
        "# Do not edit this file manually!\n"
        "primary_conninfo = 'host=a port=1'\nport = 999\nprimary_slot_name = 'theirs'\n"
        "default_transaction_read_only = 'on'\nwork_mem = '8MB'\nprimary_conninfo = 'host=b port=2'\n")
    for _ in range(2):
        apply_node_settings(data, port=26001, slot="mine", os_user=None)
    text = (data / "postgresql.auto.conf").read_text()
    assert text.count("primary_conninfo") == 1 and "host=b port=2" in text and "host=a" not in text
    assert text.count("port = ") == 1 and text.count("# drkit node settings") == 1
    conf = {k.strip(): v.strip().strip("'") for k, v in
            (ln.split("=", 1) for ln in text.splitlines() if "=" in ln and not ln.startswith("#"))}
    assert conf["port"] == "26001" and conf["primary_slot_name"] == "mine" and conf["cluster_name"] == "mine"
    assert conf["work_mem"] == "8MB" and "default_transaction_read_only" not in conf
    # the socket goes beside the data directory, not into another cluster's
    assert conf["unix_socket_directories"] == str(scratch / "node.sock") and (scratch / "node.sock").is_dir()
    apply_node_settings(data, port=26001, slot="mine", os_user=None, primary_conninfo="host=c port=3 dbname='x'")
    assert "primary_conninfo = 'host=c port=3 dbname=''x'''" in (data / "postgresql.auto.conf").read_text()
    (data / "postgresql.conf").write_text("unix_socket_directories = '/var/run/postgresql'\n")
    apply_node_settings(data, port=26001, slot="mine", os_user=None)
    assert "unix_socket_directories" not in (data / "postgresql.auto.conf").read_text()
