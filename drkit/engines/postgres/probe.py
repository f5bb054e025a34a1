"""Probing a PostgreSQL server: connect, ``SELECT 1``, ``pg_is_in_recovery()``, into a :class:`ProbeResult`.

Targets and details never contain secrets: a DSN is shown as ``host:port/dbname``.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from drkit.health import ProbeResult, secs


def _dsn_params(dsn: str) -> dict[str, Any] | None:
    try:
        return dict(conninfo_to_dict(dsn))
    except psycopg.Error:
        return None


def dsn_target(dsn: str) -> str:
    """host:port/dbname of a DSN, for messages; never the password."""
    params = _dsn_params(dsn)
    if params is None:
        return "(unparseable DSN)"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or ''}"


def _scrub(text: str, params: dict[str, Any] | None) -> str:
    secret = str((params or {}).get("password") or "")
    return text.replace(secret, "***") if secret else text


def _db_error_detail(exc: psycopg.Error, params: dict[str, Any] | None, timeout: float, connect_timeout: int) -> str:
    text = str(exc).strip()
    low = text.lower()
    if isinstance(exc, psycopg.errors.ConnectionTimeout) or "timeout expired" in low:
        return f"timeout after {connect_timeout}s"
    if isinstance(exc, psycopg.errors.QueryCanceled) or "statement timeout" in low:
        return f"timeout after {secs(timeout)} (query)"
    if "connection refused" in low:
        return "connect refused"
    if "password authentication failed" in low or "no password supplied" in low:
        return "authentication failed"
    if "does not exist" in low and "database" in low:
        return "database does not exist"
    if "the database system is starting up" in low:
        return "server starting up"
    if "the database system is shutting down" in low:
        return "server shutting down"
    if "the database system is in recovery mode" in low:
        return "server in crash recovery"
    if "could not translate host name" in low:
        return "DNS lookup failed"
    if "server closed the connection unexpectedly" in low:
        return "connection closed by server"
    # libpq's message, last meaningful line, without the password (libpq never echoes it, but be sure)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    if last.startswith("connection to server at") and ":" in last:
        last = last.rsplit(":", 1)[1].strip() or last
    return _scrub(last[:200], params)


def probe_db(dsn: str, *, timeout: float = 2.0, require_writable: bool = False) -> ProbeResult:
    """Connect, ``SELECT 1`` and ``pg_is_in_recovery()``: ok when the server answers (and is writable if required).

    libpq's connect timeout has a 2-second floor; an answer slower than ``timeout`` still counts as a failure.
    """
    params = _dsn_params(dsn)
    target = dsn_target(dsn)
    at = datetime.now(UTC)
    t0 = time.perf_counter()

    def result(ok: bool, detail: str, writable: bool | None = None) -> ProbeResult:
        return ProbeResult(target=target, ok=ok, kind="db", latency_ms=(time.perf_counter() - t0) * 1000,
                           detail=detail, at=at, writable=writable)

    if params is None:
        return result(False, "invalid DSN")
    stmt_ms = max(1, int(timeout * 1000))
    connect_timeout = max(2, math.ceil(timeout))
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout,
                             application_name="drkit-probe",
                             options=f"-c statement_timeout={stmt_ms}") as conn:
            row = conn.execute("SELECT 1, pg_is_in_recovery()").fetchone()
    except psycopg.Error as exc:
        return result(False, _db_error_detail(exc, params, timeout, connect_timeout))
    except OSError as exc:  # socket-level failures psycopg did not wrap
        return result(False, f"{type(exc).__name__}: {_scrub(str(exc), params)[:200]}")
    elapsed = time.perf_counter() - t0
    if row is None or row[0] != 1:
        return result(False, "unexpected answer to SELECT 1")
    writable = not row[1]
    if elapsed > timeout:
        return result(False, f"timeout after {secs(timeout)} (answered in {elapsed:.1f}s)", writable)
    if require_writable and not writable:
        return result(False, "read-only (in recovery)", writable)
    return result(True, "writable" if writable else "read-only (in recovery)", writable)


