"""Migration 0005 on a real PostgreSQL 15: the tests of ``tests/unit/test_catalog_migration_0005.py``, re-run.

Every test there takes ``catalog_url``; here it points at a fresh database in a throwaway cluster (the
fixtures of ``test_catalog_postgres.py``).
"""

from __future__ import annotations

import inspect

import pytest

from tests.integration import test_catalog_postgres as pg_cluster
from tests.unit import test_catalog_migration_0005 as shared

pytestmark = [pytest.mark.slow, pytest.mark.integration]

pg_port = pg_cluster.pg_port
catalog_url = pg_cluster.catalog_url
engine = shared.engine

for _name, _obj in vars(shared).items():
    if _name.startswith("test_") and inspect.isfunction(_obj) and "catalog_url" in inspect.signature(_obj).parameters:
        globals()[_name] = _obj
