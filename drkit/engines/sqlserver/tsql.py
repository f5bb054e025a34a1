"""T-SQL batches for the SQL Server engine: built here, sent by :class:`drkit.engines.sqlserver.odbc.Session`.

Why a separate module: every statement drkit sends to SQL Server is a pure
function of validated inputs, so it can be golden-tested byte for byte
without a server. Two rules hold for every builder:

* identifiers (database, certificate, availability-group names) are validated
  (1..128 characters, no control characters) and quoted like ``QUOTENAME``
  (``]`` doubled); a bad name raises :class:`NameRefusedError` before any SQL
  exists, so nothing is ever sent for it;
* string values (backup URLs and paths, logical file names, STOPAT, the SAS
  token) are never spliced into SQL text. They are ODBC parameters bound to
  ``DECLARE``d variables, which BACKUP and RESTORE accept wherever they take a
  literal (``TO URL = @dev1``, ``MOVE @from1 TO @to1``, ``STOPAT = @stopat``).
  ``CREATE CREDENTIAL`` accepts no variable for its secret, so that one batch
  builds the statement server-side from parameters (``QUOTENAME`` and a doubled
  quote) and runs it with ``EXEC``; the token still never appears in drkit's
  SQL text, logs or errors (:attr:`Batch.secret_params`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from drkit.errors import EngineError, NotRetryable

Param = str | int | None
BackupKind = Literal["full", "diff", "log"]
DeviceType = Literal["URL", "DISK"]

MAX_NAME_LENGTH = 128
"""sysname: the longest identifier SQL Server (and QUOTENAME) accepts."""

MAX_DEVICE_LENGTH = 259
"""Longest backup device name (a URL or a path) BACKUP/RESTORE accept."""

MAX_STRIPES = 64
"""Most backup devices (stripes) one BACKUP statement may write to."""

MAXTRANSFERSIZE = 4 * 1024 * 1024
BLOCKSIZE = 65536
STATS_PERCENT = 10

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class NameRefusedError(EngineError, NotRetryable):
    """A database, certificate or group name (or a path) is unusable; nothing was sent to the server."""


# -- validation and quoting --------------------------------------------------------------------------


def validate_name(name: object, what: str = "name") -> str:
    """Return ``name`` if SQL Server can take it as an identifier, else raise :class:`NameRefusedError`."""
    if not isinstance(name, str) or not name:
        raise NameRefusedError(f"{what} must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise NameRefusedError(f"{what} {name[:40]!r}... is {len(name)} characters; SQL Server names are at "
                               f"most {MAX_NAME_LENGTH}")
    if _CONTROL.search(name):
        raise NameRefusedError(f"{what} {name!r} contains a control character (NUL, newline, tab...); "
                               "rename it or pick another name")
    if "?" in name:
        raise NameRefusedError(f"{what} {name!r} contains '?', which ODBC reads as a parameter marker; "
                               "drkit cannot send it safely: rename it")
    if name != name.strip():
        raise NameRefusedError(f"{what} {name!r} has leading or trailing white space, which SQL Server "
                               "ignores in comparisons; remove it")
    return name


def quote_name(name: object, what: str = "name") -> str:
    """``[name]`` with ``]`` doubled, exactly as ``QUOTENAME(name)`` would; validated first."""
    valid = validate_name(name, what)
    return "[" + valid.replace("]", "]]") + "]"


def validate_device(value: object, what: str = "backup device") -> str:
    """A backup URL or file path: non-empty, at most 259 characters, no control characters or quotes."""
    if not isinstance(value, str) or not value:
        raise NameRefusedError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_DEVICE_LENGTH:
        raise NameRefusedError(f"{what} is {len(value)} characters ({value[:60]}...); SQL Server accepts at "
                               f"most {MAX_DEVICE_LENGTH}: use a shorter container URL, prefix or path")
    if _CONTROL.search(value):
        raise NameRefusedError(f"{what} {value!r} contains a control character")
    return value


def validate_text(value: object, what: str, limit: int = 4000) -> str:
    """A string parameter (a file path, a logical file name): bounded, no control characters."""
    if not isinstance(value, str) or not value:
        raise NameRefusedError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > limit or _CONTROL.search(value):
        raise NameRefusedError(f"{what} {value[:60]!r} is too long or contains a control character")
    return value


# -- batches -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One batch as sent: SQL text with ``?`` markers, and its parameters in order."""

    label: str
    sql: str
    params: tuple[Param, ...] = ()
    secret_params: frozenset[int] = field(default_factory=frozenset)
    long_running: bool = False
    """BACKUP, RESTORE and DBCC run for hours on big databases: they get the long timeout."""

    def __post_init__(self) -> None:
        markers = self.sql.count("?")
        if markers != len(self.params):  # a builder bug, never an operator error
            raise AssertionError(f"{self.label}: {markers} parameter markers for {len(self.params)} parameters")

    def shown_params(self) -> list[Param]:
        """Parameters safe to show (secrets replaced), for logs and golden files."""
        return ["<secret>" if i in self.secret_params else p for i, p in enumerate(self.params)]


