"""The SQL Server engine: backups, restores, integrity checks and AG failover over ODBC (pyodbc).

Why it looks like this: no SQL Server runs where drkit is developed, so every
statement is built by :mod:`drkit.engines.sqlserver.tsql` (pure, golden-tested) and sent
through a tiny connection protocol (:class:`OdbcConnection`) that pyodbc
satisfies as it is, and that ``tests/support/fake_odbc.py`` implements by
recording each batch. The same code runs unchanged against a real server.

Rules every call follows:

* ``autocommit=True``: BACKUP and RESTORE cannot run inside a transaction;
* every result set and message is drained (``while cursor.nextset()``), so a
  BACKUP has really finished, and its error surfaced, before the call returns;
* a query timeout on every batch (a long one for BACKUP/RESTORE/DBCC);
* ODBC errors become domain errors (:class:`SqlServerError` and subclasses)
  whose message says what failed and what to do, with the SQL Server error
  number; secrets (SAS token, DSN password) are scrubbed from every message.

LSNs are ``numeric(25,0)`` and do not fit the catalog's BIGINT columns: they are
kept as decimal strings in a backup's ``meta`` (see :meth:`BackupSet.meta`).
"""

from __future__ import annotations

import importlib
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Protocol, cast
from urllib.parse import urlsplit

from drkit.engines.base import BackupOutcome, BaseInfo, ByteSink, CheckItem, Progress, SetupResult
from drkit.engines.sqlserver import tsql
from drkit.engines.sqlserver.tsql import BackupKind, Batch, DeviceType, NameRefusedError
from drkit.errors import ConfigError, DatabaseUnreachableError, EngineError, PrerequisiteError

FORMAT_URL = "mssql-native-url"
"""Written by SQL Server straight to Azure Blob (``BACKUP … TO URL``); SQL Server reads it back itself."""
FORMAT_DISK = "mssql-native-disk"
"""A backup file on the server's disk that drkit did not store (imported from msdb)."""
FORMAT_PIPELINE = "drkit-mssql-bak-v1"
"""A ``BACKUP … TO DISK`` file streamed through drkit's pipeline (zstd, AES-256-GCM) into a tier store."""
NATIVE_FORMATS = (FORMAT_URL, FORMAT_DISK)

BLOB_LIMIT_BYTES = 190 * 2**30
"""A block blob written by BACKUP TO URL holds at most 50,000 blocks × 4 MiB (~195 GiB); keep a margin."""

_KIND_OF_TYPE = {"D": "full", "I": "diff", "L": "log"}
_DEVICE_TYPES = {2: "DISK", 9: "URL", 7: "VIRTUAL", 5: "TAPE"}


# -- the connection protocol (pyodbc satisfies it) ---------------------------------------------------


class OdbcCursor(Protocol):
    description: Sequence[Sequence[Any]] | None
    messages: list[tuple[str, str]] | None

    def execute(self, sql: str, *params: Any) -> Any: ...

    def fetchall(self) -> Sequence[Sequence[Any]]: ...

    def nextset(self) -> bool | None: ...

    def close(self) -> None: ...


class OdbcConnection(Protocol):
    autocommit: bool
    timeout: int

    def cursor(self) -> OdbcCursor: ...

    def close(self) -> None: ...


class OdbcDriver(Protocol):
    """What drkit uses of the ``pyodbc`` module: ``connect`` and the ``Error`` base class."""

    Error: type[Exception]

    def connect(self, connstring: str, /, *, autocommit: bool = ..., timeout: int = ...) -> OdbcConnection: ...


def pyodbc_driver() -> OdbcDriver:
    """The real driver, imported only when a real server is used."""
    try:
        module = importlib.import_module("pyodbc")
    except ImportError as exc:
        raise PrerequisiteError(
            f"pyodbc cannot be loaded ({exc}); install unixODBC (Debian: apt-get install unixodbc) and an "
            "ODBC driver for SQL Server (Microsoft's msodbcsql18, or FreeTDS's tdsodbc), then retry") from None
    return cast(OdbcDriver, module)


# -- errors ------------------------------------------------------------------------------------------


class SqlServerError(EngineError):
    """SQL Server refused a batch. ``numbers`` are its native error numbers, ``sqlstate`` the ODBC state."""

    def __init__(self, message: str, *, numbers: tuple[int, ...] = (), sqlstate: str = "") -> None:
        super().__init__(message)
        self.numbers = numbers
        self.sqlstate = sqlstate


class BackupDeviceError(SqlServerError):
    """The server could not open, write or read a backup device (3201, 3202, 3203): access, not data."""


class BackupMediaError(SqlServerError):
    """A backup set is damaged or not a valid backup (3241, 3242, 3243, 3183, 3189): the data is bad."""


class LogChainError(SqlServerError):
    """A log backup does not join the database's restore point (4305, 4326) or the previous log backup."""


class LogBackupNotPossibleError(SqlServerError, PrerequisiteError):
    """BACKUP LOG cannot run: SIMPLE recovery model (4208) or no full backup yet (4214)."""


class RestoreTargetError(SqlServerError):
    """The restore target database exists, or belongs to another database (1801, 3154)."""


class CorruptionFoundError(SqlServerError):
    """DBCC CHECKDB reported consistency errors in the restored database."""


