"""Migration 0004 on a real PostgreSQL 15: the tests of ``tests/unit/test_catalog_migration_0004.py``, re-run.

Every test there takes ``catalog_url``; here it points at a fresh database in a throwaway cluster (the
fixtures of ``test_catalog_postgres.py``), so the upgrade from revision 0003 (``lpad`` in ``USING``, JSON
read back through psycopg), the numeric ordering of positions, and the downgrade to BIGINT are exercised
on PostgreSQL as well. One more test runs on a database with a linguistic (ICU) collation, since the
cluster's default here is ``C``.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql

from tests.integration import test_catalog_postgres as pg_cluster
from tests.unit import test_catalog_migration_0004 as shared

pytestmark = [pytest.mark.slow, pytest.mark.integration]

pg_port = pg_cluster.pg_port
catalog_url = pg_cluster.catalog_url
engine = shared.engine

for _name, _obj in vars(shared).items():
    if _name.startswith("test_") and inspect.isfunction(_obj) and "catalog_url" in inspect.signature(_obj).parameters:
        globals()[_name] = _obj


@pytest.fixture
def icu_catalog_url(pg_port: int) -> Iterator[str]:
    """A fresh database whose default collation is ICU's en-US, not C."""
    name = f"catalog_icu_{uuid.uuid4().hex[:12]}"
    admin = f"host=127.0.0.1 port={pg_port} user=postgres dbname=postgres"
    create = "CREATE DATABASE {} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL(create).format(sql.Identifier(name)))
    yield f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_positions_sort_numerically_under_a_linguistic_collation(icu_catalog_url: str) -> None:
    eng = sa.create_engine(icu_catalog_url)
    try:
        with eng.connect() as conn:
            provider = conn.execute(sa.text(
                "SELECT datlocprovider FROM pg_database WHERE datname = current_database()")).scalar_one()
        assert provider == "i"
        shared.test_positions_sort_and_compare_numerically_in_sql_after_the_upgrade(icu_catalog_url, eng)
    finally:
        eng.dispose()