class _Vars:
    """Collects ``DECLARE @x type = ?`` lines and their parameters, in order."""

    def __init__(self) -> None:
        self.decls: list[str] = []
        self.params: list[Param] = []
        self.secret: set[int] = set()

    def add(self, name: str, sql_type: str, value: Param, *, secret: bool = False) -> str:
        if secret:
            self.secret.add(len(self.params))
        self.decls.append(f"@{name} {sql_type} = ?")
        self.params.append(value)
        return f"@{name}"

    def declare(self) -> str:
        if not self.decls:
            return ""
        return "DECLARE " + ",\n        ".join(self.decls) + ";\n"

    def batch(self, label: str, body: str, *, long_running: bool = False) -> Batch:
        return Batch(label, self.declare() + body, tuple(self.params), frozenset(self.secret), long_running)


def _devices(v: _Vars, device_type: DeviceType, devices: Sequence[str]) -> str:
    if not devices:
        raise NameRefusedError("a backup needs at least one device")
    if len(devices) > MAX_STRIPES:
        raise NameRefusedError(f"{len(devices)} backup devices; SQL Server allows at most {MAX_STRIPES}")
    if device_type not in ("URL", "DISK"):
        raise NameRefusedError(f"unknown device type {device_type!r}")
    refs = [v.add(f"dev{i}", "nvarchar(260)", validate_device(d)) for i, d in enumerate(devices, 1)]
    return ", ".join(f"{device_type} = {r}" for r in refs)


# -- connection-level facts --------------------------------------------------------------------------


def server_info() -> Batch:
    return Batch("server facts", (
        "SELECT CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128)) AS product_version,\n"
        "       CAST(SERVERPROPERTY('Edition') AS nvarchar(128)) AS edition,\n"
        "       CAST(SERVERPROPERTY('InstanceDefaultDataPath') AS nvarchar(4000)) AS default_data_path,\n"
        "       CAST(SERVERPROPERTY('InstanceDefaultLogPath') AS nvarchar(4000)) AS default_log_path,\n"
        "       DATEPART(TZOFFSET, SYSDATETIMEOFFSET()) AS utc_offset_minutes;"))