class QueryTimeoutError(SqlServerError):
    """A batch ran longer than its timeout and was cancelled."""


class AvailabilityGroupError(SqlServerError):
    """An availability-group step was refused, or the group is not in a state that allows it."""


_NATIVE_RE = re.compile(r"\((\d+)\)(?=\s*(?:\(SQL[A-Za-z]+\)|;|$))")
_PREFIX_RE = re.compile(r"(?:^|;\s*)(?:\[[^\]]*\]\s*)+")
_TRAILER_RE = re.compile(r"\s*\(\d+\)\s*(?:\(SQL[A-Za-z]+\))?\s*(?=;|$)")
_SIG_RE = re.compile(r"(?i)(sig=)[^&\s'\"]+")
_PWD_RE = re.compile(r"(?i)\b(pwd|password)\s*=\s*(\{[^}]*\}|[^;]*)")
_SECRET_LITERAL_RE = re.compile(r"(?i)(SECRET\s*=\s*N?')[^']*(')")


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` without secrets: known values, SAS signatures, passwords, credential secrets."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _SIG_RE.sub(r"\1***", text)
    text = _PWD_RE.sub(r"\1=***", text)
    return _SECRET_LITERAL_RE.sub(r"\1***\2", text)


def parse_driver_error(exc: BaseException) -> tuple[str, tuple[int, ...], str]:
    """(SQLSTATE, native error numbers, message text without driver prefixes) of a pyodbc-style error.

    pyodbc formats ``args[1]`` as ``[SQLSTATE] [driver][SQL Server]text (native) (SQLFunction)``,
    further diagnostic records appended as ``; [SQLSTATE] [..]text (native)``.
    """
    args = exc.args
    if len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        sqlstate, message = args[0], args[1]
    else:
        sqlstate, message = "", str(exc)
    numbers = tuple(int(n) for n in _NATIVE_RE.findall(message))
    text = _TRAILER_RE.sub("", message)
    parts = [p.strip() for p in _PREFIX_RE.split(text) if p.strip()]
    return sqlstate, numbers, " / ".join(parts) or message


_DEVICE_ERRORS = {3201, 3202, 3203, 3204, 18204, 18210}
_MEDIA_ERRORS = {3241, 3242, 3243, 3183, 3189, 3266}
_CHAIN_ERRORS = {4305, 4326, 4330, 4319}
_TARGET_ERRORS = {1801, 3154, 1834, 5133, 3634}


def translate_error(
    exc: BaseException, batch: Batch, *, endpoint: str, timeout: int, secrets: Sequence[str] = ()
) -> DrkitErrorLike:
    """The domain error for a driver error raised while running ``batch``."""
    sqlstate, numbers, text = parse_driver_error(exc)
    text = scrub(text, secrets)
    nums = set(numbers)
    where = f"SQL Server error {', '.join(map(str, numbers))}" if numbers else f"SQLSTATE {sqlstate or '?'}"
    head = f"{batch.label} failed ({where}): {text}"
    kw: dict[str, Any] = {"numbers": numbers, "sqlstate": sqlstate}
    if sqlstate.startswith("08") or sqlstate == "28000" or nums & {18456, 4060, 18452}:
        return DatabaseUnreachableError(
            f"cannot reach SQL Server at {endpoint} for {batch.label} ({where}): {text}; check the server is up, "
            "the login and password in the DSN variable, and that the login may connect")
    if sqlstate in ("HYT00", "HYT01"):
        return QueryTimeoutError(
            f"{batch.label} did not finish within {timeout} s and was cancelled; raise sqlserver."
            f"{'long_timeout_s' if batch.long_running else 'query_timeout_s'} in the policy file if that is "
            "expected for this database", **kw)
    if nums & _CHAIN_ERRORS:
        return LogChainError(
            f"{head}. The log backups do not join: one between the database's current point and this "
            "backup is missing or was skipped (a log backup taken outside drkit, or a lost one). Run "
            "`drkit import-history DB` to import backups taken outside drkit, restore to a point before "
            "the gap, or take a new full backup to start a new chain", **kw)
    if nums & {4208}:
        return LogBackupNotPossibleError(
            f"{head}. The database uses the SIMPLE recovery model, which keeps no log to back up; "
            "ALTER DATABASE … SET RECOVERY FULL, then take a full backup to start the log chain", **kw)
    if nums & {4214}:
        return LogBackupNotPossibleError(
            f"{head}. There is no full backup to start the log chain from; take one first "
            "(`drkit backup full DB`)", **kw)
    if nums & _DEVICE_ERRORS:
        return BackupDeviceError(
            f"{head}. For TO URL: check that the SAS token (sqlserver.sas_token_env) is valid, not expired, "
            "and grants read, write, list and delete on the container, and that the container exists; for "
            "TO DISK: the SQL Server service account must be able to read and write the backup directory, "
            "and it must have free space", **kw)
    if nums & _TARGET_ERRORS:
        return RestoreTargetError(
            f"{head}. drkit restores only into a new database name and never overwrites one; "
            "pick another name or drop the existing database yourself", **kw)
    if nums & _MEDIA_ERRORS:
        return BackupMediaError(
            f"{head}. The backup set is damaged, incomplete or not a SQL Server backup; do not rely on it: "
            "restore from another backup and take a new full backup", **kw)
    if any(41000 <= n < 42000 for n in nums) or nums & {19405, 19406}:
        return AvailabilityGroupError(f"{head}. See the availability group's dashboard for its state", **kw)
    return SqlServerError(head, **kw)


DrkitErrorLike = SqlServerError | DatabaseUnreachableError


# -- settings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SqlServerSettings:
    """The ``sqlserver:`` block of a database in the policy file (see :meth:`from_mapping`)."""

    database: str
    """The database's name on the server (policy names are lowercase; server names need not be)."""
    target: Literal["url", "disk"] = "disk"
    url: str | None = None
    """``https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]`` for ``target: url``; no SAS in it."""
    sas_token_env: str | None = None
    """Environment variable holding the container's SAS token (with or without the leading '?')."""
    url_tier: str | None = None
    """The policy tier that is this container, so URL backups count as copies in it (optional)."""
    disk_path: str | None = None
    """Backup directory as the SQL Server sees it (``target: disk``, and staging for restores)."""
    local_path: str | None = None
    """The same directory as drkit sees it (a share or the same host); default: ``disk_path``."""
    certificate: str | None = None
    """Server certificate for ``ENCRYPTION (ALGORITHM = AES_256, SERVER CERTIFICATE = …)``."""
    copy_only: bool = False
    """Take full and log backups ``COPY_ONLY`` (backups on an AG secondary, or beside another tool)."""
    compression: bool = True
    max_stripe_gib: int = 100
    restore_data_path: str | None = None
    restore_log_path: str | None = None
    availability_group: str | None = None
    query_timeout_s: int = 60
    long_timeout_s: int = 0
    """0: no limit (a BACKUP of a large database runs for hours)."""
    login_timeout_s: int = 15

    def __post_init__(self) -> None:
        tsql.validate_name(self.database, "sqlserver.database")
        if self.certificate is not None:
            tsql.validate_name(self.certificate, "sqlserver.certificate")
        if self.availability_group is not None:
            tsql.validate_name(self.availability_group, "sqlserver.availability_group")

    @classmethod
    def from_mapping(cls, db: str, data: Mapping[str, Any] | None) -> SqlServerSettings:
        """Validate the policy file's ``databases.<db>.sqlserver`` mapping; errors name the key."""
        where = f"databases.{db}.sqlserver"
        data = dict(data or {})
        known = {f.name: f for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"{where}.{key}: unknown key; known keys: {', '.join(sorted(known))}")
        data.setdefault("database", db)
        for key, value in data.items():
            want = known[key].type
            ok = (isinstance(value, bool) if "bool" in str(want)
                  else isinstance(value, int) and not isinstance(value, bool) and value >= 0 if "int" in str(want)
                  else value is None or isinstance(value, str))
            if not ok:
                raise ConfigError(f"{where}.{key}: expected {want}, got {value!r}")
        if data.get("target", "disk") not in ("url", "disk"):
            raise ConfigError(f"{where}.target: expected 'url' or 'disk', got {data['target']!r}")
        try:
            settings = cls(**data)
        except NameRefusedError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if settings.target == "url":
            if not settings.url:
                raise ConfigError(f"{where}.url: a URL target needs the container URL "
                                  "(https://ACCOUNT.blob.core.windows.net/CONTAINER)")
            try:
                split_container_url(settings.url)
            except ConfigError as exc:
                raise ConfigError(f"{where}.url: {exc}") from None
        if settings.target == "disk" and not settings.disk_path:
            raise ConfigError(f"{where}.disk_path: a disk target needs the backup directory as the server sees it")
        if not 1 <= settings.max_stripe_gib <= 190:
            raise ConfigError(f"{where}.max_stripe_gib: expected 1..190 (a block blob holds ~195 GiB)")
        return settings

    @property
    def staging_local(self) -> Path | None:
        chosen = self.local_path or self.disk_path
        return Path(chosen) if chosen else None


def split_container_url(url: str) -> tuple[str, str]:
    """(container URL, blob prefix) of ``https://acct.blob.core.windows.net/container[/prefix]``."""
    parts = urlsplit(url)
    if parts.query or "?" in url or "sig=" in url:
        raise ConfigError("the URL must not hold a SAS token; put the token in the variable named by "
                          "sqlserver.sas_token_env")
    if parts.scheme != "https" or not parts.netloc:
        raise ConfigError(f"expected an https:// Azure Blob container URL, got {url!r} (SQL Server accepts "
                          "only https for BACKUP TO URL)")
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise ConfigError(f"{url!r} names no container: add /CONTAINER to the account URL")
    for s in segments:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", s):
            raise ConfigError(f"{url!r}: path segment {s!r} may use only letters, digits, '.', '_' and '-'")
    return f"https://{parts.netloc}/{segments[0]}", "/".join(segments[1:])


def stripe_count(size_bytes: int, max_stripe_bytes: int) -> int:
    """Stripes so that each blob stays ≤ ``max_stripe_bytes`` (1..64); refuses a database too big for URL."""
    wanted = max(1, math.ceil(max(size_bytes, 0) / max_stripe_bytes))
    if wanted <= tsql.MAX_STRIPES:
        return wanted
    if size_bytes / tsql.MAX_STRIPES > BLOB_LIMIT_BYTES:
        raise PrerequisiteError(
            f"the database is {size_bytes / 2**40:.1f} TiB: even {tsql.MAX_STRIPES} stripes would exceed the "
            f"~{BLOB_LIMIT_BYTES // 2**30} GiB a block blob can hold; back it up with target: disk")
    return tsql.MAX_STRIPES


def dsn_hint(dsn: str) -> str:
    """``server/database`` of an ODBC connection string, for messages; never the password."""
    pairs: dict[str, str] = {}
    for m in re.finditer(r"\s*([^=;]+?)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)\s*(?:;|$)", dsn):
        pairs[m.group(1).strip().lower()] = m.group(2).strip("{}")
    server = next((pairs[k] for k in ("server", "address", "addr", "data source") if pairs.get(k)), "?")
    database = next((pairs[k] for k in ("database", "initial catalog") if pairs.get(k)), "")
    return f"{server}/{database}" if database else server


# -- results -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultSet:
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=False)) for row in self.rows]


@dataclass(frozen=True)
class BatchResult:
    result_sets: tuple[ResultSet, ...]
    messages: tuple[str, ...]

    def rows(self, index: int = 0) -> list[dict[str, Any]]:
        return self.result_sets[index].dicts() if index < len(self.result_sets) else []

    def one(self) -> dict[str, Any]:
        rows = self.rows()
        if not rows:
            raise SqlServerError("the server returned no row where one was expected")
        return rows[0]


MessageCallback = Callable[[str], None]


class Session:
    """One open connection; runs batches in order, draining every result set and message."""

    def __init__(self, conn: OdbcConnection, engine: SqlServerEngine) -> None:
        self._conn = conn
        self._engine = engine
        self._utc_offset: int | None = None
        self._server: dict[str, Any] | None = None

    def run(self, batch: Batch, on_message: MessageCallback | None = None) -> BatchResult:
        settings = self._engine.settings
        timeout = settings.long_timeout_s if batch.long_running else settings.query_timeout_s
        secrets = self._engine.secrets
        self._conn.timeout = timeout
        cur = self._conn.cursor()
        sets: list[ResultSet] = []
        messages: list[str] = []

        def collect() -> None:
            for _, text in getattr(cur, "messages", None) or ():
                clean = scrub(parse_driver_error(Exception("", str(text)))[2], secrets)
                messages.append(clean)
                if on_message:
                    on_message(clean)
            if cur.description:
                columns = tuple(str(d[0]) for d in cur.description)
                sets.append(ResultSet(columns, tuple(tuple(r) for r in cur.fetchall())))

        try:
            cur.execute(batch.sql, *batch.params)
            collect()
            while cur.nextset():
                collect()
        except self._engine.driver.Error as exc:
            raise translate_error(exc, batch, endpoint=self._engine.endpoint, timeout=timeout,
                                  secrets=secrets) from None
        finally:
            with suppress(Exception):
                cur.close()
        return BatchResult(tuple(sets), tuple(messages))

    def server(self) -> dict[str, Any]:
        if self._server is None:
            self._server = self.run(tsql.server_info()).one()
        return self._server

    def utc_offset_minutes(self) -> int:
        return int(self.server().get("utc_offset_minutes") or 0)


# -- msdb rows ---------------------------------------------------------------------------------------


def _lsn(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, Decimal)):
        return str(int(value))
    text = str(value).strip()
    return str(int(Decimal(text))) if text else None


def _guid(value: Any) -> str | None:
    if value is None:
        return None
    return str(value).strip("{}").lower()


def _bool(value: Any) -> bool:
    return bool(value) if not isinstance(value, str) else value.strip().lower() in ("1", "true", "yes")


def to_utc(local: datetime, time_zone: Any, fallback_offset_minutes: int) -> datetime:
    """msdb's server-local time to UTC: ``time_zone`` is the offset in 15-minute units (127: unknown)."""
    if local.tzinfo is not None:
        return local.astimezone(UTC)
    offset = fallback_offset_minutes
    if time_zone is not None and int(time_zone) != 127:
        offset = int(time_zone) * 15
    return (local - timedelta(minutes=offset)).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Device:
    device: str
    type: str  # URL, DISK, VIRTUAL, TAPE


@dataclass(frozen=True)
class BackupSet:
    """One msdb.dbo.backupset row with its media family devices, in catalog-ready form."""

    kind: str
    backup_set_id: int
    backup_set_uuid: str
    name: str | None
    database_name: str
    first_lsn: str
    last_lsn: str
    checkpoint_lsn: str | None
    database_backup_lsn: str | None
    differential_base_lsn: str | None
    differential_base_guid: str | None
    is_copy_only: bool
    has_backup_checksums: bool
    is_damaged: bool
    first_recovery_fork_guid: str | None
    last_recovery_fork_guid: str | None
    fork_point_lsn: str | None
    database_guid: str | None
    family_guid: str | None
    start_time: datetime
    finish_time: datetime
    time_zone_minutes: int | None
    backup_size: int
    compressed_backup_size: int
    recovery_model: str | None
    server_name: str | None
    encrypted: bool
    devices: tuple[Device, ...]

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], utc_offset_minutes: int) -> BackupSet:
        r = rows[0]
        kind = _KIND_OF_TYPE.get(str(r["type"]).strip())
        if kind is None:
            raise SqlServerError(f"backup set {r['backup_set_id']} has type {r['type']!r}, which drkit does "
                                 "not restore (only D, I and L)")
        tz = r.get("time_zone")
        tz_minutes = None if tz is None or int(tz) == 127 else int(tz) * 15
        devices = tuple(Device(str(x["physical_device_name"]), _DEVICE_TYPES.get(int(x["device_type"] or 0),
                                                                               str(x["device_type"])))
                        for x in sorted(rows, key=lambda x: int(x.get("family_sequence_number") or 0)))
        first, last = _lsn(r["first_lsn"]), _lsn(r["last_lsn"])
        if first is None or last is None:
            raise SqlServerError(f"backup set {r['backup_set_id']} has no LSN range in msdb")
        return cls(
            kind=kind, backup_set_id=int(r["backup_set_id"]), backup_set_uuid=_guid(r["backup_set_uuid"]) or "",
            name=r.get("name"), database_name=str(r["database_name"]), first_lsn=first, last_lsn=last,
            checkpoint_lsn=_lsn(r["checkpoint_lsn"]), database_backup_lsn=_lsn(r["database_backup_lsn"]),
            differential_base_lsn=_lsn(r["differential_base_lsn"]),
            differential_base_guid=_guid(r["differential_base_guid"]),
            is_copy_only=_bool(r["is_copy_only"]), has_backup_checksums=_bool(r["has_backup_checksums"]),
            is_damaged=_bool(r["is_damaged"]),
            first_recovery_fork_guid=_guid(r["first_recovery_fork_guid"]),
            last_recovery_fork_guid=_guid(r["last_recovery_fork_guid"]),
            fork_point_lsn=_lsn(r["fork_point_lsn"]), database_guid=_guid(r["database_guid"]),
            family_guid=_guid(r["family_guid"]),
            start_time=to_utc(r["backup_start_date"], tz, utc_offset_minutes),
            finish_time=to_utc(r["backup_finish_date"], tz, utc_offset_minutes),
            time_zone_minutes=tz_minutes if tz_minutes is not None else utc_offset_minutes,
            backup_size=int(r["backup_size"] or 0),
            compressed_backup_size=int(r["compressed_backup_size"] or r["backup_size"] or 0),
            recovery_model=r.get("recovery_model"), server_name=r.get("server_name"),
            encrypted=bool(r.get("key_algorithm")), devices=devices)

    @property
    def end_time(self) -> datetime:
        """Latest point this backup restores to: a base's end; for a log, where its log was read (start)."""
        return self.start_time if self.kind == "log" else self.finish_time

    def meta(self) -> dict[str, Any]:
        """What the catalog keeps (JSON: LSNs as decimal strings; no secrets, devices are URLs or paths)."""
        return {
            "engine": "sqlserver", "backup_set_id": self.backup_set_id, "backup_set_uuid": self.backup_set_uuid,
            "server_database": self.database_name, "first_lsn": self.first_lsn, "last_lsn": self.last_lsn,
            "checkpoint_lsn": self.checkpoint_lsn, "database_backup_lsn": self.database_backup_lsn,
            "differential_base_lsn": self.differential_base_lsn,
            "differential_base_guid": self.differential_base_guid, "is_copy_only": self.is_copy_only,
            "has_backup_checksums": self.has_backup_checksums, "is_damaged": self.is_damaged,
            "first_recovery_fork_guid": self.first_recovery_fork_guid,
            "last_recovery_fork_guid": self.last_recovery_fork_guid, "fork_point_lsn": self.fork_point_lsn,
            "database_guid": self.database_guid, "family_guid": self.family_guid,
            "backup_start": self.start_time.isoformat(), "backup_finish": self.finish_time.isoformat(),
            "time_zone_minutes": self.time_zone_minutes, "backup_size": self.backup_size,
            "compressed_backup_size": self.compressed_backup_size, "recovery_model": self.recovery_model,
            "server_name": self.server_name, "encrypted": self.encrypted,
            "devices": [{"device": d.device, "type": d.type} for d in self.devices],
        }


def backup_sets(rows: Sequence[Mapping[str, Any]], utc_offset_minutes: int) -> list[BackupSet]:
    """Group history rows (one per stripe) into backup sets, in msdb order; unknown types are skipped."""
    grouped: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(int(row["backup_set_id"]), []).append(row)
    out = []
    for _, group in sorted(grouped.items()):
        if str(group[0]["type"]).strip() in _KIND_OF_TYPE:
            out.append(BackupSet.from_rows(group, utc_offset_minutes))
    return out


@dataclass(frozen=True)
class FileInfo:
    logical_name: str
    physical_name: str
    type: str  # D data, L log, F full-text catalog, S FILESTREAM/memory-optimized container
    file_id: int


@dataclass(frozen=True)
class ReplicaDatabaseState:
    replica: str
    role: str
    availability_mode: str
    database: str | None
    synchronization_state: str | None
    is_failover_ready: bool
    end_of_log_lsn: int | None
    last_commit_time: datetime | None
    is_suspended: bool


# -- the engine --------------------------------------------------------------------------------------


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
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"SqlServerEngine({self.name!r}, {self.endpoint}, database={self.settings.database!r})"

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
        found = [self._sas] if self._sas else []
        m = _PWD_RE.search(self._dsn)
        if m:
            found.append(m.group(2).strip("{}"))
        return tuple(s for s in found if s)

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
            yield Session(conn, self)
        finally:
            with suppress(Exception):
                conn.close()

    # -- prerequisites --------------------------------------------------------------------------------

    @property
    def credential_name(self) -> str | None:
        if self.settings.target != "url" or not self.settings.url:
            return None
        return split_container_url(self.settings.url)[0]

    def check(self) -> list[CheckItem]:
        s = self.settings
        with self.session() as session:
            facts = session.run(tsql.prerequisites(s.database, credential=self.credential_name,
                                                   certificate=s.certificate)).one()
        db = s.database
        items = [CheckItem("database", facts.get("state") == "ONLINE", str(facts.get("state") or "missing"),
                           "ONLINE", f"database {db!r} must exist and be online on {self.endpoint}")]
        model = str(facts.get("recovery_model") or "?")
        items.append(CheckItem("recovery model", model in ("FULL", "BULK_LOGGED"), model, "FULL",
                               f"ALTER DATABASE {tsql.quote_name(db)} SET RECOVERY FULL; then a full backup "
                               "(log backups need it)"))
        verify = str(facts.get("page_verify") or "?")
        items.append(CheckItem("page verify", verify == "CHECKSUM", verify, "CHECKSUM",
                               f"ALTER DATABASE {tsql.quote_name(db)} SET PAGE_VERIFY CHECKSUM"))
        sysadmin = _bool(facts.get("is_sysadmin"))
        for key, what, fix in (
            ("can_backup_database", "BACKUP DATABASE permission", "add the login to db_backupoperator"),
            ("can_backup_log", "BACKUP LOG permission", "add the login to db_backupoperator"),
            ("can_create_database", "CREATE ANY DATABASE (restores)", "add the login to dbcreator"),
            ("can_read_history", "read msdb backup history", "GRANT SELECT on msdb.dbo.backupset and "
                                                             "backupmediafamily (or db_datareader in msdb)"),
        ):
            ok = sysadmin or _bool(facts.get(key))
            items.append(CheckItem(what, ok, "yes" if ok else "no", "yes", fix))
        edition = str(facts.get("edition") or "")
        compress_ok = not s.compression or "express" not in edition.lower()
        items.append(CheckItem("backup compression", compress_ok, edition or "?", "not Express edition",
                               "set sqlserver.compression: false (Express cannot compress backups)"))
        if self.credential_name:
            exists = int(facts.get("credential_exists") or 0) > 0
            can = sysadmin or _bool(facts.get("can_alter_credential"))
            items.append(CheckItem("SAS credential", exists or (bool(self._sas) and can),
                                   "present" if exists else "missing", "present",
                                   f"export ${s.sas_token_env or 'SAS token variable'} and run `drkit setup "
                                   f"{self.name}` (the login needs ALTER ANY CREDENTIAL)"))
        if s.certificate:
            ok = int(facts.get("certificate_usable") or 0) > 0
            items.append(CheckItem("encryption certificate", ok, "usable" if ok else "missing or without key",
                                   "a master certificate with its private key",
                                   f"CREATE CERTIFICATE {tsql.quote_name(s.certificate)} in master, and back it "
                                   "up with its private key: without it no encrypted backup can be restored"))
        return items

    def setup(self) -> SetupResult:
        applied = []
        if self.credential_name and self._sas:
            with self.session() as session:
                self.ensure_credential(session)
            applied.append(f"SAS credential for {self.credential_name}")
        remaining = [i for i in self.check() if not i.ok]
        return SetupResult(applied=applied, restart_needed=False, remaining=remaining)

    def require_ready(self, kind: str = "full") -> None:
        bad = [i for i in self.check() if not i.ok and (kind == "log" or i.name != "recovery model")]
        if bad:
            lines = "; ".join(f"{i.name} is {i.current!r}, needs {i.expected!r} (fix: {i.fix})" for i in bad)
            raise PrerequisiteError(f"SQL Server database {self.settings.database!r} ({self.name}) is not ready "
                                    f"for {kind} backups: {lines}. `drkit check {self.name}` lists them")

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
        return _lsn(row.get("differential_base_lsn")), _guid(row.get("differential_base_guid"))

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

        copy_only = s.copy_only and kind != "diff"
        session.run(tsql.backup(s.database, kind, device_type=device_type, devices=devices, name=name,
                                description=f"drkit {kind} backup {name}", certificate=s.certificate,
                                copy_only=copy_only, compression=s.compression), on_message)
        return self.read_backup_set(session, name)

    def read_backup_set(self, session: Session, name: str) -> BackupSet:
        rows = session.run(tsql.backupset_by_name(self.settings.database, name)).rows()
        if not rows:
            raise SqlServerError(f"BACKUP reported success but msdb.dbo.backupset has no backup named {name!r} "
                                 f"for {self.settings.database!r}; check that msdb history is not being purged "
                                 "during backups")
        return BackupSet.from_rows(rows, session.utc_offset_minutes())

    def history(self, session: Session, *, days: int | None = None) -> list[BackupSet]:
        rows = session.run(tsql.backup_history(self.settings.database, days=days)).rows()
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
        """Engine protocol: a full backup through the disk staging directory into ``out``."""
        return self._outcome(self.backup_to_disk("full", _auto_name(self.name, "full"), out, progress=progress))

    def diff_backup(self, out: ByteSink, base: BaseInfo, *, progress: Progress | None = None) -> BackupOutcome:
        """Engine protocol: a differential (on whatever full the server's differential base is)."""
        return self._outcome(self.backup_to_disk("diff", _auto_name(self.name, "diff"), out, progress=progress))

    @staticmethod
    def _outcome(info: BackupSet) -> BackupOutcome:
        # SQL Server LSNs are numeric(25,0); they live in meta. The integer fields carry no LSN.
        return BackupOutcome(timeline=0, start_lsn=0, end_lsn=0, start_wal=None, end_wal=None,
                             start_time=info.start_time, end_time=info.end_time,
                             manifest={"format": FORMAT_PIPELINE, **info.meta()}, meta=info.meta())

    # -- restores -------------------------------------------------------------------------------------

    def file_list(self, session: Session, device_type: DeviceType, devices: Sequence[str]) -> list[FileInfo]:
        rows = session.run(tsql.file_list_only(device_type, devices)).rows()
        return [FileInfo(str(r["LogicalName"]), str(r["PhysicalName"]), str(r["Type"]).strip(),
                         int(r.get("FileId") or i)) for i, r in enumerate(rows, 1)]

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
        try:
            result = session.run(tsql.checkdb(database))
        except SqlServerError as exc:
            raise CorruptionFoundError(
                f"DBCC CHECKDB found consistency errors in {database!r} (restored from the backup): {exc}",
                numbers=exc.numbers, sqlstate=exc.sqlstate) from None
        return "; ".join(result.messages) or "DBCC CHECKDB: no consistency errors"

    def drop_database(self, session: Session, database: str) -> None:
        session.run(tsql.drop_database(database))

    # -- availability groups --------------------------------------------------------------------------

    def ag_state(self, session: Session, group: str | None = None) -> list[ReplicaDatabaseState]:
        ag = group or self.settings.availability_group
        if not ag:
            raise ConfigError(f"databases.{self.name}.sqlserver.availability_group is not set")
        rows = session.run(tsql.ag_local_state(ag)).rows()
        if not rows:
            raise AvailabilityGroupError(f"this server ({self.endpoint}) is not a replica of availability "
                                         f"group {ag!r}, or the login lacks VIEW SERVER STATE")
        return [ReplicaDatabaseState(
            replica=str(r["replica_server_name"]), role=str(r.get("role_desc") or "?"),
            availability_mode=str(r.get("availability_mode_desc") or "?"), database=r.get("database_name"),
            synchronization_state=r.get("synchronization_state_desc"),
            is_failover_ready=_bool(r.get("is_failover_ready")),
            end_of_log_lsn=None if r.get("end_of_log_lsn") is None else int(r["end_of_log_lsn"]),
            last_commit_time=r.get("last_commit_time"), is_suspended=_bool(r.get("is_suspended")))
            for r in rows]


