"""Copy statuses 'missing' and 'corrupt' (migration 0003): a catalog made before them upgrades and keeps its rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from drkit.catalog import Catalog
from drkit.catalog.repository import MIGRATIONS_DIR
from drkit.errors import CatalogError
from tests.unit.test_catalog import completion


def test_a_copy_can_be_recorded_missing_or_corrupt_and_nonsense_is_refused(tmp_path: Path) -> None:
    cat = Catalog.open(f"sqlite:///{tmp_path / 'c.db'}")
    b = cat.begin_backup("app", "full")
    cat.complete_backup(b.id, copies=[("local", "app/x/data.drk", 400, "a" * 64)], **completion())
    cat.add_copy(b.id, "blob", "app/x/data.drk", status="complete", stored_bytes=400, sha256="a" * 64)
    assert cat.set_copy_status(b.id, "local", "missing").status == "missing"
    assert cat.set_copy_status(b.id, "blob", "corrupt").status == "corrupt"
    with pytest.raises(CatalogError):
        cat.set_copy_status(b.id, "blob", "gone")
    assert {c.tier: c.status for c in cat.copies(b.id)} == {"local": "missing", "blob": "corrupt"}
    cat.close()


def test_a_catalog_at_revision_0002_upgrades_with_its_copies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    cat = Catalog.open(url)
    b = cat.begin_backup("app", "full")
    cat.complete_backup(b.id, copies=[("local", "app/x/data.drk", 400, "a" * 64)], **completion())
    cat.close()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    with engine.connect() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(sa.text("UPDATE copies SET status = 'missing'"))
    engine.dispose()
    cat = Catalog.open(url)  # upgrades to head again, keeping the row
    assert cat.set_copy_status(b.id, "local", "missing").status == "missing"
    cat.close()
