"""A PostgreSQL database's operations behind ``drkit.engines.base.Engine``.

Backups stream the cluster's files and WAL through drkit's pipeline; restores lay a data directory
down and let PostgreSQL replay to the target; verification restores into a scratch cluster and runs
amcheck, the visibility checks and the policy's SQL checks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from drkit.catalog.records import BackupRecord
from drkit.engines.base import (
    BackupKind,
    ChainModel,
    CheckItem,
    EngineFeatures,
    OpenedRestore,
    Progress,
    SetupResult,
    StepCallback,
)
from drkit.engines.postgres.chain_model import POSTGRES_CHAIN
from drkit.engines.postgres.engine import PostgresEngine, server
from drkit.engines.postgres.pgctl import LocalCluster
from drkit.errors import ConfigError, RestoreError
from drkit.plans import RestorePlan, RestoreResult
from drkit.restore import make_plan
from drkit.runtime import Runtime

if TYPE_CHECKING:
    from drkit.health import ProbeResult
    from drkit.verify import CheckResult, VerifyReport

# The backup, restore and verify modules (psycopg, the pipeline) are imported by the methods that use them:
# `drkit restore-plan` and `drkit status` need none of them.


class PostgresDatabase:
    """``Engine`` for ``engine: postgres``."""

    def __init__(self, rt: Runtime, db: str) -> None:
        rt.policy.database(db)  # an unknown name is refused before anything else
        self._rt = rt
        self._db = db

    def __repr__(self) -> str:
        return f"PostgresDatabase({self._db!r})"

    @property
    def database(self) -> str:
        return self._db

    @property
    def features(self) -> EngineFeatures:
        return EngineFeatures(standby_restore=True, position_targets=True, new_chain_after_switch=True)

    @property
    def chain(self) -> ChainModel:
        return POSTGRES_CHAIN

    def server(self) -> PostgresEngine:
        return server(self._rt, self._db)

    def check(self) -> list[CheckItem]:
        return self.server().check()

    def probe_primary(self, *, timeout: float) -> ProbeResult:
        from drkit.engines.postgres.primary import active_primary
        from drkit.engines.postgres.probe import probe_db

        return probe_db(active_primary(self._rt, self._db).dsn, timeout=timeout)

    def setup(self) -> SetupResult:
        return self.server().setup()

    def require_ready(self) -> None:
        _ = self._rt.key  # a missing key fails here, before anything is written
        self.server().require_ready()

    def take_backup(self, kind: BackupKind, *, progress: Progress | None = None) -> BackupRecord | None:
        from drkit.engines.postgres import backup

        if kind == "log":
            return backup.take_log_backup(self._rt, self._db)
        return backup.take_base_backup(self._rt, self._db, kind, progress=progress)

    def plan_restore(self, target: datetime | None, *, position: str | None = None,
                     now: datetime | None = None) -> RestorePlan:
        return make_plan(self._rt, self._db, POSTGRES_CHAIN, target, now, position=position)

    def restore(self, plan: RestorePlan, into: str, *, port: int | None = None, keep_running: bool = False,
                on_step: StepCallback | None = None) -> RestoreResult:
        from drkit.engines.postgres import restore as pg_restore

        return pg_restore.restore(self._rt, self._db, into=Path(into).absolute(), plan=plan, port=port,
                               keep_running=keep_running, on_step=on_step)

    def validate_restored(self, result: RestoreResult) -> list[CheckResult]:
        if result.port is None or not result.running:
            raise RestoreError(f"the restored cluster in {result.location} is not running; nothing to validate")
        from drkit.engines.postgres import verify

        return verify.run_checks(self._rt, self._db, result.port, result.location)

    def release_restored(self, result: RestoreResult) -> None:
        if result.port is not None:
            LocalCluster(Path(result.location), result.port, self._rt.bin_dir(self._db),
                         self._rt.os_user(self._db)).stop()

    def client_access(self, result: RestoreResult) -> str:
        from drkit.engines.postgres.pgrestore import hba_is_drkit_peer_only

        if hba_is_drkit_peer_only(result.data_dir):
            return ("drkit's peer-only pg_hba.conf (the backup held none): **TCP clients will be refused until an "
                    f"operator provides a pg_hba.conf** in `{result.location}` (then `SELECT pg_reload_conf()`); "
                    "drkit never allows passwordless TCP logins")
        return "the backup's own pg_hba.conf, so clients log in as they did on the old primary"

    def open_to_clients(self, location: str, port: int) -> OpenedRestore:
        """Archiving into drkit as `drkit setup` sets it, on ``port`` for good, then restarted with the backup's
        own listen settings until 127.0.0.1:``port`` accepts connections."""
        from drkit.engines.postgres import pgrestore
        from drkit.engines.postgres.primary import archive_as_primary

        data_dir = Path(location)
        cluster = LocalCluster(data_dir, port, self._rt.bin_dir(self._db), self._rt.os_user(self._db))
        archiving = archive_as_primary(self._rt, self._db, data_dir, port=port)
        opened = pgrestore.open_to_clients(cluster)
        return OpenedRestore(listen_addresses=opened.listen_addresses, tcp_clients=opened.tcp_clients,
                             peer_only=opened.peer_only, configured=tuple(archiving))

    def scratch_location(self, purpose: str) -> str:
        from drkit.engines.postgres import verify

        return str(verify.scratch_root(self._rt, self._db) / f"{purpose}-{datetime.now(UTC):%Y%m%dT%H%M%S%f}")

    def discard_restored(self, location: str, result: RestoreResult | None = None) -> None:
        from drkit.engines.postgres import verify

        verify.discard_scratch(self._rt, self._db, Path(location), result.port if result else None)

    def verify(self, backup_id: str | None, *, actor: str = "drkit-verify") -> VerifyReport:
        from drkit.engines.postgres import verify

        return verify.verify_backup(self._rt, self._db, backup_id, actor=actor)

    def verify_chain(self, *, actor: str = "drkit-verify") -> VerifyReport:
        from drkit.engines.postgres import verify

        return verify.verify_chain(self._rt, self._db, actor=actor)

    def import_history(self) -> str:
        raise ConfigError(f"import-history adopts a SQL Server's msdb backup history; {self._db!r} is a "
                          "PostgreSQL database, whose server keeps none (take a full backup with drkit instead)")