def join_server_path(folder: str, name: str) -> str:
    """``folder`` + ``name`` with the server's separator (backslash on Windows paths, else '/')."""
    sep = "\\" if "\\" in folder and "/" not in folder else "/"
    return folder.rstrip("\\/") + sep + name


def _auto_name(db: str, kind: str) -> str:
    return f"{db}-{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"




# -- availability-group failover -------------------------------------------------------------------------


class FailoverNotReadyError(AvailabilityGroupError):
    """A planned failover was refused before anything was sent: the target is not synchronized."""


@dataclass(frozen=True)
class FailoverReport:
    group: str
    new_primary: str
    forced: bool
    already_primary: bool
    end_of_log_lsn: Mapping[str, Mapping[str, int | None]]
    """replica → database → end_of_log_lsn, as read before the failover."""
    resumed: tuple[str, ...]
    """``replica:database`` whose data movement was resumed."""
    data_loss_seconds: float | None
    """Newest commit any reachable replica had minus the new primary's (forced only; None if unknown)."""
    notes: tuple[str, ...]


def _group(engine: SqlServerEngine, group: str | None) -> str:
    ag = group or engine.settings.availability_group
    if not ag:
        raise ConfigError(f"databases.{engine.name}.sqlserver.availability_group is not set")
    return tsql.validate_name(ag, "availability group name")


