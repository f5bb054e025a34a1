"""One SQL Server database reached over ODBC: prerequisites, and the server-side steps of backups,
restores and availability-group state.

Why it looks like this: no SQL Server runs where drkit is developed, so every statement is built by
:mod:`drkit.engines.sqlserver.tsql` (pure, golden-tested) and sent through a
:class:`~drkit.engines.sqlserver.odbc.Session` on a tiny connection protocol that pyodbc satisfies as it
is, and that ``tests/support/fake_odbc.py`` implements by recording each batch. The same code runs
unchanged against a real server. What drkit does around these steps (the catalog, the tiers) is in
``backup``, ``history``, ``restore`` and ``verify`` beside this module.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from drkit.config import resolve_dsn
from drkit.engines.base import BackupOutcome, BaseInfo, ByteSink, CheckItem, Progress, SetupResult
from drkit.engines.sqlserver import tsql
from drkit.engines.sqlserver.errors import (
    AvailabilityGroupError,
    BackupDeviceError,
    CorruptionFoundError,
    SqlServerError,
    dsn_password,
    is_consistency_error,
    parse_driver_error,
    scrub,
)
from drkit.engines.sqlserver.msdb import (
    FORMAT_PIPELINE,
    BackupSet,
    FileInfo,
    ReplicaDatabaseState,
    backup_sets,
    parse_bool,
    parse_guid,
    parse_lsn,
)
from drkit.engines.sqlserver.odbc import OdbcDriver, Session, pyodbc_driver
from drkit.engines.sqlserver.settings import (
    SqlServerSettings,
    dsn_hint,
    dsn_with_server,
    join_server_path,
    split_container_url,
    stripe_count,
)
from drkit.engines.sqlserver.tsql import BackupKind, DeviceType
from drkit.errors import ConfigError, DatabaseUnreachableError, PrerequisiteError

if TYPE_CHECKING:
    from drkit.runtime import Runtime


def sqlserver_engine(rt: Runtime, db: str) -> SqlServerEngine:
    """The engine for ``db`` from the policy file (``engine: sqlserver`` and its ``sqlserver:`` block)."""
    cfg = rt.policy.database(db)
    if cfg.engine != "sqlserver":
        raise ConfigError(f"databases.{db}.engine is {cfg.engine!r}, not 'sqlserver'")
    settings = cfg.sqlserver
    if settings is None:
        raise ConfigError(f"databases.{db}.sqlserver: not set; a SQL Server database needs it, with disk_path "
                          "(the backup directory as the server sees it) or target: url, url and sas_token_env")
    sas = None
    if settings.sas_token_env:
        sas = rt.environ.get(settings.sas_token_env, "").strip() or None
        if sas is None and settings.target == "url":
            raise ConfigError(f"databases.{db}.sqlserver.sas_token_env: environment variable "
                              f"{settings.sas_token_env} is not set; export the container's SAS token")
    return SqlServerEngine(db, dsn=resolve_dsn(db, cfg, rt.environ), settings=settings, sas_token=sas)


class SqlServerEngine:
    """One SQL Server database, reached by an ODBC connection string."""

    def __init__(
        self,
        name: str,
        *,
        dsn: str,
        settings: SqlServerSettings,
        sas_token: str | None = None,
        driver: OdbcDriver | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self._dsn = dsn
        self.settings = settings
        self._sas = sas_token.lstrip("?") if sas_token else None
        self._driver = driver
        self.sleep = sleep
        """How waits pause (AG failover polls the replica's role); tests pass a no-op."""

    def __repr__(self) -> str:
        return f"SqlServerEngine({self.name!r}, {self.endpoint}, database={self.settings.database!r})"

    def on_instance(self, dsn: str) -> SqlServerEngine:
        """The same database's settings on another instance (verification restores elsewhere)."""
        return SqlServerEngine(self.name, dsn=dsn, settings=self.settings, sas_token=self._sas,
                               driver=self._driver, sleep=self.sleep)

    # -- connection -----------------------------------------------------------------------------------

    @property
    def driver(self) -> OdbcDriver:
        if self._driver is None:
            self._driver = pyodbc_driver()
        return self._driver

    @property
    def endpoint(self) -> str:
        return dsn_hint(self._dsn)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self._sas, dsn_password(self._dsn)) if s)

    @contextmanager
    def session(self) -> Iterator[Session]:
        try:
            conn = self.driver.connect(self._dsn, autocommit=True, timeout=self.settings.login_timeout_s)
        except self.driver.Error as exc:
            _, numbers, text = parse_driver_error(exc)
            raise DatabaseUnreachableError(
                f"cannot connect to SQL Server for {self.name!r} at {self.endpoint}: {scrub(text, self.secrets)}"
                f"{' (error ' + ', '.join(map(str, numbers)) + ')' if numbers else ''}; check the server, the "
                "ODBC driver named in the DSN, and the login") from None
        conn.autocommit = True
        try:
            yield Session(conn, settings=self.settings, driver_error=self.driver.Error, endpoint=self.endpoint,
                          secrets=self.secrets)
        finally:
            with suppress(Exception):
                conn.close()

    # -- prerequisites --------------------------------------------------------------------------------

    @property
    def credential_name(self) -> str | None:
        if self.settings.target != "url" or not self.settings.url:
            return None
        return split_container_url(self.settings.url)[0]

    def facts(self) -> dict[str, Any]:
        """The prerequisites row (:func:`tsql.prerequisites`): edition, state, permissions, AG role."""
        s = self.settings
        with self.session() as session:
            return session.run(tsql.prerequisites(s.database, credential=self.credential_name,
                                                  certificate=s.certificate)).one()

    def check(self, facts: Mapping[str, Any] | None = None) -> list[CheckItem]:
        s = self.settings
        facts = self.facts() if facts is None else facts
        db = s.database
        items = [CheckItem("database", facts.get("state") == "ONLINE", str(facts.get("state") or "missing"),
                           "ONLINE", f"database {db!r} must exist and be online on {self.endpoint}")]
        model = str(facts.get("recovery_model") or "?")
        items.append(CheckItem("recovery model", model in ("FULL", "BULK_LOGGED"), model, "FULL",
                               f"ALTER DATABASE {tsql.quote_name(db)} SET RECOVERY FULL; then a full backup "
                               "(log backups need it)"))
        verify = str(facts.get("page_verify") or "?")
        items.append(CheckItem(PAGE_VERIFY, verify == "CHECKSUM", verify, "CHECKSUM",
                               f"ALTER DATABASE {tsql.quote_name(db)} SET PAGE_VERIFY CHECKSUM (backups still "
                               "run, with a warning: pages written before it carry no checksum to verify)"))
        sysadmin = parse_bool(facts.get("is_sysadmin"))
        for key, what, fix in (
            ("can_backup_database", "BACKUP DATABASE permission", "add the login to db_backupoperator"),
            ("can_backup_log", "BACKUP LOG permission", "add the login to db_backupoperator"),
            ("can_create_database", "CREATE ANY DATABASE (restores)", "add the login to dbcreator"),
            ("can_read_history", "read msdb backup history", "GRANT SELECT on msdb.dbo.backupset and "
                                                             "backupmediafamily (or db_datareader in msdb)"),
        ):
            ok = sysadmin or parse_bool(facts.get(key))
            items.append(CheckItem(what, ok, "yes" if ok else "no", "yes", fix))
        edition = edition_name(facts)
        capable = edition_backs_up_compressed_and_encrypted(facts)
        if s.compression:
            items.append(CheckItem("backup compression", capable, edition, "Enterprise, Standard or Developer",
                                   f"{edition} cannot compress backups: set sqlserver.compression: false in the "
                                   "policy, or use Enterprise, Standard or Developer edition"))
        if self.credential_name:
            exists = int(facts.get("credential_exists") or 0) > 0
            can = sysadmin or parse_bool(facts.get("can_alter_credential"))
            items.append(CheckItem("SAS credential", exists or (bool(self._sas) and can),
                                   "present" if exists else "missing", "present",
                                   f"export ${s.sas_token_env or 'SAS token variable'} and run `drkit setup "
                                   f"{self.name}` (the login needs ALTER ANY CREDENTIAL)"))
        if s.certificate:
            items.append(CheckItem("backup encryption", capable, edition, "Enterprise, Standard or Developer",
                                   f"{edition} cannot encrypt backups: remove sqlserver.certificate from the policy "
                                   "(with target: disk drkit's pipeline still encrypts every backup), or use "
                                   "Enterprise, Standard or Developer edition"))
            ok = int(facts.get("certificate_usable") or 0) > 0
            items.append(CheckItem("encryption certificate", ok, "usable" if ok else "missing or without key",
                                   "a master certificate with its private key",
                                   f"CREATE CERTIFICATE {tsql.quote_name(s.certificate)} in master, and back it "
                                   "up with its private key: without it no encrypted backup can be restored"))
        if s.availability_group:
            role = facts.get("ag_role")
            items.append(CheckItem("availability-group role", role is not None, str(role or "unknown"),
                                   "PRIMARY or SECONDARY",
                                   f"{db!r} must be a database of availability group {s.availability_group!r} on "
                                   f"{self.endpoint}, and the login needs VIEW SERVER STATE"))
            if role == "SECONDARY" and not s.copy_only:
                items.append(CheckItem(SECONDARY_FULL, False, "not COPY_ONLY", "COPY_ONLY",
                                       "set sqlserver.copy_only: true (a secondary takes only copy-only fulls), "
                                       "or point the DSN at the primary (the listener)"))
        return items

    def setup(self) -> SetupResult:
        applied = []
        if self.credential_name and self._sas:
            with self.session() as session:
                self.ensure_credential(session)
            applied.append(f"SAS credential for {self.credential_name}")
        remaining = [i for i in self.check() if not i.ok]
        return SetupResult(applied=applied, restart_needed=False, remaining=remaining)

    def require_ready(self, kind: BackupKind | None = None) -> Readiness:
        """Refuse (``PrerequisiteError``) what is missing for a backup of ``kind`` (None: any kind) here.

        What does not block it comes back: warnings to record with the backup (no ``PAGE_VERIFY
        CHECKSUM``), or why this replica skips it (``backup_replica: preferred`` on a replica that is not
        the group's preferred backup replica).
        """
        facts = self.facts()
        bad = [i for i in self.check(facts) if not i.ok and i.name != PAGE_VERIFY
               and (kind == "log" or i.name != "recovery model") and (kind == "full" or i.name != SECONDARY_FULL)]
        if bad:
            lines = "; ".join(f"{i.name} is {i.current!r}, needs {i.expected!r} (fix: {i.fix})" for i in bad)
            raise PrerequisiteError(f"SQL Server database {self.settings.database!r} ({self.name}) is not ready "
                                    f"for {kind or 'any'} backups: {lines}. `drkit check {self.name}` lists them")
        db, role = self.settings.database, facts.get("ag_role")
        if kind == "diff" and role == "SECONDARY":
            raise PrerequisiteError(
                f"{self.endpoint} is an availability-group secondary for {db!r}, and SQL Server takes no "
                "differential backup on a secondary: take differentials on the primary (point the DSN at the "
                "listener), or set schedules.diff: null")
        warnings = []
        verify = str(facts.get("page_verify") or "?")
        if verify != "CHECKSUM":
            warnings.append(f"{db!r} has PAGE_VERIFY {verify}, not CHECKSUM: pages written before it is set "
                            "carry no checksum, so BACKUP … WITH CHECKSUM cannot verify them (fix: ALTER "
                            f"DATABASE {tsql.quote_name(db)} SET PAGE_VERIFY CHECKSUM)")
        skip = None
        if self.settings.backup_replica == "preferred" and not parse_bool(facts.get("is_preferred_backup_replica")):
            skip = (f"{self.endpoint} ({str(role or 'replica').lower()}) is not the preferred backup replica of "
                    f"availability group {self.settings.availability_group!r} for {db!r} "
                    "(sys.fn_hadr_backup_is_preferred_replica is 0): the preferred replica takes it")
        return Readiness(warnings=tuple(warnings), skip=skip)

    def ensure_credential(self, session: Session) -> None:
        name = self.credential_name
        if name is None:
            return
        if not self._sas:
            return  # a credential made by a DBA is used as it is; check() reports a missing one
        session.run(tsql.sas_credential(name, self._sas))

    # -- backups --------------------------------------------------------------------------------------

    def size_bytes(self, session: Session, kind: BackupKind) -> int:
        row = session.run(tsql.database_size(self.settings.database)).one()
        return int(row.get("log_bytes" if kind == "log" else "data_bytes") or 0)

    def url_devices(self, backup_id: str, kind: BackupKind, size_bytes: int) -> list[str]:
        """Unique blob URLs for one backup, striped so each blob stays under ``max_stripe_gib``."""
        assert self.settings.url is not None
        container, prefix = split_container_url(self.settings.url)
        n = stripe_count(size_bytes, self.settings.max_stripe_gib * 2**30)
        folder = "/".join(p for p in (prefix, self.name, backup_id) if p)
        ext = "trn" if kind == "log" else "bak"
        return [tsql.validate_device(f"{container}/{folder}/{backup_id}_{i:02d}of{n:02d}.{ext}", "backup URL")
                for i in range(1, n + 1)]

    def disk_device(self, file_name: str) -> str:
        base = self.settings.disk_path
        if not base:
            raise ConfigError(f"databases.{self.name}.sqlserver.disk_path is not set: drkit needs a directory "
                              "the server writes backups to and drkit can read")
        return tsql.validate_device(join_server_path(base, file_name), "backup file path")

    def differential_base(self, session: Session) -> tuple[str | None, str | None]:
        row = session.run(tsql.differential_base(self.settings.database)).one()
        return parse_lsn(row.get("differential_base_lsn")), parse_guid(row.get("differential_base_guid"))

    def run_backup(
        self,
        session: Session,
        kind: BackupKind,
        *,
        device_type: DeviceType,
        devices: Sequence[str],
        name: str,
        progress: Progress | None = None,
        expected_bytes: int = 0,
    ) -> BackupSet:
        """BACKUP to ``devices``, wait for it to finish, and return its msdb row."""
        s = self.settings

        def on_message(text: str) -> None:
            m = re.match(r"\s*(\d+) percent processed", text)
            if m and progress:
                progress(int(m.group(1)) * expected_bytes // 100, expected_bytes)

        copy_only = s.copy_only and kind == "full"  # never a copy-only log: it truncates nothing, chains nothing
        session.run(tsql.backup(s.database, kind, device_type=device_type, devices=devices, name=name,
                                description=f"drkit {kind} backup {name}", certificate=s.certificate,
                                copy_only=copy_only, compression=s.compression), on_message)
        return self.read_backup_set(session, name)

    def read_backup_set(self, session: Session, name: str) -> BackupSet:
        rows = session.run(tsql.backupset_by_name(self.settings.database, name,
                                                  sql2022=is_sql2022(session))).rows()
        if not rows:
            raise SqlServerError(f"BACKUP reported success but msdb.dbo.backupset has no backup named {name!r} "
                                 f"for {self.settings.database!r}; check that msdb history is not being purged "
                                 "during backups")
        return BackupSet.from_rows(rows, session.utc_offset_minutes())

    def history(self, session: Session, *, days: int | None = None) -> list[BackupSet]:
        rows = session.run(tsql.backup_history(self.settings.database, days=days,
                                               sql2022=is_sql2022(session))).rows()
        return backup_sets(rows, session.utc_offset_minutes())

    def backup_to_disk(
        self, kind: BackupKind, name: str, out: ByteSink, *, progress: Progress | None = None,
        chunk_size: int = 4 * 2**20,
    ) -> BackupSet:
        """BACKUP TO DISK in the staging directory, stream the file to ``out``, delete it; its msdb row."""
        local_dir = self.settings.staging_local
        if local_dir is None:
            raise ConfigError(f"databases.{self.name}.sqlserver.disk_path is not set")
        file_name = f"{name}.{'trn' if kind == 'log' else 'bak'}"
        device = self.disk_device(file_name)
        local = local_dir / file_name
        try:
            with self.session() as session:
                expected = self.size_bytes(session, kind)
                info = self.run_backup(session, kind, device_type="DISK", devices=[device], name=name,
                                       progress=progress, expected_bytes=expected)
            try:
                fh = open(local, "rb")  # noqa: SIM115
            except OSError as exc:
                raise BackupDeviceError(
                    f"SQL Server wrote {device} but drkit cannot read it as {local} ({exc.strerror}); "
                    "sqlserver.local_path must be the same directory as disk_path, seen from drkit") from None
            with fh:
                while chunk := fh.read(chunk_size):
                    out.write(chunk)
        finally:
            with suppress(OSError):
                os.unlink(local)
        return info

    def full_backup(self, out: ByteSink, *, progress: Progress | None = None) -> BackupOutcome:
        """A full backup through the disk staging directory into ``out``."""
        return self._outcome(self.backup_to_disk("full", _auto_name(self.name, "full"), out, progress=progress))

    def diff_backup(self, out: ByteSink, base: BaseInfo, *, progress: Progress | None = None) -> BackupOutcome:
        """A differential (on whatever full the server's differential base is)."""
        return self._outcome(self.backup_to_disk("diff", _auto_name(self.name, "diff"), out, progress=progress))

    @staticmethod
    def _outcome(info: BackupSet) -> BackupOutcome:
        # SQL Server LSNs are numeric(25,0); they live in meta. The integer fields carry no LSN.
        return BackupOutcome(timeline=0, start_lsn=0, end_lsn=0, start_wal=None, end_wal=None,
                             start_time=info.start_time, end_time=info.end_time,
                             manifest={"format": FORMAT_PIPELINE, **info.meta()}, meta=info.meta())

    # -- restores -------------------------------------------------------------------------------------

    def file_list(self, session: Session, device_type: DeviceType, devices: Sequence[str], *,
                  file: int | None = None) -> list[FileInfo]:
        rows = session.run(tsql.file_list_only(device_type, devices, file=file)).rows()
        return [FileInfo.from_row(r, i) for i, r in enumerate(rows, 1)]

    def restore_paths(self, session: Session) -> tuple[str, str]:
        s = self.settings
        server = session.server()
        data = s.restore_data_path or server.get("default_data_path")
        log = s.restore_log_path or server.get("default_log_path") or data
        if not data or not log:
            raise ConfigError(f"databases.{self.name}.sqlserver.restore_data_path: the server reports no default "
                              "data directory; set restore_data_path (and restore_log_path)")
        return str(data), str(log)

    def moves(self, session: Session, into: str, files: Sequence[FileInfo]) -> list[tuple[str, str]]:
        """New physical names for every file of a backup, restored as database ``into``."""
        data_dir, log_dir = self.restore_paths(session)
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", into)[:80] + "_" + uuid.uuid5(uuid.NAMESPACE_OID, into).hex[:8]
        out = []
        for f in files:
            ext = {"D": ".mdf" if f.file_id == 1 else ".ndf", "L": ".ldf"}.get(f.type, "")
            folder = log_dir if f.type == "L" else data_dir
            out.append((f.logical_name, join_server_path(folder, f"{stem}_{f.file_id}{ext}")))
        return out

    def database_exists(self, session: Session, database: str) -> str | None:
        """The database's status (ONLINE, RESTORING, ...), or None if there is none by that name."""
        row = session.run(tsql.database_state(database)).one()
        return None if row.get("database_id") is None else str(row.get("status") or "UNKNOWN")

    def checkdb(self, session: Session, database: str) -> str:
        """DBCC CHECKDB's messages; :class:`CorruptionFoundError` only for a reported consistency error (any
        other failure, a timeout or tempdb full, is raised as it is: it proves nothing about the data)."""
        try:
            result = session.run(tsql.checkdb(database))
        except SqlServerError as exc:
            if not is_consistency_error(exc.numbers):
                raise
            raise CorruptionFoundError(
                f"DBCC CHECKDB found consistency errors in {database!r} (restored from the backup): {exc}",
                numbers=exc.numbers, sqlstate=exc.sqlstate) from None
        return "; ".join(result.messages) or "DBCC CHECKDB: no consistency errors"

    def drop_database(self, session: Session, database: str) -> None:
        session.run(tsql.drop_database(database))

    # -- availability groups --------------------------------------------------------------------------

    def other_replicas(self, session: Session) -> list[str]:
        """The names of the other replicas of ``availability_group`` (none when it is not set)."""
        if not self.settings.availability_group:
            return []
        rows = session.run(tsql.ag_replicas(self.settings.availability_group)).rows()
        return [str(r["replica_server_name"]) for r in rows if not parse_bool(r.get("is_local"))]

    def on_replica(self, server: str) -> SqlServerEngine:
        """This database on replica ``server`` of its group: the same DSN, login and port, another server."""
        return self.on_instance(dsn_with_server(self._dsn, server))

    def ag_state(self, session: Session, group: str | None = None) -> list[ReplicaDatabaseState]:
        ag = group or self.settings.availability_group
        if not ag:
            raise ConfigError(f"databases.{self.name}.sqlserver.availability_group is not set")
        rows = session.run(tsql.ag_local_state(ag)).rows()
        if not rows:
            raise AvailabilityGroupError(f"this server ({self.endpoint}) is not a replica of availability "
                                         f"group {ag!r}, or the login lacks VIEW SERVER STATE")
        return [ReplicaDatabaseState.from_row(r) for r in rows]


def is_sql2022(session: Session) -> bool:
    """SQL Server 2022 (16.x) or later: msdb.dbo.backupset has ``last_valid_restore_time``, and
    ``CURRENT_TIMEZONE_ID()`` exists."""
    version = str(session.server().get("product_version") or "0")
    return int(version.split(".", 1)[0] or 0) >= 16


PAGE_VERIFY = "page verify"
"""The check a backup does not wait for: it runs with a warning (as Ola Hallengren's and dbatools' do)."""
SECONDARY_FULL = "full backups on a secondary"
"""Refuses full backups only: a secondary takes regular log backups whatever ``copy_only`` says."""


@dataclass(frozen=True)
class Readiness:
    """What :meth:`SqlServerEngine.require_ready` found that does not stop a backup."""

    warnings: tuple[str, ...] = ()
    skip: str | None = None
    """Why this server must not take the backup (not a failure), or None."""


EDITIONS_WITH_COMPRESSION = {2: "Standard", 3: "Enterprise/Developer"}
"""SERVERPROPERTY('EngineEdition') values whose editions compress and encrypt backups (Web also reports 2)."""


def edition_name(facts: Mapping[str, Any]) -> str:
    return str(facts.get("edition") or f"EngineEdition {facts.get('engine_edition')}").replace(" (64-bit)", "")


def edition_backs_up_compressed_and_encrypted(facts: Mapping[str, Any]) -> bool:
    """Enterprise, Standard and Developer compress and encrypt backups; Express (EngineEdition 4) and Web
    (EngineEdition 2, told apart by its Edition name) do neither."""
    engine_edition = facts.get("engine_edition")
    if engine_edition is None or int(engine_edition) not in EDITIONS_WITH_COMPRESSION:
        return False
    return "web" not in str(facts.get("edition") or "").lower()


def _auto_name(db: str, kind: str) -> str:
    return f"{db}-{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
