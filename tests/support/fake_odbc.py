"""A recording stand-in for pyodbc, and a small simulated SQL Server that answers through it.

:class:`FakeDriver` has pyodbc's shape (``connect``, ``Error``; connections with
``autocommit`` and ``timeout``; cursors with ``execute(sql, *params)``,
``description``, ``fetchall``, ``nextset``, ``messages``). It records every batch
with its parameters, connection settings and timeout, in order, and answers
from scripted rules (first match wins): result sets, info messages, and errors
shaped exactly like pyodbc's (``args = (SQLSTATE, "[SQLSTATE] [driver][SQL Server]text (native)
(SQLExecDirectW)")``), raised at execute or at a later ``nextset``, as a real
BACKUP does after its progress messages. It also enforces what a real server
would: BACKUP/RESTORE outside autocommit fail (3021), ``?`` markers must match
the parameters (07002), and a cursor closed with result sets left undrained is
recorded as a violation.

:class:`SimulatedServer` scripts a believable server on top: msdb history with
realistic LSNs (full/diff/log, copy-only), files written to the staging
directory for BACKUP TO DISK, FILELISTONLY rows, and so on.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

DRIVER_PREFIX = "[Microsoft][ODBC Driver 18 for SQL Server][SQL Server]"


class FakeOdbcError(Exception):
    """pyodbc.Error's shape: args = (sqlstate, message)."""


def odbc_error(number: int, text: str, sqlstate: str = "42000", *,
               more: Sequence[tuple[int, str]] = (), function: str = "SQLExecDirectW") -> FakeOdbcError:
    message = f"[{sqlstate}] {DRIVER_PREFIX}{text} ({number}) ({function})"
    for n, t in more:
        message += f"; [{sqlstate}] {DRIVER_PREFIX}{t} ({n})"
    return FakeOdbcError(sqlstate, message)


