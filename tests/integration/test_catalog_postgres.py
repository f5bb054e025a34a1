"""The catalog's behaviour on a real PostgreSQL 15, which is what a shared (multi-host) catalog runs on.

The behaviour tests live in ``tests/unit/test_catalog.py``; this module imports every backend-independent
one (those taking ``catalog``/``catalog_url`` and not named ``test_sqlite_*``) and re-runs it with
``catalog_url`` pointing at a fresh database in a throwaway cluster. PostgreSQL-only checks follow below.

The cluster runs with a non-UTC ``TimeZone`` so that UTC normalisation is actually exercised.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from drkit.catalog import Catalog

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_TIMEZONE = "Asia/Kolkata"


# -- throwaway cluster ------------------------------------------------------------------------------


def _as_postgres(*args: str) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


def _run(*args: str) -> None:
    result = subprocess.run(_as_postgres(*args), capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr}"
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{output}")


def _free_port() -> int:
    """A currently free TCP port below the ephemeral range (so no outgoing connection grabs it)."""
    for _ in range(200):
        port = random.randint(20000, 32767)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768")


@pytest.fixture(scope="module")
def pg_port() -> Iterator[int]:
    """Port of a fresh PostgreSQL 15 cluster (trust auth, user postgres), stopped and removed afterwards."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 binaries not found in {PG_BIN}")
    base = Path(tempfile.mkdtemp(prefix="drkit-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, user="postgres", group="postgres")
    data = base / "data"
    _run(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
    port = 0
    try:
        for attempt in range(3):
            port = _free_port()
            options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
            options += f" -c TimeZone={SERVER_TIMEZONE}"
            try:
                _run(
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(base / "server.log"),
                    "-o",
                    options,
                    "-w",
                    "start",
                )
                break
            except RuntimeError:
                if attempt == 2:
                    log = base / "server.log"
                    raise RuntimeError(log.read_text() if log.exists() else "pg_ctl start failed") from None
        yield port
    finally:
        subprocess.run(
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"),
            capture_output=True,
            check=False,
            timeout=120,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def catalog_url(pg_port: int) -> Iterator[str]:
    """A fresh, empty database in the module's cluster, dropped after the test."""
    name = f"catalog_{uuid.uuid4().hex[:12]}"
    admin = f"host=127.0.0.1 port={pg_port} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- the shared behaviour tests ---------------------------------------------------------------------


def _shared_module() -> ModuleType:
    """tests/unit/test_catalog.py, imported through pytest's assertion-rewriting import hook if possible."""
    path = Path(__file__).resolve().parents[1] / "unit" / "test_catalog.py"
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    module = importlib.import_module("test_catalog")
    if Path(module.__file__ or "").resolve() == path:
        return module
    spec = importlib.util.spec_from_file_location("drkit_shared_catalog_tests", path)  # a name clash
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _shares(name: str, obj: object) -> bool:
    if not name.startswith("test_") or name.startswith("test_sqlite_") or not inspect.isfunction(obj):
        return False
    return bool({"catalog", "catalog_url"} & set(inspect.signature(obj).parameters))


_shared = _shared_module()
catalog = _shared.catalog  # the fixture; it resolves catalog_url to the PostgreSQL one defined above
for _name, _obj in vars(_shared).items():
    if _shares(_name, _obj):
        globals()[_name] = _obj


# -- PostgreSQL only --------------------------------------------------------------------------------


def test_audit_events_cannot_be_truncated(catalog: Catalog, catalog_url: str) -> None:
    event = catalog.audit(actor="alice", action="restore.start", database="orders")
    engine = create_engine(catalog_url)
    try:
        with pytest.raises(sa_exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text("TRUNCATE audit_events"))
    finally:
        engine.dispose()
    assert catalog.audit_events() == [event]


def test_server_timezone_is_not_utc_yet_values_come_back_utc(catalog: Catalog, catalog_url: str) -> None:
    engine = create_engine(catalog_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW TimeZone")).scalar_one() == SERVER_TIMEZONE
    finally:
        engine.dispose()
    backup = catalog.begin_backup("orders", "full")
    assert backup.started_at.utcoffset() is not None
    assert catalog.get(backup.id).started_at.tzname() == "UTC"


def test_schema_uses_timestamptz_and_bigint(catalog: Catalog, catalog_url: str) -> None:
    engine = create_engine(catalog_url)
    try:
        with engine.connect() as conn:
            query = "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = :t"
            rows = conn.execute(text(query), {"t": "backups"})
            types = {str(name): str(data_type) for name, data_type in rows}
    finally:
        engine.dispose()
    assert types["started_at"] == "timestamp with time zone"
    assert types["end_lsn"] == "character varying"  # a Position: fixed-width decimal text (0004)
    assert types["raw_bytes"] == "bigint"
    assert types["meta"] == "json"