def _wait_primary(engine: SqlServerEngine, session: Session, group: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        states = engine.ag_state(session, group)
        if all(st.role == "PRIMARY" for st in states):
            return
        if time.monotonic() >= deadline:
            raise AvailabilityGroupError(
                f"{engine.endpoint} accepted the failover of {group!r} but is still {states[0].role} after "
                f"{wait_s:.0f} s; check the group's dashboard and the cluster log before retrying")
        engine._sleep(1.0)


def planned_failover(target: SqlServerEngine, group: str | None = None, *, wait_s: float = 120) -> FailoverReport:
    """``ALTER AVAILABILITY GROUP … FAILOVER`` on the target secondary, only if no data can be lost.

    Refused (nothing sent) unless the target replica is synchronous-commit and every database on
    it is SYNCHRONIZED and failover-ready. Re-running after success changes nothing.
    """
    ag = _group(target, group)
    with target.session() as session:
        states = target.ag_state(session, ag)
        lsns = {states[0].replica: {str(st.database): st.end_of_log_lsn for st in states}}
        if all(st.role == "PRIMARY" for st in states):
            return FailoverReport(ag, states[0].replica, False, True, lsns, (), 0.0,
                                  (f"{states[0].replica} is already the primary of {ag}; nothing done",))
        problems = []
        if states[0].availability_mode != "SYNCHRONOUS_COMMIT":
            problems.append(f"the replica is {states[0].availability_mode}, not SYNCHRONOUS_COMMIT")
        for st in states:
            if st.synchronization_state != "SYNCHRONIZED" or not st.is_failover_ready:
                problems.append(f"database {st.database!r} is {st.synchronization_state or 'not joined'}"
                                f"{'' if st.is_failover_ready else ', not failover-ready'}")
        if problems:
            raise FailoverNotReadyError(
                f"planned failover of {ag!r} to {states[0].replica} refused, nothing was changed: "
                + "; ".join(problems) + ". Switch the replica to SYNCHRONOUS_COMMIT and wait until every "
                "database is SYNCHRONIZED, or run the forced (data-loss) failover runbook if the primary is lost")
        session.run(tsql.ag_failover(ag, force=False))
        _wait_primary(target, session, ag, wait_s)
    return FailoverReport(ag, states[0].replica, False, False, lsns, (), 0.0, ())


def choose_forced_target(states: Mapping[str, Sequence[ReplicaDatabaseState]]) -> tuple[str, list[str]]:
    """The replica to force onto: most databases at the highest ``end_of_log_lsn``; ties keep the given order."""
    if not states:
        raise AvailabilityGroupError("no replica of the availability group could be reached; nothing was changed")
    best: dict[str, int] = {}
    for replica_states in states.values():
        for st in replica_states:
            if st.database is not None and st.end_of_log_lsn is not None:
                best[st.database] = max(best.get(st.database, st.end_of_log_lsn), st.end_of_log_lsn)
    scores = {replica: sum(1 for st in sts if st.database is not None and st.end_of_log_lsn is not None
                           and st.end_of_log_lsn == best.get(st.database)) for replica, sts in states.items()}
    order = list(states)
    chosen = max(order, key=lambda r: (scores[r], -order.index(r)))
    reasons = [f"{r}: highest end_of_log_lsn for {scores[r]} of {len(best)} database(s)" for r in order]
    return chosen, reasons


def forced_failover(
    candidates: Sequence[SqlServerEngine], group: str | None = None, *, wait_s: float = 120,
) -> FailoverReport:
    """``FORCE_FAILOVER_ALLOW_DATA_LOSS`` on the secondary with the most log, then ``SET HADR RESUME`` elsewhere.

    ``candidates`` are the secondaries drkit may promote, in order of preference; unreachable ones
    are skipped (and noted). If one of them is already the primary, nothing is forced again.
    The old primary must be fenced (down, or cut off) by the runbook before this runs.
    """
    if not candidates:
        raise AvailabilityGroupError("forced failover needs at least one secondary replica to promote")
    ag = _group(candidates[0], group)
    states: dict[str, list[ReplicaDatabaseState]] = {}
    engines: dict[str, SqlServerEngine] = {}
    notes: list[str] = []
    for engine in candidates:
        try:
            with engine.session() as session:
                found = engine.ag_state(session, ag)
        except (DatabaseUnreachableError, SqlServerError) as exc:
            notes.append(f"skipped {engine.endpoint}: {exc}")
            continue
        states[found[0].replica] = found
        engines[found[0].replica] = engine
    lsns = {r: {str(st.database): st.end_of_log_lsn for st in sts} for r, sts in states.items()}
    primary = next((r for r, sts in states.items() if all(st.role == "PRIMARY" for st in sts)), None)
    already = primary is not None
    if primary is None:
        primary, reasons = choose_forced_target(states)
        notes.extend(reasons)
        with engines[primary].session() as session:
            session.run(tsql.ag_failover(ag, force=True))
            _wait_primary(engines[primary], session, ag, wait_s)
    else:
        notes.append(f"{primary} is already the primary of {ag}; no failover was forced again")
    resumed: list[str] = []
    for replica, engine in engines.items():
        if replica == primary:
            continue
        try:
            with engine.session() as session:
                for st in engine.ag_state(session, ag):
                    if st.database is not None and st.is_suspended:
                        session.run(tsql.hadr_resume(st.database))
                        resumed.append(f"{replica}:{st.database}")
        except (DatabaseUnreachableError, SqlServerError) as exc:
            notes.append(f"could not resume data movement on {replica}: {exc}; run ALTER DATABASE … SET HADR "
                         "RESUME there once it is reachable")
    commits = [st.last_commit_time for sts in states.values() for st in sts if st.last_commit_time is not None]
    mine = [st.last_commit_time for st in states[primary] if st.last_commit_time is not None]
    loss = (max(commits) - min(mine)).total_seconds() if commits and mine else None
    return FailoverReport(ag, primary, True, already, lsns, tuple(resumed), loss, tuple(notes))