def prerequisites(database: str, *, credential: str | None, certificate: str | None) -> Batch:
    """One row of facts ``check`` turns into CheckItems (names go as parameters: this batch only reads).

    ``engine_edition`` and ``edition`` decide compression and encryption; ``ag_role`` (NULL outside an
    availability group, or without VIEW SERVER STATE) and ``is_preferred_backup_replica`` (1 outside a group)
    decide what a backup may do on this replica.
    """
    v = _Vars()
    db = v.add("db", "sysname", validate_name(database, "database name"))
    cred = v.add("cred", "nvarchar(4000)", credential)
    cert = v.add("cert", "sysname", None if certificate is None else validate_name(certificate, "certificate"))
    return v.batch(f"prerequisites of {database}", (
        f"SELECT CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128)) AS product_version,\n"
        f"       CAST(SERVERPROPERTY('Edition') AS nvarchar(128)) AS edition,\n"
        f"       CAST(SERVERPROPERTY('EngineEdition') AS int) AS engine_edition,\n"
        f"       (SELECT state_desc FROM sys.databases WHERE name = {db}) AS state,\n"
        f"       (SELECT recovery_model_desc FROM sys.databases WHERE name = {db}) AS recovery_model,\n"
        f"       (SELECT page_verify_option_desc FROM sys.databases WHERE name = {db}) AS page_verify,\n"
        f"       (SELECT ars.role_desc FROM sys.databases AS d\n"
        f"          JOIN sys.dm_hadr_availability_replica_states AS ars\n"
        f"            ON ars.replica_id = d.replica_id AND ars.is_local = 1\n"
        f"         WHERE d.name = {db}) AS ag_role,\n"
        f"       sys.fn_hadr_backup_is_preferred_replica({db}) AS is_preferred_backup_replica,\n"
        f"       IS_SRVROLEMEMBER('sysadmin') AS is_sysadmin,\n"
        f"       HAS_PERMS_BY_NAME({db}, 'DATABASE', 'BACKUP DATABASE') AS can_backup_database,\n"
        f"       HAS_PERMS_BY_NAME({db}, 'DATABASE', 'BACKUP LOG') AS can_backup_log,\n"
        f"       HAS_PERMS_BY_NAME(NULL, NULL, 'CREATE ANY DATABASE') AS can_create_database,\n"
        f"       HAS_PERMS_BY_NAME('msdb.dbo.backupset', 'OBJECT', 'SELECT') AS can_read_history,\n"
        f"       HAS_PERMS_BY_NAME(NULL, NULL, 'ALTER ANY CREDENTIAL') AS can_alter_credential,\n"
        f"       (SELECT COUNT(*) FROM sys.credentials WHERE name = {cred}) AS credential_exists,\n"
        f"       (SELECT COUNT(*) FROM master.sys.certificates\n"
        f"         WHERE name = {cert} AND pvt_key_encryption_type <> 'NA') AS certificate_usable;"))


def database_size(database: str) -> Batch:
    """Allocated data and log bytes: the upper bound a backup's size is planned from."""
    v = _Vars()
    db = v.add("db", "sysname", validate_name(database, "database name"))
    return v.batch(f"size of {database}", (
        "SELECT SUM(CASE WHEN type = 0 THEN CAST(size AS bigint) ELSE 0 END) * 8192 AS data_bytes,\n"
        "       SUM(CASE WHEN type = 1 THEN CAST(size AS bigint) ELSE 0 END) * 8192 AS log_bytes\n"
        f"  FROM sys.master_files WHERE database_id = DB_ID({db});"))


def differential_base(database: str) -> Batch:
    """The full backup the server will base the next differential on (primary data file's base)."""
    v = _Vars()
    db = v.add("db", "sysname", validate_name(database, "database name"))
    return v.batch(f"differential base of {database}", (
        "SELECT differential_base_lsn, differential_base_guid\n"
        f"  FROM sys.master_files WHERE database_id = DB_ID({db}) AND file_id = 1;"))


def database_state(database: str) -> Batch:
    v = _Vars()
    db = v.add("db", "sysname", validate_name(database, "database name"))
    return v.batch(f"does {database} exist", (
        f"SELECT DB_ID({db}) AS database_id, CAST(DATABASEPROPERTYEX({db}, 'Status') AS nvarchar(60)) AS status;"))


# -- credential --------------------------------------------------------------------------------------


def sas_credential(container_url: str, sas_token: str) -> Batch:
    """Create (or rotate) the SAS credential named after the container URL; idempotent.

    The statement is assembled on the server from the two parameters: ``QUOTENAME`` for the
    name, doubled quotes for the token. Re-running it with the same token changes nothing;
    with a new token it rotates the secret (SAS tokens expire).
    """
    validate_device(container_url, "container URL")
    if not sas_token or _CONTROL.search(sas_token):
        raise NameRefusedError("the SAS token is empty or contains a control character")
    v = _Vars()
    name = v.add("name", "nvarchar(128)", container_url)
    secret = v.add("secret", "nvarchar(max)", sas_token, secret=True)
    body = (
        "DECLARE @verb nvarchar(6) = CASE WHEN EXISTS (SELECT 1 FROM sys.credentials WHERE name = "
        f"{name}) THEN N'ALTER' ELSE N'CREATE' END;\n"
        f"DECLARE @sql nvarchar(max) = @verb + N' CREDENTIAL ' + QUOTENAME({name})\n"
        "    + N' WITH IDENTITY = N''SHARED ACCESS SIGNATURE'', SECRET = N'''\n"
        f"    + REPLACE({secret}, N'''', N'''''') + N''';';\n"
        "EXEC (@sql);")
    return v.batch(f"SAS credential for {container_url}", body)


