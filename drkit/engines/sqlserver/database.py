"""A SQL Server database's operations behind ``drkit.engines.base.Engine``.

The server does the work (BACKUP, RESTORE … WITH MOVE, DBCC CHECKDB); drkit sends the T-SQL, keeps the
catalog and, for backups to disk, streams the files through its pipeline into the tiers. A restore
never overwrites: it creates a new database on the server.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
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
from drkit.engines.sqlserver import tsql
from drkit.engines.sqlserver.backup import take_backup
from drkit.engines.sqlserver.chain_model import SQLSERVER_CHAIN
from drkit.engines.sqlserver.engine import SqlServerEngine, sqlserver_engine
from drkit.engines.sqlserver.errors import SqlServerError
from drkit.engines.sqlserver.history import import_group_history
from drkit.engines.sqlserver.restore import restore_to_point
from drkit.engines.sqlserver.verify import verify_backup_mssql
from drkit.errors import ConfigError
from drkit.plans import RestorePlan, RestoreResult
from drkit.restore import make_plan
from drkit.runtime import Runtime
from drkit.verify import CheckResult, VerifyReport

if TYPE_CHECKING:
    from drkit.health import ProbeResult


class SqlServerDatabase:
    """``Engine`` for ``engine: sqlserver``."""

    def __init__(self, rt: Runtime, db: str, *, server: SqlServerEngine | None = None) -> None:
        rt.policy.database(db)
        self._rt = rt
        self._db = db
        self._server = server

    def __repr__(self) -> str:
        return f"SqlServerDatabase({self._db!r})"

    @property
    def database(self) -> str:
        return self._db

    @property
    def features(self) -> EngineFeatures:
        return EngineFeatures(standby_restore=False, position_targets=False)

    @property
    def chain(self) -> ChainModel:
        return SQLSERVER_CHAIN

    def server(self) -> SqlServerEngine:
        if self._server is None:
            self._server = sqlserver_engine(self._rt, self._db)
        return self._server

    def check(self) -> list[CheckItem]:
        return self.server().check()

    def probe_primary(self, *, timeout: float) -> ProbeResult:
        from drkit.engines.sqlserver.dr import probe_database

        server = self.server()
        return probe_database(server, server.settings.database, timeout=timeout, require_writable=False)

    def setup(self) -> SetupResult:
        return self.server().setup()

    def require_ready(self) -> None:
        if self.server().settings.target == "disk":
            _ = self._rt.key  # backups to disk go through drkit's pipeline: the key must be there
        self.server().require_ready()

    def take_backup(self, kind: BackupKind, *, progress: Progress | None = None) -> BackupRecord | None:
        return take_backup(self._rt, self._db, kind, engine=self.server(), progress=progress)

    def plan_restore(self, target: datetime | None, *, position: str | None = None,
                     now: datetime | None = None) -> RestorePlan:
        if position is not None:
            raise ConfigError(f"--lsn: {self._db!r} is a SQL Server database: a restore stops at a time (--to), "
                              "not at a log position")
        return make_plan(self._rt, self._db, SQLSERVER_CHAIN, target, now)

    def restore(self, plan: RestorePlan, into: str, *, port: int | None = None, keep_running: bool = False,
                on_step: StepCallback | None = None) -> RestoreResult:
        if on_step:
            on_step(f"RESTORE into the new database {into}", 0.0)
        done = restore_to_point(self._rt, self._db, into=into, engine=self.server(), plan=plan)
        if on_step:
            on_step("restored", 1.0)
        return RestoreResult(plan=done.plan, location=done.database, port=None, running=True,
                             seconds=done.seconds, bytes_read=done.staged_bytes,
                             steps=[(step, 0.0) for step in done.steps],
                             connect=f"database {done.database} on {self.server().endpoint}")

    def validate_restored(self, result: RestoreResult) -> list[CheckResult]:
        server = self.server()
        t0 = time.monotonic()
        with server.session() as session:
            try:
                detail = server.checkdb(session, result.location)
            except SqlServerError as exc:
                return [CheckResult("checkdb", False, str(exc), time.monotonic() - t0)]
        return [CheckResult("checkdb", True, detail, time.monotonic() - t0)]

    def release_restored(self, result: RestoreResult) -> None:
        """A restored database stays on the server (the operator drops it when done)."""

    def client_access(self, result: RestoreResult) -> str:
        raise ConfigError(self._no_standby())

    def open_to_clients(self, location: str, port: int) -> OpenedRestore:
        raise ConfigError(self._no_standby())

    def _no_standby(self) -> str:
        """features.standby_restore is False: a restore is a new database on the same server, not a server of
        its own that clients could be switched to."""
        return (f"{self._db!r} is a SQL Server database: a restore is a new database on its server, not a standby "
                "server clients can be switched to; restore it (drkit restore) and point clients at it yourself")

    def scratch_location(self, purpose: str) -> str:
        stamp = f"_drkit_{purpose}_{datetime.now(UTC):%Y%m%dT%H%M%S}"
        return self.server().settings.database[: tsql.MAX_NAME_LENGTH - len(stamp)] + stamp

    def discard_restored(self, location: str, result: RestoreResult | None = None) -> None:
        server = self.server()
        with server.session() as session:
            if server.database_exists(session, location) is not None:
                server.drop_database(session, location)

    def verify(self, backup_id: str | None, *, actor: str = "drkit-verify") -> VerifyReport:
        return verify_backup_mssql(self._rt, self._db, backup_id, engine=self.server(), actor=actor)

    def verify_chain(self, *, actor: str = "drkit-verify") -> VerifyReport:
        """The newest backup's own plan is the newest chain (full, diff and logs up to it)."""
        newest = max((b for b in self._rt.catalog.list_backups(self._db) if b.restorable),
                     key=lambda b: b.end_time or b.started_at, default=None)
        return verify_backup_mssql(self._rt, self._db, newest.id if newest else None, engine=self.server(),
                                   actor=actor)

    def import_history(self) -> str:
        """msdb's history from this server and, in an availability group, every other replica's."""
        group = import_group_history(self._rt, self._db, engine=self.server())
        results = list(group.by_replica.values())
        imported = [i for r in results for i in r.imported]
        unrestorable = [i for r in results for i in r.unrestorable]
        line = (f"imported {len(imported)} backup(s) of {self._db}, {results[0].already_known} already known"
                if len(results) == 1 else
                f"imported {len(imported)} backup(s) of {self._db} from {len(results)} replicas ("
                + ", ".join(f"{name}: {len(r.imported)}" for name, r in group.by_replica.items()) + ")")
        if unrestorable:
            line += f"; on devices drkit cannot restore from: {', '.join(unrestorable)}"
        for name, why in group.unreachable.items():
            line += f"; replica {name} not read: {why}"
        return line