@dataclass(frozen=True)
class Rows:
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    @classmethod
    def of(cls, dicts: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Rows:
        cols = tuple(columns or (dicts[0].keys() if dicts else ()))
        return cls(cols, tuple(tuple(d.get(c) for c in cols) for d in dicts))


@dataclass
class Reply:
    """What one batch returns: steps (a message or a result set), and maybe an error at step ``error_at``."""

    steps: list[str | Rows] = field(default_factory=list)
    error: FakeOdbcError | None = None
    error_at: int = 0


Responder = Callable[[str, tuple[Any, ...]], Reply]


@dataclass
class Rule:
    pattern: re.Pattern[str]
    respond: Responder
    times: int | None
    used: int = 0


@dataclass(frozen=True)
class Executed:
    sql: str
    params: tuple[Any, ...]
    autocommit: bool
    timeout: int
    connection: int


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self._conn = conn
        self._steps: list[str | Rows] = []
        self._pos = 0
        self._error: FakeOdbcError | None = None
        self._error_at = 0
        self.description: list[tuple[Any, ...]] | None = None
        self.messages: list[tuple[str, str]] | None = None
        self.closed = False

    def _present(self) -> None:
        step = self._steps[self._pos] if self._pos < len(self._steps) else None
        if isinstance(step, Rows):
            self.description = [(c, str, None, None, None, None, True) for c in step.columns]
            self.messages = []
        else:
            self.description = None
            self.messages = [("[01000] (0)", DRIVER_PREFIX + step)] if isinstance(step, str) else []

    def execute(self, sql: str, *params: Any) -> FakeCursor:
        driver = self._conn.driver
        self._check_drained()
        driver.executed.append(Executed(sql, tuple(params), self._conn.autocommit, self._conn.timeout,
                                        self._conn.number))
        if sql.count("?") != len(params):
            raise FakeOdbcError("07002", f"[07002] {DRIVER_PREFIX}COUNT field incorrect or syntax error (0) "
                                         "(SQLExecDirectW)")
        if not self._conn.autocommit and re.search(r"\b(BACKUP|RESTORE)\b", sql):
            raise odbc_error(3021, "Cannot perform a backup or restore operation within a transaction.")
        reply = driver.reply(sql, tuple(params))
        self._steps, self._pos = list(reply.steps) or [""], 0
        self._error, self._error_at = reply.error, reply.error_at
        if self._error is not None and self._error_at == 0:
            self._steps = []
            raise self._error
        self._present()
        return self

    def fetchall(self) -> list[tuple[Any, ...]]:
        step = self._steps[self._pos] if self._pos < len(self._steps) else None
        if not isinstance(step, Rows):
            raise FakeOdbcError("24000", f"[24000] {DRIVER_PREFIX}No results.  Previous SQL was not a query. (0)")
        return list(step.rows)

    def nextset(self) -> bool:
        self._pos += 1
        if self._error is not None and self._pos >= self._error_at:
            error, self._error, self._steps = self._error, None, []
            raise error
        if self._pos >= len(self._steps):
            self.description, self.messages = None, []
            return False
        self._present()
        return True

    def _check_drained(self) -> None:
        if self._pos < len(self._steps) - 1 or self._error is not None:
            self._conn.driver.violations.append("a cursor was reused or closed before all its result sets and "
                                                "messages were read")
        self._steps, self._pos, self._error = [], 0, None

    def close(self) -> None:
        self._check_drained()
        self.closed = True


class FakeConnection:
    def __init__(self, driver: FakeDriver, connstring: str, autocommit: bool, login_timeout: int) -> None:
        self.driver = driver
        self.connstring = connstring
        self.autocommit = autocommit
        self.login_timeout = login_timeout
        self.timeout = 0
        self.closed = False
        self.number = len(driver.connections)

    def cursor(self) -> FakeCursor:
        if self.closed:
            raise FakeOdbcError("08003", f"[08003] {DRIVER_PREFIX}Connection is closed (0)")
        return FakeCursor(self)

    def close(self) -> None:
        self.closed = True


class FakeDriver:
    """pyodbc's module shape: ``connect`` and ``Error``; records and answers every batch."""

    Error = FakeOdbcError

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.executed: list[Executed] = []
        self.connections: list[FakeConnection] = []
        self.violations: list[str] = []
        self.connect_error: FakeOdbcError | None = None

    def connect(self, connstring: str, /, *, autocommit: bool = False, timeout: int = 0) -> FakeConnection:
        if self.connect_error is not None:
            raise self.connect_error
        conn = FakeConnection(self, connstring, autocommit, timeout)
        self.connections.append(conn)
        return conn

    def on(self, pattern: str, reply: Reply | Responder | None = None, *, rows: Sequence[Mapping[str, Any]] | None
           = None, columns: Sequence[str] | None = None, error: FakeOdbcError | None = None, error_at: int = 0,
           messages: Sequence[str] = (), times: int | None = None, first: bool = False) -> FakeDriver:
        """Answer batches whose SQL matches ``pattern`` (regex, searched); ``first`` puts the rule ahead."""
        if reply is None:
            steps: list[str | Rows] = list(messages)
            if rows is not None:
                steps.append(Rows.of(rows, columns))
            reply = Reply(steps, error, error_at)
        respond: Responder = reply if callable(reply) else (lambda _s, _p, r=reply: r)
        rule = Rule(re.compile(pattern, re.S), respond, times)
        if first:
            self.rules.insert(0, rule)
        else:
            self.rules.append(rule)
        return self

    def reply(self, sql: str, params: tuple[Any, ...]) -> Reply:
        for rule in self.rules:
            if (rule.times is None or rule.used < rule.times) and rule.pattern.search(sql):
                rule.used += 1
                return rule.respond(sql, params)
        return Reply()

    # -- reading the record ----------------------------------------------------------------------

    def sql(self) -> list[str]:
        return [e.sql for e in self.executed]

    def reset(self) -> None:
        self.executed.clear()


def render(executed: Sequence[Executed], secrets: Sequence[str] = ()) -> str:
    """A readable transcript (the golden-file format): one block per batch, parameters listed in order."""
    out = []
    for n, e in enumerate(executed, 1):
        shown = []
        for p in e.params:
            text = repr(p)
            for s in secrets:
                if s and isinstance(p, str) and s in p:
                    text = "'<secret>'"
            shown.append(text)
        header = f"-- batch {n} (autocommit={'on' if e.autocommit else 'OFF'}, timeout={e.timeout}s)"
        lines = [header]
        for i, text in enumerate(shown, 1):
            lines.append(f"-- ?{i} = {text}")
        lines.append(e.sql.rstrip())
        lines.append("GO")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


# -- a simulated server ------------------------------------------------------------------------------


def lsn(vlf: int, block: int, slot: int = 1) -> int:
    """A realistic numeric(25,0) LSN: VLF sequence, log block offset, slot."""
    return vlf * 10**15 + block * 10**5 + slot


@dataclass
class SimBackup:
    row: dict[str, Any]
    devices: list[tuple[str, int]]  # (physical_device_name, device_type)
    files: list[dict[str, Any]] = field(default_factory=list)  # the database's files then (FILELISTONLY)


class SimulatedServer:
    """Answers drkit's batches like one SQL Server with one database and its msdb history."""

    def __init__(self, driver: FakeDriver, *, database: str = "Orders", server_dir: str | None = None,
                 local_dir: Path | None = None, data_bytes: int = 5 * 2**30, log_bytes: int = 2**30,
                 utc_offset_minutes: int = 60, start: datetime | None = None,
                 clock_step: timedelta = timedelta(minutes=15), first_vlf: int = 34) -> None:
        self.driver = driver
        self.database = database
        self.server_dir = server_dir
        self.local_dir = local_dir
        self.data_bytes = data_bytes
        self.log_bytes = log_bytes
        self.utc_offset_minutes = utc_offset_minutes
        self.clock = start or datetime(2026, 5, 18, 2, 0, 0)  # server-local, naive, like msdb
        self.clock_step = clock_step
        self.vlf, self.block = first_vlf, 1200
        self.log_chain_lsn: int | None = None  # last_lsn of the last (non-copy-only) log backup
        self.diff_base: tuple[int, str] | None = None
        self.backups: list[SimBackup] = []
        self.next_id = 1001
        self.existing_databases: dict[str, str] = {}
        self.file_list = [
            {"LogicalName": "Orders_data", "PhysicalName": "/var/opt/mssql/data/Orders.mdf", "Type": "D",
             "FileGroupName": "PRIMARY", "Size": 5 * 2**30, "FileId": 1},
            {"LogicalName": "Orders_log", "PhysicalName": "/var/opt/mssql/data/Orders_log.ldf", "Type": "L",
             "FileGroupName": None, "Size": 2**30, "FileId": 2},
        ]
        self.fork = str(uuid.UUID(int=0xF0F0)).upper()
        self.facts: dict[str, Any] = {}
        """Overrides of the prerequisites row (edition, page_verify, ag_role, is_preferred_backup_replica...)."""
        # restores: what a media holds (RESTORE HEADERONLY), and how the server's clock maps UTC
        self.product_version = "16.0.4135.4"
        self.media: dict[str, list[SimBackup]] = {}
        """Device → the backup sets on it, in position order (FORMAT starts over, append adds one)."""
        self.append_next = False
        """The next backup appends its set to the media (NOINIT) instead of formatting it."""
        self.offset_at: Callable[[datetime], int] | None = None
        """UTC (naive) → the server's UTC offset in minutes then (a time zone with daylight saving)."""
        self.stopat_outside = False
        """RESTORE … STOPAT leaves the database RESTORING with a warning, as a target outside the log does."""
        self.install()

    # -- helpers -----------------------------------------------------------------------------------

    def _advance(self, blocks: int) -> int:
        self.block += blocks
        if self.block > 90000:
            self.vlf, self.block = self.vlf + 1, 100
        return lsn(self.vlf, self.block)

    def tick(self, step: timedelta | None = None) -> None:
        self.clock += step or self.clock_step

    def install(self) -> None:
        d = self.driver
        d.on(r"SERVERPROPERTY\('InstanceDefaultDataPath'\)", lambda s, p: Reply([Rows.of([{
            "product_version": self.product_version, "edition": "Enterprise Edition (64-bit)",
            "default_data_path": "/var/opt/mssql/data/", "default_log_path": "/var/opt/mssql/log/",
            "utc_offset_minutes": self.utc_offset_minutes}])]))
        d.on(r"AS can_backup_database", lambda s, p: Reply([Rows.of([{
            "product_version": "16.0.4135.4", "edition": "Enterprise Edition (64-bit)", "engine_edition": 3,
            "state": "ONLINE", "recovery_model": "FULL", "page_verify": "CHECKSUM", "ag_role": None,
            "is_preferred_backup_replica": 1, "is_sysadmin": 0, "can_backup_database": 1,
            "can_backup_log": 1, "can_create_database": 1, "can_read_history": 1, "can_alter_credential": 1,
            "credential_exists": 1, "certificate_usable": 1, **self.facts}])]))
        d.on(r"AS data_bytes", lambda s, p: Reply([Rows.of([{"data_bytes": self.data_bytes,
                                                              "log_bytes": self.log_bytes}])]))
        d.on(r"SELECT differential_base_lsn", lambda s, p: Reply([Rows.of([{
            "differential_base_lsn": Decimal(self.diff_base[0]) if self.diff_base else None,
            "differential_base_guid": self.diff_base[1] if self.diff_base else None}])]))
        d.on(r"^DECLARE .*\n(BACKUP DATABASE|BACKUP LOG) ", self._backup)
        d.on(r"WHERE database_name = @db AND name = @name", self._by_name)
        d.on(r"bs\.type IN \('D', 'I', 'L'\)", self._history)
        d.on(r"RESTORE FILELISTONLY", self._file_list_only)
        d.on(r"RESTORE HEADERONLY", self._header_only)
        d.on(r"CURRENT_TIMEZONE_ID\(\)", self._local_time)
        d.on(r"\n    DROP DATABASE ", self._drop)
        d.on(r"AS database_id", lambda s, p: Reply([Rows.of([{
            "database_id": 7 if p[0] in self.existing_databases else None,
            "status": self.existing_databases.get(p[0])}])]))
        d.on(r"RESTORE (DATABASE|LOG) ", self._restore)
        d.on(r"RESTORE VERIFYONLY", Reply(["10 percent processed.", "100 percent processed.",
                                           "RESTORE processed 1 pages."]))

    def _backup(self, sql: str, params: tuple[Any, ...]) -> Reply:
        kind = "L" if "BACKUP LOG" in sql else "I" if "DIFFERENTIAL" in sql else "D"
        copy_only = "COPY_ONLY" in sql
        ndev = len(re.findall(r"@dev\d+ nvarchar", sql))
        devices, name = list(params[:ndev]), params[ndev]
        device_type = 9 if "TO URL" in sql else 2
        self.tick()
        start = self.clock
        first = lsn(self.vlf, self.block)
        row: dict[str, Any] = {
            "backup_set_id": self.next_id, "backup_set_uuid": str(uuid.UUID(int=0xB5000 + self.next_id)).upper(),
            "media_set_id": self.next_id + 5000, "name": name, "type": kind, "database_name": self.database,
            "database_guid": "7C4A1F2E-0000-4000-8000-00000000D0B0",
            "family_guid": "7C4A1F2E-0000-4000-8000-0000000FA317",
            "is_copy_only": copy_only, "has_backup_checksums": True, "is_damaged": False,
            "begins_log_chain": False, "first_recovery_fork_guid": self.fork, "last_recovery_fork_guid": self.fork,
            "fork_point_lsn": None, "time_zone": self.utc_offset_minutes // 15, "recovery_model": "FULL",
            "server_name": "SQL1", "key_algorithm": "aes_256" if "ENCRYPTION" in sql else None,
            "differential_base_lsn": None, "differential_base_guid": None,
        }
        self.next_id += 1
        if kind == "L":
            chain = self.log_chain_lsn if self.log_chain_lsn is not None else first
            last = self._advance(40)
            row.update(first_lsn=Decimal(chain), last_lsn=Decimal(last), checkpoint_lsn=Decimal(last - 30),
                       database_backup_lsn=Decimal(self.diff_base[0]) if self.diff_base else None)
            if not copy_only:
                self.log_chain_lsn = last
            size = 64 * 2**20
        else:
            checkpoint = self._advance(3)
            last = self._advance(5)
            row.update(first_lsn=Decimal(first), last_lsn=Decimal(last), checkpoint_lsn=Decimal(checkpoint),
                       database_backup_lsn=Decimal(self.diff_base[0]) if self.diff_base else Decimal(0))
            if kind == "I":
                assert self.diff_base is not None, "a differential needs a full first"
                row.update(differential_base_lsn=Decimal(self.diff_base[0]),
                           differential_base_guid=self.diff_base[1])
                size = 300 * 2**20
            else:
                if not copy_only:
                    self.diff_base = (checkpoint, row["backup_set_uuid"])
                if self.log_chain_lsn is None:
                    self.log_chain_lsn = first
                size = self.data_bytes // 2
            self._advance(20)
        row.update(backup_start_date=start, backup_finish_date=start + timedelta(minutes=2),
                   backup_size=Decimal(size), compressed_backup_size=Decimal(size // 3))
        sim = SimBackup(row, [(dev, device_type) for dev in devices], [dict(f) for f in self.file_list])
        self.backups.append(sim)
        for dev in devices:
            on_media = self.media.setdefault(dev, [])
            if not self.append_next:
                on_media.clear()  # FORMAT / INIT: the media holds this set alone
            on_media.append(sim)
        row["position"] = len(self.media[devices[0]]) if devices else 1
        self.append_next = False
        if device_type == 2 and self.local_dir is not None and name is not None:
            for dev in devices:
                (self.local_dir / Path(dev.replace("\\", "/")).name).write_bytes(
                    f"TAPE{name}".encode() + bytes(range(256)) * 64)
        steps: list[str | Rows] = [f"{p} percent processed." for p in (10, 50, 100)]
        steps.append(f"BACKUP {'LOG' if kind == 'L' else 'DATABASE'} successfully processed 1000 pages.")
        return Reply(steps)

    # -- restores ----------------------------------------------------------------------------------

    def _staged(self, device: str) -> SimBackup | None:
        """The backup a device names: a set on the server's own media, or a file drkit staged for restore."""
        if device in self.media and self.media[device]:
            return self.media[device][0]
        name = Path(device.replace("\\", "/")).name.split(".restore.")[0]
        return next((b for b in self.backups if b.row["name"] == name), None)

    def _set_at(self, sql: str, params: tuple[Any, ...]) -> SimBackup | None:
        device = params[0]
        file = params[len(re.findall(r"@dev\d+ nvarchar", sql))] if "@file int" in sql else 1
        sets = self.media.get(device)
        if sets:
            return sets[int(file) - 1] if int(file) <= len(sets) else None
        return self._staged(device)

    def _file_list_only(self, sql: str, params: tuple[Any, ...]) -> Reply:
        b = self._set_at(sql, params)
        return Reply([Rows.of(b.files if b is not None and b.files else self.file_list)])

    def _header_only(self, sql: str, params: tuple[Any, ...]) -> Reply:
        sets = self.media.get(params[0])
        if not sets:
            return Reply(error=odbc_error(3201, f"Cannot open backup device '{params[0]}'. Operating system error "
                                                "2(The system cannot find the file specified.)."))
        return Reply([Rows.of([{
            "BackupName": b.row["name"], "BackupType": {"D": 1, "L": 2, "I": 5}[b.row["type"]], "Position": i,
            "DatabaseName": b.row["database_name"], "FirstLSN": b.row["first_lsn"], "LastLSN": b.row["last_lsn"],
            "BackupSetGUID": b.row["backup_set_uuid"]} for i, b in enumerate(sets, 1)])])

    def _local_time(self, sql: str, params: tuple[Any, ...]) -> Reply:
        utc = datetime.fromisoformat(str(params[0]))
        def at(t: datetime) -> int:
            return self.offset_at(t) if self.offset_at else self.utc_offset_minutes

        offset = at(utc)
        return Reply([Rows.of([{"local_time": (utc + timedelta(minutes=offset)).isoformat(timespec="milliseconds"),
                                "offset_minutes": offset, "time_zone": "W. Europe Standard Time",
                                "offset_hour_before": at(utc - timedelta(hours=1)),
                                "offset_hour_after": at(utc + timedelta(hours=1)),
                                "current_offset_minutes": at(self.clock)}])])

    def _restore(self, sql: str, params: tuple[Any, ...]) -> Reply:
        m = re.search(r"RESTORE (?:DATABASE|LOG) \[((?:[^\]]|\]\])*)\]", sql)
        assert m, sql
        name = m.group(1).replace("]]", "]")
        steps: list[str | Rows] = ["10 percent processed.", "100 percent processed."]
        if "STOPAT" in sql and self.stopat_outside:
            steps.append("This backup set contains records that were logged before the designated point in time. "
                         "The database is being left in the restoring state so that more roll forward can be "
                         "performed.")
            self.existing_databases[name] = "RESTORING"
        else:
            self.existing_databases[name] = "ONLINE" if re.search(r"(?<!NO)RECOVERY", sql) else "RESTORING"
        steps.append("RESTORE processed 1 pages.")
        return Reply(steps)

    def _drop(self, sql: str, params: tuple[Any, ...]) -> Reply:
        self.existing_databases.pop(str(params[0]), None)
        return Reply()

    def rows_of(self, b: SimBackup) -> list[dict[str, Any]]:
        return [{**b.row, "family_sequence_number": i, "physical_device_name": dev, "device_type": t}
                for i, (dev, t) in enumerate(b.devices, 1)]

    def _by_name(self, sql: str, params: tuple[Any, ...]) -> Reply:
        found = [b for b in self.backups if b.row["name"] == params[1]]
        rows = self.rows_of(found[-1]) if found else []
        return Reply([Rows.of(rows, _HISTORY_COLUMNS)])

    def _history(self, sql: str, params: tuple[Any, ...]) -> Reply:
        rows = [r for b in self.backups for r in self.rows_of(b)]
        return Reply([Rows.of(rows, _HISTORY_COLUMNS)])

    def foreign_backup(self, kind: str = "L", device: str = "D:\\Backup\\other.trn", *,
                       copy_only: bool = False) -> None:
        """A backup some other tool took (Agent job, Ola's scripts): only msdb knows it."""
        sql = {"L": "BACKUP LOG", "I": "BACKUP DATABASE DIFFERENTIAL", "D": "BACKUP DATABASE"}[kind]
        sql += (" TO URL" if device.startswith("https://") else " TO DISK") + (" COPY_ONLY" if copy_only else "")
        sql += " @dev1 nvarchar"
        self._backup(sql, (device, None))


_HISTORY_COLUMNS = (
    "backup_set_id", "backup_set_uuid", "media_set_id", "name", "type", "database_name", "database_guid",
    "family_guid", "first_lsn", "last_lsn", "checkpoint_lsn", "database_backup_lsn", "differential_base_lsn",
    "differential_base_guid", "is_copy_only", "has_backup_checksums", "is_damaged", "begins_log_chain",
    "first_recovery_fork_guid", "last_recovery_fork_guid", "fork_point_lsn", "backup_start_date",
    "backup_finish_date", "time_zone", "backup_size", "compressed_backup_size", "recovery_model",
    "server_name", "key_algorithm", "position", "has_bulk_logged_data", "last_valid_restore_time",
    "family_sequence_number", "physical_device_name", "device_type",
)


# -- a runtime wired to a simulated server ----------------------------------------------------------

SAS_TOKEN = "sv=2024-08-04&ss=b&srt=co&sp=rwdlc&se=2027-01-01T00:00:00Z&spr=https&sig=Zm9vYmFyU2VjcmV0U2lnbmF0dXJl%3D"
DSN_PASSWORD = "Pa55-w0rd;not{shown}"
DSN = ("Driver={ODBC Driver 18 for SQL Server};Server=tcp:sql1.example.internal,1433;Database=master;"
       f"UID=drkit;PWD={{{DSN_PASSWORD}}};Encrypt=yes")
CONTAINER = "https://drkitbackups.blob.core.windows.net/sqlbackups"


@dataclass
class World:
    """A drkit runtime (SQLite catalog, filesystem tier, key) and one SQL Server engine on a fake driver."""

    rt: Any
    engine: Any
    driver: FakeDriver
    server: SimulatedServer
    stage: Path

    @property
    def secrets(self) -> tuple[str, ...]:
        return (SAS_TOKEN, DSN_PASSWORD)


def make_world(tmp: Path, *, target: str = "disk", database: str = "Orders", checks: Sequence[str] = (),
               settings: Mapping[str, Any] | None = None, tiers: Mapping[str, Any] | None = None,
               **server: Any) -> World:
    import base64

    from drkit.config import parse_policy
    from drkit.engines.sqlserver.engine import SqlServerEngine
    from drkit.runtime import Runtime

    stage = tmp / "stage"
    stage.mkdir(parents=True, exist_ok=True)
    base: dict[str, Any] = {"database": database, "disk_path": "/var/opt/mssql/backup/drkit",
                            "local_path": str(stage)}
    if target == "url":
        base.update(target="url", url=CONTAINER + "/prod", sas_token_env="ORDERS_SAS")
    base.update(settings or {})
    policy = parse_policy({
        "catalog": f"sqlite:///{tmp}/catalog.db",
        "tiers": {"local": {"path": str(tmp / "local")}, **(tiers or {})},
        "databases": {"orders": {"engine": "sqlserver", "dsn_env": "ORDERS_DSN", "sqlserver": base,
                                 "verify": {"after": ["full"], "checks": list(checks)}}},
    }, base_dir=tmp)
    environ = {"DRKIT_BACKUP_KEY": base64.b64encode(bytes(range(32))).decode(), "ORDERS_DSN": DSN,
               "ORDERS_SAS": "?" + SAS_TOKEN}
    rt = Runtime(policy, environ=environ)
    cfg = policy.database("orders").sqlserver  # the policy's block, as `drkit` loads it
    assert cfg is not None
    driver = FakeDriver()
    sim = SimulatedServer(driver, database=database, server_dir=cfg.disk_path, local_dir=stage, **server)
    engine = SqlServerEngine("orders", dsn=DSN, settings=cfg,
                             sas_token=environ["ORDERS_SAS"] if cfg.sas_token_env else None, driver=driver)
    return World(rt, engine, driver, sim, stage)