# -- backup ------------------------------------------------------------------------------------------


def backup(
    database: str,
    kind: BackupKind,
    *,
    device_type: DeviceType,
    devices: Sequence[str],
    name: str,
    description: str,
    certificate: str | None = None,
    copy_only: bool = False,
    compression: bool = True,
) -> Batch:
    """``BACKUP DATABASE|LOG`` with checksums, compression, a fresh media set and the backup's name.

    ``name`` (the drkit backup id) becomes ``backupset.name``, so the msdb row of exactly this
    backup is found afterwards without guessing by time.
    """
    quoted = quote_name(database, "database name")
    cert = quote_name(certificate, "certificate name") if certificate else None
    v = _Vars()
    to = _devices(v, device_type, devices)
    name_ref = v.add("name", "nvarchar(128)", validate_text(name, "backup set name", 128))
    desc_ref = v.add("description", "nvarchar(255)", validate_text(description, "backup description", 255))
    statement = "BACKUP LOG" if kind == "log" else "BACKUP DATABASE"
    options = []
    if kind == "diff":
        options.append("DIFFERENTIAL")
    if copy_only:
        if kind != "full":  # a builder bug: only a full is ever taken copy-only (see SqlServerSettings.copy_only)
            raise AssertionError(f"COPY_ONLY is for full backups, not {kind}")
        options.append("COPY_ONLY")
    options += ["CHECKSUM", *(["COMPRESSION"] if compression else []), "FORMAT",
                f"MAXTRANSFERSIZE = {MAXTRANSFERSIZE}", f"BLOCKSIZE = {BLOCKSIZE}", f"STATS = {STATS_PERCENT}",
                f"NAME = {name_ref}", f"DESCRIPTION = {desc_ref}"]
    if cert:
        options.append(f"ENCRYPTION (ALGORITHM = AES_256, SERVER CERTIFICATE = {cert})")
    body = f"{statement} {quoted}\n  TO {to}\n  WITH " + ",\n       ".join(options) + ";"
    return v.batch(f"{kind} backup of {database} to {device_type}", body, long_running=True)


BACKUPSET_COLUMNS: tuple[str, ...] = (
    "backup_set_id", "backup_set_uuid", "media_set_id", "name", "type", "database_name", "database_guid",
    "family_guid", "first_lsn", "last_lsn", "checkpoint_lsn", "database_backup_lsn", "differential_base_lsn",
    "differential_base_guid", "is_copy_only", "has_backup_checksums", "is_damaged", "begins_log_chain",
    "first_recovery_fork_guid", "last_recovery_fork_guid", "fork_point_lsn", "backup_start_date",
    "backup_finish_date", "time_zone", "backup_size", "compressed_backup_size", "recovery_model",
    "server_name", "key_algorithm", "position", "has_bulk_logged_data",
)
"""The msdb.dbo.backupset columns drkit records (all exist from SQL Server 2014 on). ``position`` is the
set's place in its media (``RESTORE … WITH FILE = position``)."""

BACKUPSET_COLUMNS_2022: tuple[str, ...] = ("last_valid_restore_time",)
"""Columns SQL Server 2022 (major version 16) added: selected only where the server has them."""


def _history_select(sql2022: bool) -> str:
    columns = BACKUPSET_COLUMNS + (BACKUPSET_COLUMNS_2022 if sql2022 else ())
    return ("SELECT " + ",\n       ".join(", ".join(f"bs.{c}" for c in columns[i:i + 5])
                                        for i in range(0, len(columns), 5)) + ",\n"
            "       mf.family_sequence_number, mf.physical_device_name, mf.device_type\n"
            "  FROM msdb.dbo.backupset AS bs\n"
            "  JOIN msdb.dbo.backupmediafamily AS mf ON mf.media_set_id = bs.media_set_id AND mf.mirror = 0\n")


