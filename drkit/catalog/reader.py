"""Fast reads of a SQLite catalog already at the newest schema: the standard library's ``sqlite3`` only.

Importing SQLAlchemy takes about 0.3 s and Alembic as much again, longer than a whole read-only ``drkit``
command may take (``drkit backups DB``, ``drkit status``). So :func:`open_catalog` checks the stored schema
revision with one query; when a SQLite catalog file is at :data:`HEAD_REVISION` it answers the read
methods here, with plain SQL, and opens the SQLAlchemy :class:`~drkit.catalog.repository.Catalog` (without
migrating: the schema is current) only when something writes. Any other catalog (PostgreSQL, in memory,
a missing file, an older schema) goes through ``Catalog.open``, which migrates as before.

The reads here return the same records as the repository's; ``tests/unit/test_catalog_reader.py`` runs
both on one catalog and compares every method, and checks :data:`HEAD_REVISION` against Alembic's head.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from drkit.catalog.records import (
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
    from drkit.catalog.repository import Catalog

HEAD_REVISION = "0005"
"""The newest migration in ``migrations/versions``; a unit test checks it against Alembic's head, so a new
migration must update it (until then every command takes the migrating path, which is correct, only slower)."""

_VERSION_TABLE = "drkit_catalog_version"  # drkit.catalog.models.VERSION_TABLE, without importing SQLAlchemy
_BUSY_TIMEOUT_S = 30.0  # as the repository's SQLITE_BUSY_TIMEOUT_MS

_BACKUP_COLUMNS = ("id", "database", "kind", "status", "base_id", "timeline", "start_lsn", "end_lsn",
                   "start_wal", "end_wal", "started_at", "finished_at", "start_time", "end_time", "raw_bytes",
                   "stored_bytes", "sha256", "format", "key_id", "error", "verified_at", "meta", "lineage")
_COPY_COLUMNS = ("id", "backup_id", "tier", "store_key", "status", "stored_bytes", "sha256", "created_at",
                 "updated_at")
_AUDIT_COLUMNS = ("id", "at", "actor", "action", "database", "subject", "detail")
_HOLD_COLUMNS = ("id", "backup_id", "reason", "created_at", "created_by", "removed_at", "removed_by",
                 "removed_reason")
_ENDPOINT_COLUMNS = ("database", "dsn_hint", "role", "side", "data_dir", "updated_at", "updated_by")
_TIMES = frozenset({"started_at", "finished_at", "start_time", "end_time", "verified_at", "created_at",
                    "updated_at", "at", "removed_at"})
_POSITIONS = frozenset({"start_lsn", "end_lsn"})  # zero-padded decimal text (models.Position)
_JSON = frozenset({"meta", "detail"})

R = TypeVar("R")


def _select(table: str, columns: tuple[str, ...], alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    # Only this module's constant table and column names are formatted in; every value is a ? parameter.
    return f"SELECT {', '.join(prefix + _quote(c) for c in columns)} FROM {table}{' ' + alias if alias else ''}"  # noqa: S608


def _quote(column: str) -> str:
    return f'"{column}"'


def _decode(columns: tuple[str, ...], row: tuple[Any, ...]) -> dict[str, Any]:
    """A row as the repository's types give it: aware UTC datetimes, int positions, JSON as dicts."""
    out: dict[str, Any] = {}
    for name, value in zip(columns, row, strict=True):
        if value is not None:
            if name in _TIMES:
                t = datetime.fromisoformat(value)
                value = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
            elif name in _POSITIONS:
                value = int(value)
            elif name in _JSON:
                value = json.loads(value)
        out[name] = value
    return out


def _backup(row: tuple[Any, ...]) -> BackupRecord:
    d = _decode(_BACKUP_COLUMNS, row)
    return BackupRecord(**{**d, "meta": dict(d["meta"] or {})})


def _copy(row: tuple[Any, ...]) -> CopyRecord:
    return CopyRecord(**_decode(_COPY_COLUMNS, row))


def _audit(row: tuple[Any, ...]) -> AuditRecord:
    d = _decode(_AUDIT_COLUMNS, row)
    return AuditRecord(**{**d, "detail": dict(d["detail"] or {})})


