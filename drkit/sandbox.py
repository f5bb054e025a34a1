"""A throwaway local PostgreSQL primary wired to drkit: the demo's world and the tests' fixture.

It is made from the system's PostgreSQL binaries under a directory of our own
(owned by the ``postgres`` OS user when we run as root), with WAL archiving
into drkit's spool, a SQLite catalog and a filesystem tier beside it, and a
policy file that names them all.
"""

from __future__ import annotations

import base64
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

from drkit.config import default_bin_dir
from drkit.engines.postgres.engine import ARCHIVE_SCRIPT_NAME, PostgresEngine
from drkit.engines.postgres.pgctl import LocalCluster, effective_os_user, free_port, make_owned_dir

KEY_ENV = "DRKIT_BACKUP_KEY"


@dataclass
class Sandbox:
    root: Path
    db: str
    primary: LocalCluster
    policy_path: Path
    key_b64: str
    spool: Path

    @property
    def dsn(self) -> str:
        return self.primary.dsn()

    def environ(self) -> dict[str, str]:
        return {**os.environ, KEY_ENV: self.key_b64}

    def stop(self) -> None:
        self.primary.stop("fast")


def _open_path(path: Path) -> None:
    """Make every parent of ``path`` traversable, so the postgres OS user can reach it."""
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)


def create_sandbox(
    root: Path,
    *,
    db: str = "app",
    port: int | None = None,
    fsync: bool = True,
    shared_buffers: str = "128MB",
    archive_timeout: int = 0,
    key_b64: str | None = None,
) -> Sandbox:
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    _open_path(root)
    os_user = effective_os_user(None)
    bin_dir = default_bin_dir()
    port = port or free_port()
    spool = root / "spool" / db
    (root / "spool").mkdir(exist_ok=True)
    make_owned_dir(spool, os_user, 0o700)
    engine = PostgresEngine(db, dsn="", data_dir=root / "pg" / "primary", spool=spool, bin_dir=bin_dir,
                            os_user=os_user)
    shutil.copyfile(Path(__file__).parent / "engines" / "postgres" / "archive_wal.py", spool / ARCHIVE_SCRIPT_NAME)
    os.chmod(spool / ARCHIVE_SCRIPT_NAME, 0o755)
    (root / "pg").mkdir(exist_ok=True)
    os.chmod(root / "pg", 0o755)
    cluster = LocalCluster(root / "pg" / "primary", port, bin_dir, os_user, log_file=root / "pg" / "primary.log")
    conf = (
        "wal_level = replica\narchive_mode = on\n"
        f"archive_command = '{engine.archive_command}'\n"
        f"archive_timeout = {archive_timeout}\nwal_log_hints = on\nmax_wal_senders = 10\n"
        f"shared_buffers = '{shared_buffers}'\nmax_wal_size = '1GB'\n"
        f"fsync = {'on' if fsync else 'off'}\n"
    )
    cluster.initdb(checksums=True, extra_conf=conf)
    cluster.start()
    key_b64 = key_b64 or base64.b64encode(os.urandom(32)).decode()
    policy = {
        "catalog": "sqlite:///catalog.db",
        "encryption": {"key_env": KEY_ENV},
        "tiers": {"local": {"store": "filesystem", "path": "backups/local", "keep_days": 7}},
        "databases": {db: {
            "engine": "postgres",
            "dsn": cluster.dsn(),
            "data_dir": str(cluster.data_dir),
            "wal_spool": str(spool),
            "bin_dir": str(bin_dir),
            "timezone": "UTC",
        }},
        "approvals": {"approvers": ["dba@example.com"]},
    }
    policy_path = root / "drkit.yaml"
    policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return Sandbox(root=root, db=db, primary=cluster, policy_path=policy_path, key_b64=key_b64, spool=spool)