def backupset_by_name(database: str, name: str, *, sql2022: bool = False) -> Batch:
    """The msdb row(s) of the backup named ``name`` (one row per stripe)."""
    v = _Vars()
    db = v.add("db", "sysname", validate_name(database, "database name"))
    nm = v.add("name", "nvarchar(128)", validate_text(name, "backup set name", 128))
    return v.batch(f"msdb history of backup {name}", (
        _history_select(sql2022)
        + f" WHERE bs.backup_set_id = (SELECT MAX(backup_set_id) FROM msdb.dbo.backupset\n"
          f"                            WHERE database_name = {db} AND name = {nm})\n"
          " ORDER BY mf.family_sequence_number;"))


def backup_history(database: str, *, days: int | None = None, sql2022: bool = False) -> Batch:
    """Every full, differential and log backup of ``database`` msdb remembers (optionally the last ``days``)."""
    v = _Vars()
    db = v.add("db", "sysname", validate_name(database, "database name"))
    where = f" WHERE bs.database_name = {db} AND bs.type IN ('D', 'I', 'L')\n"
    if days is not None:
        ref = v.add("days", "int", int(days))
        where += f"   AND bs.backup_start_date >= DATEADD(day, -{ref}, GETDATE())\n"
    return v.batch(f"msdb history of {database}",
                   _history_select(sql2022) + where + " ORDER BY bs.backup_set_id, mf.family_sequence_number;")


# -- restore -----------------------------------------------------------------------------------------


def _file(v: _Vars, file: int | None) -> list[str]:
    """``FILE = @file``: which backup set of the media (``backupset.position``); None on URL devices, where
    RESTORE takes no FILE (a blob holds one backup set)."""
    if file is None:
        return []
    if isinstance(file, bool) or not isinstance(file, int) or file < 1:
        raise NameRefusedError(f"backup set position must be a positive integer, got {file!r}")
    return [f"FILE = {v.add('file', 'int', file)}"]


def verify_only(device_type: DeviceType, devices: Sequence[str], *, checksum: bool = True,
                file: int | None = None) -> Batch:
    v = _Vars()
    src = _devices(v, device_type, devices)
    options = _file(v, file)
    if checksum:
        options.append("CHECKSUM")
    options.append(f"STATS = {STATS_PERCENT}")
    return v.batch(f"RESTORE VERIFYONLY of {devices[0]}",
                   f"RESTORE VERIFYONLY FROM {src}\n  WITH {', '.join(options)};", long_running=True)


def file_list_only(device_type: DeviceType, devices: Sequence[str], *, file: int | None = None) -> Batch:
    v = _Vars()
    src = _devices(v, device_type, devices)
    options = _file(v, file)
    return v.batch(f"RESTORE FILELISTONLY of {devices[0]}",
                   f"RESTORE FILELISTONLY FROM {src}" + (f" WITH {options[0]}" if options else "") + ";")


def header_only(device_type: DeviceType, devices: Sequence[str]) -> Batch:
    """Every backup set on a media (one row each: ``Position``, ``BackupSetGUID``, LSNs): proves the devices
    exist and are readable, and which position holds the set a restore wants."""
    v = _Vars()
    src = _devices(v, device_type, devices)
    return v.batch(f"RESTORE HEADERONLY of {devices[0]}", f"RESTORE HEADERONLY FROM {src};")


def server_local_time(utc: str) -> Batch:
    """``utc`` (``YYYY-MM-DDTHH:MM:SS.fff``) as the server's local time at that instant (SQL Server 2022:
    ``AT TIME ZONE CURRENT_TIMEZONE_ID()``, which knows the zone's daylight-saving rules), the offsets an
    hour either side (a drop means the clocks went back: that local time happens twice), and the
    server's offset now (``DATEPART(TZOFFSET, SYSDATETIMEOFFSET())``)."""
    v = _Vars()
    ref = v.add("utc", "datetime2(3)", validate_text(utc, "UTC time", 30))
    return v.batch("server-local time of the restore target", (
        "DECLARE @tz nvarchar(256) = CURRENT_TIMEZONE_ID();\n"
        f"DECLARE @local datetimeoffset(3) = ({ref} AT TIME ZONE 'UTC') AT TIME ZONE @tz;\n"
        "SELECT CONVERT(nvarchar(23), CAST(@local AS datetime2(3)), 126) AS local_time,\n"
        "       DATEPART(TZOFFSET, @local) AS offset_minutes, @tz AS time_zone,\n"
        f"       DATEPART(TZOFFSET, (DATEADD(hour, -1, {ref}) AT TIME ZONE 'UTC') AT TIME ZONE @tz)"
        " AS offset_hour_before,\n"
        f"       DATEPART(TZOFFSET, (DATEADD(hour, 1, {ref}) AT TIME ZONE 'UTC') AT TIME ZONE @tz)"
        " AS offset_hour_after,\n"
        "       DATEPART(TZOFFSET, SYSDATETIMEOFFSET()) AS current_offset_minutes;"))


