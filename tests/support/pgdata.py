"""Fingerprints of database content, so tests compare restored data with written data."""

from __future__ import annotations

from typing import Any

import psycopg


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def table_hashes(dsn: str) -> dict[str, tuple[int, str]]:
    """(row count, md5 of every row in a stable order) for each user table."""
    out: dict[str, tuple[int, str]] = {}
    with connect(dsn) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables ORDER BY 1").fetchall()]
        for t in tables:
            row = conn.execute(
                f"SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {t} x"
            ).fetchone()
            assert row is not None
            out[t] = (row[0], row[1])
    return out


def visibility_problems(dsn: str) -> dict[str, int]:
    """pg_visibility's check of every table: TIDs whose visibility-map bits lie. Empty means healthy."""
    bad: dict[str, int] = {}
    with connect(dsn) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_visibility")
        tables = [r[0] for r in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()]
        for t in tables:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM pg_check_visible(%s::regclass)) + "
                "(SELECT count(*) FROM pg_check_frozen(%s::regclass))", [t, t]).fetchone()
            if row and row[0]:
                bad[t] = row[0]
    return bad
