"""The catalog: the durable record of every backup, where its copies live, and who did what.

Restores, retention and verification all start from the catalog, so it must never hold a half-written
fact: every public method is one short transaction, and multi-row changes (a backup completing together
with its copies, a status change together with its audit event) commit or roll back as one. Callers get
immutable :mod:`drkit.catalog.records` values, never ORM objects.

SQLite (single host, the default) and PostgreSQL (shared catalog) are supported. On SQLite every write
transaction starts with ``BEGIN IMMEDIATE`` so concurrent writers (several flows, or a flow and the CLI)
queue on ``busy_timeout`` instead of failing half-way; on PostgreSQL rows are locked with
``SELECT ... FOR UPDATE`` before a state change. Either way, exactly one of two racing
``complete_backup`` calls wins.

Errors are :class:`~drkit.errors.CatalogError` (or :class:`~drkit.errors.BackupNotFoundError`); their
messages show the catalog URL with the password masked and never the password itself.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import URL, Connection, Engine, create_engine, event, func, make_url, or_, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from drkit.catalog.models import (
    BACKUP_ID_LENGTH,
    LINEAGE_LENGTH,
    POSITION_DIGITS,
    VERSION_TABLE,
    AuditEvent,
    Backup,
    Copy,
    Endpoint,
    Hold,
    position_fits,
)
from drkit.catalog.reader import HEAD_REVISION
from drkit.catalog.records import (
    BACKUP_KINDS,
    BACKUP_STATUSES,
    COPY_STATUSES,
    PRIMARY_SIDES,
    RESTORABLE_STATUSES,
    AuditRecord,
    BackupRecord,
    BackupTally,
    CopyRecord,
    EndpointRecord,
    HoldRecord,
)
from drkit.errors import BackupNotFoundError, CatalogError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
"""Alembic script directory bundled inside the package."""

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite connection waits for another writer before giving up."""

PG_CONNECT_TIMEOUT_S = 10
"""Connect timeout for PostgreSQL catalogs unless the URL sets ``connect_timeout`` itself."""

_MIGRATION_LOCK_KEY = 0x64726B6974  # b"drkit": serialises concurrent migrate() calls on PostgreSQL

_READ_ONLY_OPTION = "drkit_read_only"

_STATUS_TRANSITIONS: Mapping[str, frozenset[str]] = {
    "running": frozenset({"failed"}),
    "completed": frozenset({"verified", "corrupt"}),
    "verified": frozenset({"verified", "corrupt"}),
    "corrupt": frozenset({"verified", "corrupt"}),
    "failed": frozenset(),
}
"""Which ``set_status`` changes make sense; running -> completed goes through ``complete_backup``."""