def restore(
    database: str,
    kind: BackupKind,
    *,
    device_type: DeviceType,
    devices: Sequence[str],
    moves: Sequence[tuple[str, str]] = (),
    recovery: bool,
    stopat: str | None = None,
    checksum: bool = True,
    file: int | None = None,
) -> Batch:
    """One step of a restore sequence: ``RESTORE DATABASE`` (full/diff) or ``RESTORE LOG``.

    ``moves`` are (logical name, new physical path) pairs: every file for the full, and on a later step the
    files its backup has that the steps before did not (added after the full).
    ``stopat`` is the server-local time ``YYYY-MM-DDTHH:MM:SS.fff`` (ISO 8601, independent
    of the session's language and DATEFORMAT), given on every RESTORE LOG of a point-in-time restore.
    ``file`` is the backup set's position on DISK media (``FILE = n``).
    """
    quoted = quote_name(database, "database name")
    v = _Vars()
    src = _devices(v, device_type, devices)
    options = _file(v, file)
    for i, (logical, physical) in enumerate(moves, 1):
        frm = v.add(f"from{i}", "nvarchar(128)", validate_text(logical, "logical file name", 128))
        to = v.add(f"to{i}", "nvarchar(260)", validate_text(physical, "restore file path", MAX_DEVICE_LENGTH))
        options.append(f"MOVE {frm} TO {to}")
    if checksum:
        options.append("CHECKSUM")
    options.append("RECOVERY" if recovery else "NORECOVERY")
    if stopat is not None:
        if kind != "log":
            raise AssertionError("STOPAT belongs on RESTORE LOG")
        options.append(f"STOPAT = {v.add('stopat', 'datetime', validate_text(stopat, 'STOPAT time', 30))}")
    options.append(f"STATS = {STATS_PERCENT}")
    statement = "RESTORE LOG" if kind == "log" else "RESTORE DATABASE"
    body = f"{statement} {quoted}\n  FROM {src}\n  WITH " + ",\n       ".join(options) + ";"
    what = "log" if kind == "log" else kind
    return v.batch(f"restore {what} into {database} ({'RECOVERY' if recovery else 'NORECOVERY'})", body,
                   long_running=True)


def checkdb(database: str) -> Batch:
    return Batch(f"DBCC CHECKDB of {database}",
                 f"DBCC CHECKDB ({quote_name(database, 'database name')}) WITH NO_INFOMSGS, ALL_ERRORMSGS;",
                 long_running=True)


def drop_database(database: str) -> Batch:
    """Drop ``database`` if it exists, kicking sessions off first when it is online; idempotent."""
    quoted = quote_name(database, "database name")
    v = _Vars()
    db = v.add("db", "sysname", database)
    return v.batch(f"drop database {database}", (
        f"IF DB_ID({db}) IS NOT NULL\n"
        "BEGIN\n"
        f"    IF DATABASEPROPERTYEX({db}, 'Status') = N'ONLINE'\n"
        f"        ALTER DATABASE {quoted} SET SINGLE_USER WITH ROLLBACK IMMEDIATE;\n"
        f"    DROP DATABASE {quoted};\n"
        "END"), long_running=True)


def in_database(database: str, sql: str, label: str) -> Batch:
    """An operator's check from the policy file, run inside ``database`` by ``sp_executesql``.

    The check's text travels as a parameter (it is the operator's SQL, run as written), and the
    session's own database context never changes, so the scratch database can be dropped after.
    """
    quoted = quote_name(database, "database name")
    v = _Vars()
    if not sql.strip() or re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", sql):
        raise NameRefusedError(f"check {sql[:60]!r} is empty or contains a control character")
    stmt = v.add("stmt", "nvarchar(max)", sql)
    return v.batch(label, f"EXEC {quoted}.sys.sp_executesql {stmt};", long_running=True)


