"""Migration 0005: the endpoint record learns which side is the primary and its data directory, on SQLite.

A record written at revision 0004 (host:port and role only) reads back after the upgrade with ``side`` and
``data_dir`` unset, takes both afterwards, and a downgrade to 0004 keeps its host:port and role.
``tests/integration/test_catalog_migration_0005_postgres.py`` re-runs these tests on a real PostgreSQL 15.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from drkit.catalog import Catalog
from tests.unit import test_catalog_migration_0004 as m0004

catalog_url = m0004.catalog_url  # the fixtures (a fresh SQLite file, an engine on it) and helper of 0004's tests
engine = m0004.engine
_at_revision = m0004._at_revision

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

OLD_ENDPOINTS = sa.table(  # the endpoints table as revision 0004 has it
    "endpoints",
    sa.column("database", sa.String(128)),
    sa.column("dsn_hint", sa.String(512)),
    sa.column("role", sa.String(32)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
    sa.column("updated_by", sa.String(256)),
)


def test_a_0004_record_upgrades_then_names_its_side_and_data_dir(catalog_url: str, engine: sa.Engine) -> None:
    _at_revision(catalog_url, "0004")
    with engine.begin() as conn:
        conn.execute(sa.insert(OLD_ENDPOINTS), [{"database": "orders", "dsn_hint": "db2.internal:5432",
                                                "role": "dr", "updated_at": T0, "updated_by": "drkit-dr"}])
    with Catalog.open(catalog_url) as cat:
        old = cat.get_endpoint("orders")
        assert old is not None
        assert (old.dsn_hint, old.role, old.side, old.data_dir, old.updated_at) == (
            "db2.internal:5432", "dr", None, None, T0)
        assert cat.set_endpoint("orders", dsn_hint="127.0.0.1:5491", role="recovered", side="recovered",
                                data_dir="/srv/pg/recovered", actor="alice")
        new = cat.get_endpoint("orders")
        assert new is not None and (new.side, new.data_dir) == ("recovered", "/srv/pg/recovered")
        event = cat.audit_events(database="orders", action="endpoint.set")[-1]
        assert event.detail["previous"] == {"dsn_hint": "db2.internal:5432", "role": "dr", "side": None,
                                            "data_dir": None}


def test_downgrade_to_0004_keeps_host_port_and_role(catalog_url: str, engine: sa.Engine) -> None:
    with Catalog.open(catalog_url) as cat:
        cat.set_endpoint("orders", dsn_hint="db2.internal:5432", role="dr", side="dr", data_dir="/srv/pg/dr",
                         actor="drkit-dr")
        cat.downgrade("0004")
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("endpoints")}
        row = conn.execute(sa.select(OLD_ENDPOINTS.c.dsn_hint, OLD_ENDPOINTS.c.role)).one()
    assert {"side", "data_dir"}.isdisjoint(columns)
    assert tuple(row) == ("db2.internal:5432", "dr")
    with Catalog.open(catalog_url) as cat:  # and up again
        record = cat.get_endpoint("orders")
        assert record is not None and (record.dsn_hint, record.side) == ("db2.internal:5432", None)
