"""A DSN's password never reaches a command line (ps, /proc/*/cmdline), and password logins still work.

pg_basebackup and pg_rewind are wrapped by shims (a bin_dir of links to the real binaries, except these two)
that record their argv and whether PGPASSWORD was in their environment, then exec the real binary.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drkit.engines.postgres.pgctl import LocalCluster, free_port
from drkit.engines.postgres.replica import command_line_conninfo, create_standby, fence, promote, rewind_as_standby
from drkit.sandbox import create_sandbox
from tests.support.pgdata import connect

PASSWORD = "s3cret pass'word\\x"  # spaces, a quote and a backslash: quoting must survive the split
ROLE = "drkit_repl"


def test_the_split_keeps_everything_but_the_password_on_the_command_line() -> None:
    dsn = make_conninfo("", host="127.0.0.1", port=5433, user=ROLE, dbname="app db", password=PASSWORD,
                        sslmode="prefer")
    line, env = command_line_conninfo(dsn)
    assert PASSWORD not in line and "s3cret" not in line
    assert env == {"PGPASSWORD": PASSWORD}
    assert conninfo_to_dict(line) == {"host": "127.0.0.1", "port": "5433", "user": ROLE, "dbname": "app db",
                                      "sslmode": "prefer"}
    uri_line, uri_env = command_line_conninfo(f"postgresql://{ROLE}:hunter2@db.example:6000/app")
    assert "hunter2" not in uri_line and uri_env == {"PGPASSWORD": "hunter2"}
    assert conninfo_to_dict(uri_line)["host"] == "db.example"
    line, env = command_line_conninfo("host=h user=u")
    assert conninfo_to_dict(line) == {"host": "h", "user": "u"} and env == {}


def _shim_bin(real: Path, shim: Path, log: Path) -> Path:
    shim.mkdir()
    for entry in real.iterdir():
        if entry.name not in ("pg_basebackup", "pg_rewind"):
            (shim / entry.name).symlink_to(entry)
    for name in ("pg_basebackup", "pg_rewind"):
        script = shim / name
        script.write_text(
            "#!/bin/sh\n"
            f"{{ printf '%s\\0' \"$0\" \"$@\"; printf 'PGPASSWORD=%s\\n' \"${{PGPASSWORD:+set}}\"; }} >> {log}\n"
            f"exec {real / name} \"$@\"\n")
        script.chmod(0o755)
    return shim


@pytest.fixture
def servers() -> Iterator[list[LocalCluster]]:
    started: list[LocalCluster] = []
    yield started
    for c in started:
        c.stop("immediate")


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_standby_and_rewind_with_a_scram_password_keep_it_off_every_command_line(
    scratch: Path, servers: list[LocalCluster]
) -> None:
    sb = create_sandbox(scratch / "world", fsync=False)
    pri = sb.primary
    servers.append(pri)
    with connect(pri.dsn()) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION SUPERUSER PASSWORD {}").format(
            sql.Identifier(ROLE), sql.Literal(PASSWORD)))
    hba = pri.data_dir / "pg_hba.conf"
    hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n"
                   f"host replication {ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    pri.pg_ctl("reload")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(pri.dsn(user=ROLE), connect_timeout=5).close()  # the password is really required
    secret_dsn = make_conninfo(pri.dsn(user=ROLE), password=PASSWORD)

    log = scratch / "argv.log"
    log.touch()
    os.chmod(log, 0o666)  # the shims run as the postgres OS user
    os.chmod(scratch, os.stat(scratch).st_mode | stat.S_IXOTH)
    shim = _shim_bin(pri.bin_dir, scratch / "shim-bin", log)

    sby = create_standby(secret_dsn, data_dir=scratch / "world" / "pg" / "standby", port=free_port(),
                         slot="dr1", bin_dir=shim, os_user=pri.os_user, timeout=90)
    servers.append(sby)  # create_standby waited until it streams: the password reached libpq
    with connect(sby.dsn()) as conn:
        row = conn.execute("SELECT sender_port FROM pg_stat_wal_receiver").fetchone()
    assert row is not None and row[0] == pri.port

    # fail over, then rewind the old primary as a standby of the new one, again with the password
    fence(pri)
    promote(sby.dsn(), timeout=30)
    new_primary_dsn = make_conninfo(sby.dsn(user=ROLE), password=PASSWORD)
    old = LocalCluster(pri.data_dir, pri.port, shim, pri.os_user, log_file=pri.log_file)
    outcome = rewind_as_standby(old, new_primary_dsn, slot="pri1", timeout=120, rebuild_on_failure=False)
    assert outcome in ("rewound", "no rewind required")
    with connect(pri.dsn()) as conn:
        assert conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone() == ("streaming",)

    recorded = log.read_bytes()
    argvs = [chunk.split(b"\0") for chunk in recorded.split(b"\n") if chunk.strip(b"\0")]
    runs = [a for a in argvs if a[0].endswith((b"pg_basebackup", b"pg_rewind"))]
    assert {Path(a[0].decode()).name for a in runs} == {"pg_basebackup", "pg_rewind"}
    assert PASSWORD.encode() not in recorded and b"s3cret" not in recorded
    assert all(any(ROLE.encode() in arg for arg in a) for a in runs)  # the command line still names the role
    assert recorded.count(b"PGPASSWORD=set") == len(runs)  # the secret went through the environment