# -- availability groups -----------------------------------------------------------------------------


def ag_local_state(group: str) -> Batch:
    """This replica's role, availability mode, connection to the primary, the group's cluster type, and per
    database readiness, end of log, recovery LSN (the fork point, on a primary) and database state.

    ``cluster_type_desc`` (WSFC, EXTERNAL, NONE) exists from SQL Server 2017; before it every group is WSFC,
    so the column is read through ``sp_executesql`` only where ``COL_LENGTH`` finds it.
    """
    v = _Vars()
    ag = v.add("ag", "sysname", validate_name(group, "availability group name"))
    return v.batch(f"state of availability group {group} on this replica", (
        "DECLARE @cluster_type nvarchar(60) = N'WSFC';\n"
        "IF COL_LENGTH(N'sys.availability_groups', N'cluster_type_desc') IS NOT NULL\n"
        "    EXEC sys.sp_executesql\n"
        "         N'SELECT @t = cluster_type_desc FROM sys.availability_groups WHERE name = @n;',\n"
        f"         N'@t nvarchar(60) OUTPUT, @n sysname', @t = @cluster_type OUTPUT, @n = {ag};\n"
        "SELECT ar.replica_server_name, ars.role_desc, ar.availability_mode_desc,\n"
        "       @cluster_type AS cluster_type_desc, ars.connected_state_desc,\n"
        "       DB_NAME(drs.database_id) AS database_name, drs.synchronization_state_desc,\n"
        "       drcs.is_failover_ready, drs.end_of_log_lsn, drs.last_hardened_lsn, drs.recovery_lsn,\n"
        "       drs.last_commit_time, drs.is_suspended, d.state_desc AS database_state\n"
        "  FROM sys.availability_groups AS ag\n"
        "  JOIN sys.availability_replicas AS ar ON ar.group_id = ag.group_id\n"
        "  JOIN sys.dm_hadr_availability_replica_states AS ars\n"
        "    ON ars.replica_id = ar.replica_id AND ars.is_local = 1\n"
        "  LEFT JOIN sys.dm_hadr_database_replica_states AS drs\n"
        "         ON drs.replica_id = ar.replica_id AND drs.is_local = 1\n"
        "  LEFT JOIN sys.dm_hadr_database_replica_cluster_states AS drcs\n"
        "         ON drcs.replica_id = ar.replica_id AND drcs.group_database_id = drs.group_database_id\n"
        "  LEFT JOIN sys.databases AS d ON d.database_id = drs.database_id\n"
        f" WHERE ag.name = {ag}\n"
        " ORDER BY database_name;"))


def ag_replicas(group: str) -> Batch:
    """Every replica of ``group`` by name, this one marked: where backup history lives (msdb is per server)."""
    v = _Vars()
    ag = v.add("ag", "sysname", validate_name(group, "availability group name"))
    return v.batch(f"replicas of availability group {group}", (
        "SELECT ar.replica_server_name, ISNULL(ars.is_local, 0) AS is_local\n"
        "  FROM sys.availability_groups AS ag\n"
        "  JOIN sys.availability_replicas AS ar ON ar.group_id = ag.group_id\n"
        "  LEFT JOIN sys.dm_hadr_availability_replica_states AS ars ON ars.replica_id = ar.replica_id\n"
        f" WHERE ag.name = {ag}\n"
        " ORDER BY ar.replica_server_name;"))


def ag_failover(group: str, *, force: bool) -> Batch:
    verb = "FORCE_FAILOVER_ALLOW_DATA_LOSS" if force else "FAILOVER"
    return Batch(f"{'forced' if force else 'planned'} failover of availability group {group}",
                 f"ALTER AVAILABILITY GROUP {quote_name(group, 'availability group name')} {verb};",
                 long_running=True)


def hadr_resume(database: str) -> Batch:
    return Batch(f"resume data movement for {database}",
                 f"ALTER DATABASE {quote_name(database, 'database name')} SET HADR RESUME;")


