"""The ODBC connection drkit talks to SQL Server through, and one session on it.

pyodbc satisfies the small protocols here as it is; ``tests/support/fake_odbc.py`` implements them by
recording each batch. A :class:`Session` runs :class:`~drkit.engines.sqlserver.tsql.Batch` objects
with the rules every call follows: ``autocommit``, a timeout on every batch (a long one for
BACKUP/RESTORE/DBCC), every result set and message drained (so a BACKUP has really finished, and its
error surfaced, before the call returns), and driver errors translated into domain errors without
secrets (:mod:`drkit.engines.sqlserver.errors`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol, cast

from drkit.engines.sqlserver import tsql
from drkit.engines.sqlserver.errors import SqlServerError, parse_driver_error, scrub, translate_error
from drkit.engines.sqlserver.settings import SqlServerSettings
from drkit.engines.sqlserver.tsql import Batch
from drkit.errors import PrerequisiteError


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
    """One open connection; runs batches in order, draining every result set and message.

    ``driver_error`` is the driver's error base class, ``endpoint`` names the server in messages,
    ``secrets`` are scrubbed from every message and error.
    """

    def __init__(self, conn: OdbcConnection, *, settings: SqlServerSettings, driver_error: type[Exception],
                 endpoint: str, secrets: Sequence[str]) -> None:
        self._conn = conn
        self._settings = settings
        self._driver_error = driver_error
        self._endpoint = endpoint
        self._secrets = tuple(secrets)
        self._server: dict[str, Any] | None = None

    def run(self, batch: Batch, on_message: MessageCallback | None = None) -> BatchResult:
        settings = self._settings
        timeout = settings.long_timeout_s if batch.long_running else settings.query_timeout_s
        secrets = self._secrets
        self._conn.timeout = timeout
        cur = self._conn.cursor()
        sets: list[ResultSet] = []
        messages: list[str] = []

        def collect() -> None:
            for _, text in cur.messages or ():
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
        except self._driver_error as exc:
            raise translate_error(exc, batch, endpoint=self._endpoint, timeout=timeout, secrets=secrets) from None
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