def _hold(row: tuple[Any, ...]) -> HoldRecord:
    *hold, database = row
    return HoldRecord(**_decode(_HOLD_COLUMNS, tuple(hold)), database=database)


def _in(column: str, values: Iterable[str], params: list[Any]) -> str:
    listed = list(values)
    params.extend(listed)
    return f"{column} IN ({', '.join('?' * len(listed))})" if listed else "0"


def sqlite_file(url: str) -> Path | None:
    """The file of a plain ``sqlite:///FILE`` URL (as ``Policy.catalog_url()`` gives it), else None."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url:
        return None
    name = url[len(prefix):]
    if name in ("", ":memory:") or name.startswith("file:"):
        return None
    return Path(name)


def stored_revision(path: Path) -> str | None:
    """The schema revision a SQLite catalog file records (None: no file, no version table, unreadable)."""
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S)
        try:
            row = conn.execute(f"SELECT version_num FROM {_VERSION_TABLE}").fetchone()  # noqa: S608 - a constant
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])


class SqliteReader:
    """The catalog's read methods over one SQLite file at :data:`HEAD_REVISION` (one connection a thread)."""

    def __init__(self, path: Path, safe_url: str) -> None:
        self._path = path
        self._safe_url = safe_url
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction (a consistent snapshot); sqlite errors -> CatalogError, as the repository."""
        conn = self._conn()
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise CatalogError(f"catalog {self._safe_url}: {' '.join(str(exc).split())}") from exc

    def _all(self, sql: str, params: list[Any], make: Callable[[tuple[Any, ...]], R]) -> list[R]:
        with self._read() as conn:
            return [make(row) for row in conn.execute(sql, params).fetchall()]

    def _first(self, sql: str, params: list[Any], make: Callable[[tuple[Any, ...]], R]) -> R | None:
        rows = self._all(sql, params, make)
        return rows[0] if rows else None

    def _require_backup(self, conn: sqlite3.Connection, backup_id: str) -> str:
        row = conn.execute('SELECT "database" FROM backups WHERE id = ?', [backup_id]).fetchone()
        if row is None:
            raise BackupNotFoundError(f"no backup {backup_id}; `drkit backups DB` lists them")
        return str(row[0])

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- the repository's read methods (same names, arguments and results) ----------------------------

    def get(self, backup_id: str) -> BackupRecord:
        found = self._first(_select("backups", _BACKUP_COLUMNS) + " WHERE id = ?", [backup_id], _backup)
        if found is None:
            raise BackupNotFoundError(f"no backup {backup_id}; `drkit backups DB` lists them")
        return found

    def list_backups(self, database: str | None = None, *, kinds: Iterable[str] | None = None,
                     statuses: Iterable[str] | None = None) -> list[BackupRecord]:
        params: list[Any] = []
        where = []
        if database is not None:
            where.append('"database" = ?')
            params.append(database)
        if kinds is not None:
            where.append(_in("kind", kinds, params))
        if statuses is not None:
            where.append(_in("status", statuses, params))
        sql = _select("backups", _BACKUP_COLUMNS) + (" WHERE " + " AND ".join(where) if where else "")
        return self._all(sql + " ORDER BY started_at DESC, id DESC", params, _backup)

    def latest(self, database: str, kind: str, *,
               statuses: Iterable[str] = RESTORABLE_STATUSES) -> BackupRecord | None:
        params: list[Any] = [database, kind]
        sql = (_select("backups", _BACKUP_COLUMNS) + ' WHERE "database" = ? AND kind = ? AND '
               + _in("status", statuses, params) + " ORDER BY started_at DESC, id DESC LIMIT 1")
        return self._first(sql, params, _backup)

    def copies(self, backup_id: str) -> list[CopyRecord]:
        with self._read() as conn:
            self._require_backup(conn, backup_id)
            rows = conn.execute(_select("copies", _COPY_COLUMNS) + " WHERE backup_id = ? ORDER BY id",
                                [backup_id]).fetchall()
        return [_copy(row) for row in rows]

    def all_copies(self, database: str | None = None) -> list[CopyRecord]:
        if database is None:
            return self._all(_select("copies", _COPY_COLUMNS) + " ORDER BY backup_id, id", [], _copy)
        sql = (_select("copies", _COPY_COLUMNS, "c") + ' JOIN backups b ON b.id = c.backup_id'
               ' WHERE b."database" = ? ORDER BY c.backup_id, c.id')
        return self._all(sql, [database], _copy)

    def latest_audit(self, action: str) -> AuditRecord | None:
        sql = _select("audit_events", _AUDIT_COLUMNS) + " WHERE action = ? ORDER BY id DESC LIMIT 1"
        return self._first(sql, [action], _audit)

    def audit_events(self, *, database: str | None = None, action: str | None = None) -> list[AuditRecord]:
        params: list[Any] = []
        where = []
        if database is not None:
            where.append('"database" = ?')
            params.append(database)
        if action is not None:
            where.append("action = ?")
            params.append(action)
        sql = _select("audit_events", _AUDIT_COLUMNS) + (" WHERE " + " AND ".join(where) if where else "")
        return self._all(sql + " ORDER BY id", params, _audit)

    def get_endpoint(self, database: str) -> EndpointRecord | None:
        sql = _select("endpoints", _ENDPOINT_COLUMNS) + ' WHERE "database" = ?'
        return self._first(sql, [database], lambda row: EndpointRecord(**_decode(_ENDPOINT_COLUMNS, row)))

    def active_holds(self, database: str | None = None) -> list[HoldRecord]:
        params: list[Any] = []
        columns = ", ".join(f"h.{_quote(c)}" for c in _HOLD_COLUMNS)
        sql = (f'SELECT {columns}, b."database" FROM holds h JOIN backups b ON b.id = h.backup_id'  # noqa: S608
               " WHERE h.removed_at IS NULL")
        if database is not None:
            sql += ' AND b."database" = ?'
            params.append(database)
        return self._all(sql + " ORDER BY h.id", params, _hold)

    def hold_history(self, backup_id: str) -> list[HoldRecord]:
        with self._read() as conn:
            database = self._require_backup(conn, backup_id)
            rows = conn.execute(_select("holds", _HOLD_COLUMNS) + " WHERE backup_id = ? ORDER BY id",
                                [backup_id]).fetchall()
        return [_hold((*row, database)) for row in rows]

    # -- what the metrics and ``drkit status`` need, asked of the database (see drkit.status) -------------

    def newest_backup(self, database: str, kind: str) -> BackupRecord | None:
        """The restorable backup of ``kind`` that ends last (``end_time``, else ``started_at``; ties: the
        later start, then the larger id)."""
        params: list[Any] = [database, kind]
        sql = (_select("backups", _BACKUP_COLUMNS) + ' WHERE "database" = ? AND kind = ? AND '
               + _in("status", RESTORABLE_STATUSES, params)
               + " ORDER BY COALESCE(end_time, started_at) DESC, started_at DESC, id DESC LIMIT 1")
        return self._first(sql, params, _backup)

    def backup_tallies(self, database: str) -> list[BackupTally]:
        """The database's backups counted per kind and status, with their latest start and end."""
        sql = ('SELECT kind, status, COUNT(*), MAX(started_at), MAX(end_time) FROM backups'
               ' WHERE "database" = ? GROUP BY kind, status ORDER BY kind, status')

        def tally(row: tuple[Any, ...]) -> BackupTally:
            times = _decode(("started_at", "end_time"), row[3:])
            return BackupTally(row[0], row[1], int(row[2]), times["started_at"], times["end_time"])
        return self._all(sql, [database], tally)

    def stored_bytes_by_tier(self, database: str) -> dict[str, int]:
        """Bytes of the database's complete copies, summed per tier."""
        sql = ('SELECT c.tier, SUM(c.stored_bytes) FROM copies c JOIN backups b ON b.id = c.backup_id'
               ' WHERE b."database" = ? AND c.status = ? GROUP BY c.tier')
        return dict(self._all(sql, [database, "complete"], lambda row: (str(row[0]), int(row[1] or 0))))

    def chain_scope(self, database: str, tier_order: Iterable[str],
                    margin: timedelta) -> tuple[list[BackupRecord], list[CopyRecord]] | None:
        """The backups (as :meth:`list_backups` orders them) and their copies from ``margin`` before the start
        of the newest restorable full with a complete copy in ``tier_order`` onward; None without such a full."""
        params: list[Any] = [database, "full"]
        anchor_sql = ('SELECT b.started_at FROM backups b WHERE b."database" = ? AND b.kind = ? AND '  # noqa: S608
                      + _in("b.status", RESTORABLE_STATUSES, params) + " AND b.end_time IS NOT NULL AND EXISTS"
                      " (SELECT 1 FROM copies c WHERE c.backup_id = b.id AND c.status = ? AND ")
        params.append("complete")
        anchor_sql += _in("c.tier", tier_order, params) + ") ORDER BY b.end_time DESC LIMIT 1"
        with self._read() as conn:
            row = conn.execute(anchor_sql, params).fetchone()
            if row is None:
                return None
            since = _decode(("started_at",), row)["started_at"] - margin
            text = since.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
            where = ' WHERE b."database" = ? AND (b.started_at >= ? OR b.end_time >= ?)'
            backups = conn.execute(_select("backups", _BACKUP_COLUMNS, "b") + where
                                   + " ORDER BY b.started_at DESC, b.id DESC", [database, text, text]).fetchall()
            copies = conn.execute(_select("copies", _COPY_COLUMNS, "c") + " JOIN backups b ON b.id = c.backup_id"
                                  + where + " ORDER BY c.backup_id, c.id", [database, text, text]).fetchall()
        return [_backup(r) for r in backups], [_copy(r) for r in copies]

    def newest_audit(self, database: str, actions: Iterable[str]) -> AuditRecord | None:
        """The database's audit event of one of ``actions`` that is newest by time (ties: the larger id)."""
        params: list[Any] = [database]
        sql = (_select("audit_events", _AUDIT_COLUMNS) + ' WHERE "database" = ? AND ' + _in("action", actions, params)
               + " ORDER BY at DESC, id DESC LIMIT 1")
        return self._first(sql, params, _audit)

    def recent_audits(self, database: str, action: str, limit: int | None) -> list[AuditRecord]:
        """The database's last ``limit`` (None: all) audit events of ``action``, newest (largest id) first."""
        sql = _select("audit_events", _AUDIT_COLUMNS) + ' WHERE "database" = ? AND action = ? ORDER BY id DESC'
        params: list[Any] = [database, action]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return self._all(sql, params, _audit)