def ag_demote(group: str) -> Batch:
    """``SET (ROLE = SECONDARY)`` on a primary of a CLUSTER_TYPE = NONE group: the first step of its failover, and
    what a former primary that came back as a primary needs after a forced failover."""
    return Batch(f"demote this replica of availability group {group}",
                 f"ALTER AVAILABILITY GROUP {quote_name(group, 'availability group name')} SET (ROLE = SECONDARY);",
                 long_running=True)


def database_snapshot(database: str, snapshot: str) -> Batch:
    """``CREATE DATABASE snapshot … AS SNAPSHOT OF database`` beside each data file (``<file>.<snapshot>.ss``).

    CREATE DATABASE takes no variable for a file name, so, as for the credential, the statement is built
    server-side from ``sys.master_files`` with ``QUOTENAME`` and doubled quotes, and the names travel as
    parameters. Nothing is done when a database named ``snapshot`` exists already (a re-run).
    """
    v = _Vars()
    db = v.add("db", "sysname", validate_name(database, "database name"))
    snap = v.add("snap", "sysname", validate_name(snapshot, "snapshot name"))
    return v.batch(f"snapshot {snapshot} of {database}", (
        f"IF DB_ID({snap}) IS NULL\n"
        "BEGIN\n"
        "    DECLARE @files nvarchar(max) = STUFF((\n"
        "        SELECT N', (NAME = ' + QUOTENAME(mf.name) + N', FILENAME = N'''\n"
        f"               + REPLACE(mf.physical_name + N'.' + {snap} + N'.ss', N'''', N'''''') + N''')'\n"
        "          FROM sys.master_files AS mf\n"
        f"         WHERE mf.database_id = DB_ID({db}) AND mf.type = 0\n"
        "         ORDER BY mf.file_id\n"
        "           FOR XML PATH(''), TYPE).value('.', 'nvarchar(max)'), 1, 2, N'');\n"
        f"    DECLARE @sql nvarchar(max) = N'CREATE DATABASE ' + QUOTENAME({snap}) + N' ON ' + @files\n"
        f"                               + N' AS SNAPSHOT OF ' + QUOTENAME({db}) + N';';\n"
        "    EXEC (@sql);\n"
        "END"), long_running=True)


def ag_local_lag(group: str) -> Batch:
    """How far this replica's databases are behind, as it sees them (usable when the primary is gone).

    Queue sizes are in KB; ``last_commit_time`` is the primary's commit time of the newest transaction
    this replica applied, in the server's local time (``utc_offset_minutes`` converts it).
    """
    v = _Vars()
    ag = v.add("ag", "sysname", validate_name(group, "availability group name"))
    return v.batch(f"lag of availability group {group} on this replica", (
        "SELECT ar.replica_server_name, ars.role_desc, ars.connected_state_desc,\n"
        "       DB_NAME(drs.database_id) AS database_name,\n"
        "       drs.synchronization_state_desc, drs.is_suspended, drs.log_send_queue_size,\n"
        "       drs.redo_queue_size, drs.last_commit_time, SYSUTCDATETIME() AS utc_now,\n"
        "       DATEPART(TZOFFSET, SYSDATETIMEOFFSET()) AS utc_offset_minutes\n"
        "  FROM sys.availability_groups AS ag\n"
        "  JOIN sys.availability_replicas AS ar ON ar.group_id = ag.group_id\n"
        "  JOIN sys.dm_hadr_availability_replica_states AS ars\n"
        "    ON ars.replica_id = ar.replica_id AND ars.is_local = 1\n"
        "  LEFT JOIN sys.dm_hadr_database_replica_states AS drs\n"
        "         ON drs.replica_id = ar.replica_id AND drs.is_local = 1\n"
        f" WHERE ag.name = {ag}\n"
        " ORDER BY database_name;"))


def database_writable(database: str) -> Batch:
    """Whether this server takes writes for ``database`` now (ONLINE and READ_WRITE), and its clock."""
    v = _Vars()
    db = v.add("db", "sysname", validate_name(database, "database name"))
    return v.batch(f"is {database} writable here", (
        f"SELECT CAST(DATABASEPROPERTYEX({db}, 'Status') AS nvarchar(60)) AS status,\n"
        f"       CAST(DATABASEPROPERTYEX({db}, 'Updateability') AS nvarchar(60)) AS updateability,\n"
        "       SYSUTCDATETIME() AS utc_now;"))