def _use_wal(cursor: Any) -> None:
    """Put a SQLite catalog in WAL mode (once per file; later connections find it set).

    Switching the journal mode needs the database to itself, and SQLite does not apply the busy timeout
    to it: a second process opening a fresh catalog while the first migrates it gets "database is
    locked" at once. So the switch is retried for as long as the busy timeout allows.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _sqlite_foreign_keys(connection: Connection, *, enforced: bool) -> None:
    """Switch SQLite's foreign key enforcement on this connection, outside any transaction.

    If switching it back on fails, the connection is discarded rather than pooled without enforcement.
    """
    try:
        driver = connection.connection.driver_connection  # the sqlite3 connection, outside any transaction
        if driver is None:
            raise CatalogError("the catalog's SQLite connection is closed")
        driver.execute(f"PRAGMA foreign_keys = {'ON' if enforced else 'OFF'}")
    except BaseException:
        if enforced:
            connection.invalidate()
        raise


def _refuse_orphans(connection: Connection) -> None:
    """Raise (rolling the migration back) if any row refers to a row that does not exist."""
    orphans = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if orphans:
        found = ", ".join(f"{row[0]} row {row[1]} -> {row[2]}" for row in orphans[:5])
        raise CatalogError(f"the migration would leave {len(orphans)} row(s) referring to missing rows: {found}")


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _position(name: str, value: int | None) -> int | None:
    if not position_fits(value):
        raise CatalogError(f"{name} must be a log position from 0 to {POSITION_DIGITS} digits, got {value!r}")
    return value


def _lineage(value: str | None) -> str | None:
    if value is not None and not 0 < len(value) <= LINEAGE_LENGTH:
        raise CatalogError(f"lineage must be 1 to {LINEAGE_LENGTH} characters, got {value!r}")
    return value


def _one_of(what: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise CatalogError(f"unknown {what} {value!r}; expected one of: {', '.join(allowed)}")
    return value


def _backup_record(row: Backup) -> BackupRecord:
    return BackupRecord(
        id=row.id,
        database=row.database,
        kind=row.kind,
        status=row.status,
        base_id=row.base_id,
        timeline=row.timeline,
        start_lsn=row.start_lsn,
        end_lsn=row.end_lsn,
        start_wal=row.start_wal,
        end_wal=row.end_wal,
        started_at=row.started_at,
        finished_at=row.finished_at,
        start_time=row.start_time,
        end_time=row.end_time,
        raw_bytes=row.raw_bytes,
        stored_bytes=row.stored_bytes,
        sha256=row.sha256,
        format=row.format,
        key_id=row.key_id,
        error=row.error,
        verified_at=row.verified_at,
        meta=dict(row.meta or {}),
        lineage=row.lineage,
    )


def _copy_record(row: Copy) -> CopyRecord:
    return CopyRecord(
        id=row.id,
        backup_id=row.backup_id,
        tier=row.tier,
        store_key=row.store_key,
        status=row.status,
        stored_bytes=row.stored_bytes,
        sha256=row.sha256,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _audit_record(row: AuditEvent) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        database=row.database,
        subject=row.subject,
        detail=dict(row.detail or {}),
    )


def _hold_record(row: Hold, database: str) -> HoldRecord:
    return HoldRecord(
        id=row.id,
        backup_id=row.backup_id,
        database=database,
        reason=row.reason,
        created_at=row.created_at,
        created_by=row.created_by,
        removed_at=row.removed_at,
        removed_by=row.removed_by,
        removed_reason=row.removed_reason,
    )


def _not_found(backup_id: str) -> BackupNotFoundError:
    return BackupNotFoundError(f"no backup {backup_id}; `drkit backups DB` lists them")


def _check_dsn_hint(dsn_hint: str) -> str:
    """Accept ``host:port`` (or a bare host / socket dir); refuse anything that could carry credentials."""
    looks_like_a_dsn = any(marker in dsn_hint for marker in ("@", "://", "="))
    if not dsn_hint or looks_like_a_dsn or any(ch.isspace() for ch in dsn_hint):
        raise CatalogError("an endpoint dsn_hint must be host:port only, never a full DSN with credentials")
    return dsn_hint


def _parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except (sa_exc.ArgumentError, ValueError, TypeError):  # the message would echo the URL and password
        raise CatalogError(
            "the catalog URL is not a valid SQLAlchemy URL "
            "(expected e.g. sqlite:////var/lib/drkit/catalog.db or postgresql+psycopg://user@host/db)"
        ) from None


class Catalog:
    """Repository over the catalog database. Thread-safe; one instance per process is plenty."""

    def __init__(self, url: str) -> None:
        self._url = _parse_url(url)
        self._safe_url = self._url.render_as_string(hide_password=True)
        try:
            self._engine = self._create_engine(self._url)
        except (sa_exc.SQLAlchemyError, ImportError, ValueError, TypeError) as exc:
            raise CatalogError(f"cannot use catalog {self._safe_url}: {self._describe(exc)}") from None
        self._read_engine = self._engine.execution_options(**{_READ_ONLY_OPTION: True})

    @classmethod
    def open(cls, url: str) -> Catalog:
        """Connect to the catalog at ``url`` and bring its schema up to date."""
        catalog = cls(url)
        try:
            if catalog._stored_revision() != HEAD_REVISION:  # a current schema needs no Alembic (0.3 s to import)
                catalog.migrate()
        except BaseException:
            catalog.close()
            raise
        return catalog

    def _stored_revision(self) -> str | None:
        """The schema revision the catalog records (None: no version table yet)."""
        try:
            with self._engine.connect() as connection:
                found = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()  # noqa: S608
        except (sa_exc.ProgrammingError, sa_exc.OperationalError) as exc:
            if isinstance(exc, sa_exc.ProgrammingError) or "no such table" in str(exc):
                return None  # a new catalog (PostgreSQL: undefined table; SQLite: no such table)
            raise CatalogError(f"cannot migrate catalog {self._safe_url}: {self._describe(exc)}; "
                               "check that the catalog database is reachable and writable") from exc
        except sa_exc.SQLAlchemyError:
            return None  # anything else: Alembic's upgrade says what is wrong
        return None if found is None else str(found)

    @property
    def url(self) -> str:
        """The catalog URL with any password masked; safe to log and show."""
        return self._safe_url

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({self._safe_url!r})"

    # -- engine and transactions -------------------------------------------------------------------

    def _create_engine(self, url: URL) -> Engine:
        if url.get_backend_name() == "sqlite":
            return self._create_sqlite_engine(url)
        connect_args: dict[str, Any] = {}
        if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)

    @staticmethod
    def _create_sqlite_engine(url: URL) -> Engine:
        database = url.database or ""
        in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
        if in_memory:
            # One shared connection, otherwise every session would see its own empty database.
            engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            if not database.startswith("file:"):
                try:
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    message = f"cannot create the directory for catalog {database}: {exc.strerror}"
                    raise CatalogError(message) from exc
            engine = create_engine(url)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see "begin").
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
                cursor.execute("PRAGMA foreign_keys = ON")
                if not in_memory:
                    _use_wal(cursor)
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            # Writers take the write lock up front: a deferred transaction that reads first and writes
            # later fails with SQLITE_BUSY (without waiting) if another writer committed in between.
            read_only = connection.get_execution_options().get(_READ_ONLY_OPTION, False)
            connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine

    def _describe(self, exc: BaseException) -> str:
        """A one-paragraph description of ``exc`` without SQL, parameters or the password."""
        orig = exc.orig if isinstance(exc, sa_exc.StatementError) and exc.orig is not None else exc
        message = " ".join(str(orig).split()) or type(orig).__name__
        password = self._url.password
        if password:
            message = message.replace(str(password), "***")
        return message

    @contextmanager
    def _session(self, *, write: bool = True) -> Iterator[Session]:
        """One transaction: commits on success, rolls back on any error; database errors -> CatalogError."""
        engine = self._engine if write else self._read_engine
        try:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                yield session
        except sa_exc.SQLAlchemyError as exc:
            raise CatalogError(f"catalog {self._safe_url}: {self._describe(exc)}") from exc

    @staticmethod
    def _backup(session: Session, backup_id: str, *, lock: bool = False) -> Backup:
        row = session.get(Backup, backup_id, with_for_update=lock)
        if row is None:
            raise _not_found(backup_id)
        return row

    @staticmethod
    def _copy(session: Session, backup_id: str, tier: str) -> Copy:
        row = session.scalars(
            select(Copy).where(Copy.backup_id == backup_id, Copy.tier == tier).with_for_update()
        ).one_or_none()
        if row is None:
            raise CatalogError(f"backup {backup_id} has no copy in tier {tier}")
        return row

    def _flush(self, session: Session, what: str) -> None:
        """Flush, turning constraint violations into a CatalogError that says what clashed."""
        try:
            session.flush()
        except sa_exc.IntegrityError as exc:
            raise CatalogError(f"{what}: {self._describe(exc)}") from exc

    # -- lifecycle ---------------------------------------------------------------------------------

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the catalog schema to ``revision``, by default the newest bundled with drkit (idempotent)."""
        from alembic import command  # Alembic only when migrating (0.3 s to import)

        self._run_migrations(command.upgrade, revision)

    def downgrade(self, revision: str) -> None:
        """Take the schema back to an older ``revision`` (to run an older drkit on this catalog).

        Facts the newer revisions added and the older schema cannot hold are dropped (e.g. revision 0004's
        ``lineage``, and SQL Server log positions, which do not fit the older BIGINT columns).
        """
        from alembic import command

        self._run_migrations(command.downgrade, revision)

    def _run_migrations(self, step: Callable[[Config, str], None], revision: str) -> None:
        """Run one Alembic command in one transaction (concurrent callers queue up; see below).

        On SQLite, a migration that rebuilds a table others refer to (``backups``) cannot run while
        foreign keys are enforced: dropping the old table would orphan every copy. So, as SQLite's own
        procedure for schema changes prescribes, enforcement is switched off around the transaction
        (it can only be switched outside one), and ``PRAGMA foreign_key_check`` must find nothing before
        the transaction commits.
        """
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        try:
            with self._engine.connect() as connection:
                sqlite = connection.dialect.name == "sqlite"
                if sqlite:
                    _sqlite_foreign_keys(connection, enforced=False)
                try:
                    with connection.begin():
                        if connection.dialect.name == "postgresql":
                            lock = text("SELECT pg_advisory_xact_lock(:key)")
                            connection.execute(lock, {"key": _MIGRATION_LOCK_KEY})
                        config.attributes["connection"] = connection
                        step(config, revision)
                        if sqlite:
                            _refuse_orphans(connection)
                finally:
                    if sqlite:
                        _sqlite_foreign_keys(connection, enforced=True)
        except Exception as exc:
            raise CatalogError(
                f"cannot migrate catalog {self._safe_url}: {self._describe(exc)}; "
                "check that the catalog database is reachable and writable"
            ) from exc

    def close(self) -> None:
        """Release all pooled connections. The instance must not be used afterwards."""
        self._engine.dispose()

    # -- backups -----------------------------------------------------------------------------------

    def begin_backup(
        self,
        database: str,
        kind: str,
        *,
        base_id: str | None = None,
        started_at: datetime | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> BackupRecord:
        """Record that a backup has started; returns it with status ``running``."""
        _one_of("backup kind", kind, BACKUP_KINDS)
        started = _aware("started_at", started_at) or _now()
        backup_id = f"{database}-{kind}-{started:%Y%m%dT%H%M%S%fZ}"
        if len(backup_id) > BACKUP_ID_LENGTH:
            raise CatalogError(f"database name {database!r} is too long to form a backup id")
        with self._session() as session:
            if base_id is not None:
                self._backup(session, base_id)
            if session.get(Backup, backup_id) is not None:
                raise CatalogError(f"backup {backup_id} already exists; two backups started the same instant")
            row = Backup(
                id=backup_id,
                database=database,
                kind=kind,
                status="running",
                base_id=base_id,
                started_at=started,
                raw_bytes=0,
                stored_bytes=0,
                meta=dict(meta or {}),
            )
            session.add(row)
            self._flush(session, f"cannot record backup {backup_id}")
            return _backup_record(row)

    def complete_backup(
        self,
        backup_id: str,
        *,
        timeline: int | None,
        start_lsn: int | None,
        end_lsn: int | None,
        start_wal: str | None,
        end_wal: str | None,
        start_time: datetime | None,
        end_time: datetime | None,
        raw_bytes: int,
        stored_bytes: int,
        sha256: str | None,
        format: str | None,
        key_id: str | None,
        meta: Mapping[str, Any] | None = None,
        copies: Sequence[tuple[str, str, int, str | None]] = (),
        finished_at: datetime | None = None,
        lineage: str | None = None,
    ) -> BackupRecord:
        """Mark a running backup completed and record its copies, all in one transaction.

        ``copies`` are ``(tier, store_key, stored_bytes, sha256)`` tuples, inserted with status
        ``complete``. If anything fails (e.g. a tier already has a copy) nothing is written and the
        backup stays ``running``. ``finished_at`` (default: now) lets a caller record the instant it
        already wrote into the backup's self-description. ``start_lsn`` / ``end_lsn`` are the engine's
        log positions and ``lineage`` its log chain link (see :class:`BackupRecord`).
        """
        _position("start_lsn", start_lsn)
        _position("end_lsn", end_lsn)
        _lineage(lineage)
        start = _aware("start_time", start_time)
        end = _aware("end_time", end_time)
        finished = _aware("finished_at", finished_at)
        with self._session() as session:
            row = self._backup(session, backup_id, lock=True)
            if row.status != "running":
                raise CatalogError(f"backup {backup_id} is {row.status}; only a running backup can complete")
            now = _now()
            row.status = "completed"
            row.finished_at = finished or now
            row.timeline = timeline
            row.start_lsn = start_lsn
            row.end_lsn = end_lsn
            row.lineage = lineage
            row.start_wal = start_wal
            row.end_wal = end_wal
            row.start_time = start
            row.end_time = end
            row.raw_bytes = raw_bytes
            row.stored_bytes = stored_bytes
            row.sha256 = sha256
            row.format = format
            row.key_id = key_id
            if meta:
                row.meta = {**(row.meta or {}), **meta}
            self._flush(session, f"cannot complete backup {backup_id}")
            for tier, store_key, copy_bytes, copy_sha256 in copies:
                session.add(
                    Copy(
                        backup_id=backup_id,
                        tier=tier,
                        store_key=store_key,
                        status="complete",
                        stored_bytes=copy_bytes,
                        sha256=copy_sha256,
                        created_at=now,
                        updated_at=now,
                    )
                )
                self._flush(session, f"cannot record the {tier} copy of backup {backup_id}")
            return _backup_record(row)

    def fail_backup(self, backup_id: str, error: str) -> BackupRecord:
        """Mark a running backup failed, keeping the error text for the operator."""
        with self._session() as session:
            row = self._backup(session, backup_id, lock=True)
            if row.status != "running":
                raise CatalogError(f"backup {backup_id} is {row.status}; only a running backup can fail")
            row.status = "failed"
            row.finished_at = _now()
            row.error = error
            self._flush(session, f"cannot fail backup {backup_id}")
            return _backup_record(row)

    def set_status(self, backup_id: str, status: str, *, actor: str, reason: str) -> BackupRecord:
        """Change a backup's status (verified, corrupt; or failed for a stale run) and audit why."""
        _one_of("backup status", status, BACKUP_STATUSES)
        with self._session() as session:
            row = self._backup(session, backup_id, lock=True)
            previous = row.status
            if status not in _STATUS_TRANSITIONS.get(previous, frozenset()):
                raise CatalogError(f"backup {backup_id} is {previous}; it cannot be marked {status}")
            now = _now()
            row.status = status
            if status == "verified":
                row.verified_at = now
            if status == "failed":
                row.finished_at = now
                row.error = reason
            session.add(
                AuditEvent(
                    at=now,
                    actor=actor,
                    action="backup.status",
                    database=row.database,
                    subject=backup_id,
                    detail={"from": previous, "to": status, "reason": reason},
                )
            )
            self._flush(session, f"cannot set the status of backup {backup_id}")
            return _backup_record(row)

    def get(self, backup_id: str) -> BackupRecord:
        """The backup with this id; BackupNotFoundError if there is none."""
        with self._session(write=False) as session:
            return _backup_record(self._backup(session, backup_id))

    def list_backups(
        self,
        database: str | None = None,
        *,
        kinds: Iterable[str] | None = None,
        statuses: Iterable[str] | None = None,
    ) -> list[BackupRecord]:
        """Backups, newest first (by ``started_at``, then id), optionally filtered."""
        query = select(Backup)
        if database is not None:
            query = query.where(Backup.database == database)
        if kinds is not None:
            query = query.where(Backup.kind.in_(list(kinds)))
        if statuses is not None:
            query = query.where(Backup.status.in_(list(statuses)))
        query = query.order_by(Backup.started_at.desc(), Backup.id.desc())
        with self._session(write=False) as session:
            return [_backup_record(row) for row in session.scalars(query)]

    def latest(
        self,
        database: str,
        kind: str,
        *,
        statuses: Iterable[str] = RESTORABLE_STATUSES,
    ) -> BackupRecord | None:
        """The most recently started backup of ``kind`` in one of ``statuses``, or None."""
        query = (
            select(Backup)
            .where(Backup.database == database, Backup.kind == kind, Backup.status.in_(list(statuses)))
            .order_by(Backup.started_at.desc(), Backup.id.desc())
            .limit(1)
        )
        with self._session(write=False) as session:
            row = session.scalars(query).first()
            return None if row is None else _backup_record(row)

    # -- copies ------------------------------------------------------------------------------------

    def add_copy(
        self,
        backup_id: str,
        tier: str,
        store_key: str,
        *,
        status: str = "pending",
        stored_bytes: int = 0,
        sha256: str | None = None,
    ) -> CopyRecord:
        """Record a copy of a backup in a tier (one copy per tier)."""
        _one_of("copy status", status, COPY_STATUSES)
        with self._session() as session:
            self._backup(session, backup_id)
            now = _now()
            row = Copy(
                backup_id=backup_id,
                tier=tier,
                store_key=store_key,
                status=status,
                stored_bytes=stored_bytes,
                sha256=sha256,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            self._flush(session, f"cannot record the {tier} copy of backup {backup_id}")
            return _copy_record(row)

    def set_copy_status(
        self,
        backup_id: str,
        tier: str,
        status: str,
        *,
        stored_bytes: int | None = None,
        sha256: str | None = None,
    ) -> CopyRecord:
        """Update the status (and optionally size and checksum) of a backup's copy in a tier."""
        _one_of("copy status", status, COPY_STATUSES)
        with self._session() as session:
            self._backup(session, backup_id)
            row = self._copy(session, backup_id, tier)
            row.status = status
            if stored_bytes is not None:
                row.stored_bytes = stored_bytes
            if sha256 is not None:
                row.sha256 = sha256
            row.updated_at = _now()
            self._flush(session, f"cannot update the {tier} copy of backup {backup_id}")
            return _copy_record(row)

    def copies(self, backup_id: str) -> list[CopyRecord]:
        """The copies of one backup, in the order they were recorded."""
        with self._session(write=False) as session:
            self._backup(session, backup_id)
            rows = session.scalars(select(Copy).where(Copy.backup_id == backup_id).order_by(Copy.id))
            return [_copy_record(row) for row in rows]

    def all_copies(self, database: str | None = None) -> list[CopyRecord]:
        """Every copy (of one database's backups, if given), ordered by backup id then record order."""
        query = select(Copy).order_by(Copy.backup_id, Copy.id)
        if database is not None:
            query = query.join(Backup, Backup.id == Copy.backup_id).where(Backup.database == database)
        with self._session(write=False) as session:
            return [_copy_record(row) for row in session.scalars(query)]

    # -- audit -------------------------------------------------------------------------------------

    def audit(
        self,
        *,
        actor: str,
        action: str,
        database: str | None = None,
        subject: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        """Append an audit event. Events can never be changed or removed afterwards."""
        with self._session() as session:
            row = AuditEvent(
                at=_now(),
                actor=actor,
                action=action,
                database=database,
                subject=subject,
                detail=dict(detail or {}),
            )
            session.add(row)
            self._flush(session, f"cannot record audit event {action}")
            return _audit_record(row)

    def latest_audit(self, action: str) -> AuditRecord | None:
        """The newest audit event of ``action``, or None."""
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id.desc()).limit(1)
        with self._session(write=False) as session:
            row = session.scalars(query).first()
            return None if row is None else _audit_record(row)

    def audit_events(self, *, database: str | None = None, action: str | None = None) -> list[AuditRecord]:
        """Audit events, oldest first, optionally filtered."""
        query = select(AuditEvent).order_by(AuditEvent.id)
        if database is not None:
            query = query.where(AuditEvent.database == database)
        if action is not None:
            query = query.where(AuditEvent.action == action)
        with self._session(write=False) as session:
            return [_audit_record(row) for row in session.scalars(query)]

    # -- what the metrics and ``drkit status`` need, asked of the database (as drkit.catalog.reader) --------

    def newest_backup(self, database: str, kind: str) -> BackupRecord | None:
        """The restorable backup of ``kind`` that ends last (``end_time``, else ``started_at``; ties: the
        later start, then the larger id)."""
        query = (select(Backup)
                 .where(Backup.database == database, Backup.kind == kind,
                        Backup.status.in_(list(RESTORABLE_STATUSES)))
                 .order_by(func.coalesce(Backup.end_time, Backup.started_at).desc(), Backup.started_at.desc(),
                           Backup.id.desc())
                 .limit(1))
        with self._session(write=False) as session:
            row = session.scalars(query).first()
            return None if row is None else _backup_record(row)

    def backup_tallies(self, database: str) -> list[BackupTally]:
        """The database's backups counted per kind and status, with their latest start and end."""
        query = (select(Backup.kind, Backup.status, func.count(), func.max(Backup.started_at),
                        func.max(Backup.end_time))
                 .where(Backup.database == database)
                 .group_by(Backup.kind, Backup.status).order_by(Backup.kind, Backup.status))
        with self._session(write=False) as session:
            return [BackupTally(kind, status, int(n), start, end)
                    for kind, status, n, start, end in session.execute(query)]

    def stored_bytes_by_tier(self, database: str) -> dict[str, int]:
        """Bytes of the database's complete copies, summed per tier."""
        query = (select(Copy.tier, func.sum(Copy.stored_bytes))
                 .join(Backup, Backup.id == Copy.backup_id)
                 .where(Backup.database == database, Copy.status == "complete")
                 .group_by(Copy.tier))
        with self._session(write=False) as session:
            return {str(tier): int(total or 0) for tier, total in session.execute(query)}

    def chain_scope(self, database: str, tier_order: Iterable[str],
                    margin: timedelta) -> tuple[list[BackupRecord], list[CopyRecord]] | None:
        """The backups (as :meth:`list_backups` orders them) and their copies from ``margin`` before the start
        of the newest restorable full with a complete copy in ``tier_order`` onward; None without such a full."""
        copied = (select(Copy.id)
                  .where(Copy.backup_id == Backup.id, Copy.status == "complete", Copy.tier.in_(list(tier_order)))
                  .exists())
        anchor = (select(Backup.started_at)
                  .where(Backup.database == database, Backup.kind == "full",
                         Backup.status.in_(list(RESTORABLE_STATUSES)), Backup.end_time.is_not(None), copied)
                  .order_by(Backup.end_time.desc()).limit(1))
        with self._session(write=False) as session:
            start = session.scalars(anchor).first()
            if start is None:
                return None
            since = start - margin
            scope = (Backup.database == database, or_(Backup.started_at >= since, Backup.end_time >= since))
            backups = [_backup_record(row) for row in session.scalars(
                select(Backup).where(*scope).order_by(Backup.started_at.desc(), Backup.id.desc()))]
            copies = [_copy_record(row) for row in session.scalars(
                select(Copy).join(Backup, Backup.id == Copy.backup_id).where(*scope)
                .order_by(Copy.backup_id, Copy.id))]
        return backups, copies

    def newest_audit(self, database: str, actions: Iterable[str]) -> AuditRecord | None:
        """The database's audit event of one of ``actions`` that is newest by time (ties: the larger id)."""
        query = (select(AuditEvent)
                 .where(AuditEvent.database == database, AuditEvent.action.in_(list(actions)))
                 .order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(1))
        with self._session(write=False) as session:
            row = session.scalars(query).first()
            return None if row is None else _audit_record(row)

    def recent_audits(self, database: str, action: str, limit: int | None) -> list[AuditRecord]:
        """The database's last ``limit`` (None: all) audit events of ``action``, newest (largest id) first."""
        query = (select(AuditEvent).where(AuditEvent.database == database, AuditEvent.action == action)
                 .order_by(AuditEvent.id.desc()).limit(limit))
        with self._session(write=False) as session:
            return [_audit_record(row) for row in session.scalars(query)]

    # -- endpoints ---------------------------------------------------------------------------------

    def set_endpoint(self, database: str, *, dsn_hint: str, role: str, actor: str, side: str | None = None,
                     data_dir: str | None = None) -> bool:
        """Record which server is the primary of ``database`` and its ``host:port`` (no credentials), audited
        as one ``endpoint.set``; False (nothing written, nothing audited) when the record already says so."""
        _check_dsn_hint(dsn_hint)
        if side is not None and side not in PRIMARY_SIDES:
            raise CatalogError(f"an endpoint side must be one of {', '.join(PRIMARY_SIDES)}, got {side!r}")
        with self._session() as session:
            row = session.get(Endpoint, database, with_for_update=True)
            wanted = {"dsn_hint": dsn_hint, "role": role, "side": side, "data_dir": data_dir}
            previous = None if row is None else {k: getattr(row, k) for k in wanted}
            if previous == wanted:
                return False
            now = _now()
            if row is None:
                row = Endpoint(database=database)
                session.add(row)
            for key, value in wanted.items():
                setattr(row, key, value)
            row.updated_at = now
            row.updated_by = actor
            session.add(
                AuditEvent(
                    at=now,
                    actor=actor,
                    action="endpoint.set",
                    database=database,
                    subject=dsn_hint,
                    detail={**wanted, "previous": previous},
                )
            )
            self._flush(session, f"cannot record the endpoint of {database}")
        return True

    def get_endpoint(self, database: str) -> EndpointRecord | None:
        """The recorded primary of a database and where clients connect to it (None: never recorded)."""
        with self._session(write=False) as session:
            row = session.get(Endpoint, database)
            if row is None:
                return None
            return EndpointRecord(database=row.database, dsn_hint=row.dsn_hint, role=row.role, side=row.side,
                                  data_dir=row.data_dir, updated_at=row.updated_at, updated_by=row.updated_by)

    # -- legal holds -------------------------------------------------------------------------------

    @staticmethod
    def _active_hold(session: Session, backup_id: str) -> Hold | None:
        query = select(Hold).where(Hold.backup_id == backup_id, Hold.removed_at.is_(None)).order_by(Hold.id)
        return session.scalars(query.with_for_update()).first()

    def add_hold(self, backup_id: str, *, reason: str, actor: str) -> HoldRecord:
        """Put a backup under legal hold, and audit it (``hold.add``) in the same transaction.

        While the hold is active, retention deletes nothing the backup's restore needs. A backup has at
        most one active hold: a second one is refused with a CatalogError that names the first.
        """
        reason, actor = reason.strip(), actor.strip()
        if not reason:
            raise CatalogError("a legal hold needs a reason (e.g. the case or ticket it is for)")
        if not actor:
            raise CatalogError("a legal hold needs the name of who places it")
        with self._session() as session:
            backup = self._backup(session, backup_id, lock=True)
            active = self._active_hold(session, backup_id)
            if active is not None:
                raise CatalogError(
                    f"backup {backup_id} is already under legal hold by {active.created_by} since "
                    f"{active.created_at.isoformat(timespec='seconds')}: {active.reason}"
                )
            now = _now()
            row = Hold(backup_id=backup_id, reason=reason, created_at=now, created_by=actor)
            session.add(row)
            self._flush(session, f"cannot record a legal hold on backup {backup_id}")
            session.add(
                AuditEvent(
                    at=now,
                    actor=actor,
                    action="hold.add",
                    database=backup.database,
                    subject=backup_id,
                    detail={"hold_id": row.id, "reason": reason},
                )
            )
            self._flush(session, f"cannot audit the legal hold on backup {backup_id}")
            return _hold_record(row, backup.database)

    def remove_hold(self, backup_id: str, *, actor: str, reason: str) -> HoldRecord:
        """End the active legal hold on a backup (the row stays as history), and audit it (``hold.remove``).

        CatalogError if the backup has no active hold.
        """
        reason, actor = reason.strip(), actor.strip()
        if not reason:
            raise CatalogError("removing a legal hold needs a reason (e.g. the case was closed)")
        if not actor:
            raise CatalogError("removing a legal hold needs the name of who removes it")
        with self._session() as session:
            backup = self._backup(session, backup_id, lock=True)
            row = self._active_hold(session, backup_id)
            if row is None:
                raise CatalogError(f"backup {backup_id} has no active legal hold")
            now = _now()
            row.removed_at = now
            row.removed_by = actor
            row.removed_reason = reason
            session.add(
                AuditEvent(
                    at=now,
                    actor=actor,
                    action="hold.remove",
                    database=backup.database,
                    subject=backup_id,
                    detail={"hold_id": row.id, "reason": reason, "held_by": row.created_by,
                            "hold_reason": row.reason},
                )
            )
            self._flush(session, f"cannot remove the legal hold on backup {backup_id}")
            return _hold_record(row, backup.database)

    def active_holds(self, database: str | None = None) -> list[HoldRecord]:
        """Legal holds in force (on one database's backups, if given), oldest first."""
        query = (
            select(Hold, Backup.database)
            .join(Backup, Backup.id == Hold.backup_id)
            .where(Hold.removed_at.is_(None))
            .order_by(Hold.id)
        )
        if database is not None:
            query = query.where(Backup.database == database)
        with self._session(write=False) as session:
            return [_hold_record(row, db) for row, db in session.execute(query).tuples()]

    def hold_history(self, backup_id: str) -> list[HoldRecord]:
        """Every legal hold ever placed on a backup, active or removed, oldest first."""
        with self._session(write=False) as session:
            backup = self._backup(session, backup_id)
            rows = session.scalars(select(Hold).where(Hold.backup_id == backup_id).order_by(Hold.id))
            return [_hold_record(row, backup.database) for row in rows]

    # -- rebuild ------------------------------------------------------------------------------------

    def import_backup(self, record: BackupRecord, copies: Sequence[tuple[str, str, int, str]] = ()) -> bool:
        """Insert a backup exactly as described (catalog rebuild from a store); False if it already exists.

        ``copies`` are ``(tier, store_key, stored_bytes, sha256)``, recorded ``complete``. Its base (a
        diff's full) must be imported first.
        """
        _one_of("backup kind", record.kind, BACKUP_KINDS)
        _position("start_lsn", record.start_lsn)
        _position("end_lsn", record.end_lsn)
        _lineage(record.lineage)
        with self._session() as session:
            if session.get(Backup, record.id) is not None:
                return False
            if record.base_id is not None:
                self._backup(session, record.base_id)
            session.add(Backup(
                id=record.id, database=record.database, kind=record.kind, status=record.status,
                base_id=record.base_id, timeline=record.timeline, start_lsn=record.start_lsn,
                end_lsn=record.end_lsn, start_wal=record.start_wal, end_wal=record.end_wal,
                started_at=_aware("started_at", record.started_at),
                finished_at=_aware("finished_at", record.finished_at),
                start_time=_aware("start_time", record.start_time), end_time=_aware("end_time", record.end_time),
                raw_bytes=record.raw_bytes, stored_bytes=record.stored_bytes, sha256=record.sha256,
                format=record.format, key_id=record.key_id, error=record.error,
                verified_at=_aware("verified_at", record.verified_at), meta=dict(record.meta),
                lineage=record.lineage))
            self._flush(session, f"cannot import backup {record.id}")
            now = _now()
            for tier, store_key, copy_bytes, copy_sha256 in copies:
                session.add(Copy(backup_id=record.id, tier=tier, store_key=store_key, status="complete",
                                 stored_bytes=copy_bytes, sha256=copy_sha256, created_at=now, updated_at=now))
            self._flush(session, f"cannot record the copies of {record.id}")
            return True