_READS = frozenset({"get", "list_backups", "latest", "copies", "all_copies", "latest_audit", "audit_events",
                    "get_endpoint", "active_holds", "hold_history", "newest_backup", "backup_tallies",
                    "stored_bytes_by_tier", "chain_scope", "newest_audit", "recent_audits"})


class ReadFirstCatalog:
    """A :class:`~drkit.catalog.repository.Catalog` whose reads go to :class:`SqliteReader`; every other
    method (writes, migrate, ...) goes to a repository Catalog opened on first use."""

    def __init__(self, url: str, path: Path) -> None:
        self._url = url
        self._reader = SqliteReader(path, url)
        self._full: Catalog | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self._url  # a SQLite file URL carries no password

    def __repr__(self) -> str:
        return f"Catalog({self._url!r})"

    def __enter__(self) -> ReadFirstCatalog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in _READS:
            return getattr(self._reader, name)
        with self._lock:
            if self._full is None:
                from drkit.catalog.repository import Catalog

                self._full = Catalog(self._url)  # no migration: the stored revision is the head
        return getattr(self._full, name)

    def close(self) -> None:
        self._reader.close()
        if self._full is not None:
            self._full.close()


def open_catalog(url: str) -> Catalog:
    """The catalog at ``url``, its schema brought up to date; read-mostly users get the fast reads above."""
    path = sqlite_file(url)
    if path is not None and stored_revision(path) == HEAD_REVISION:
        return cast("Catalog", ReadFirstCatalog(url, path))
    from drkit.catalog.repository import Catalog

    return Catalog.open(url)
