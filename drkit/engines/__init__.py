"""Database engines behind small typed protocols (``drkit.engines.base``): PostgreSQL and SQL Server.

This package is the one place that maps a policy's ``engine:`` name to its implementation; nothing above
it asks which engine a database has. The runtime (catalog, key, stores) sits below the engines: callers
open a database's engine with :func:`open_engine`, its DR operations with :func:`dr_operations`, and its
chain rules with :func:`chain_for`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drkit.engines.base import ChainModel, DrOperations, Engine
    from drkit.runtime import Runtime

ENGINES: tuple[str, ...] = ("postgres", "sqlserver")


def chain_model(engine: str) -> ChainModel:
    """The restore-chain rules of ``engine`` (a policy's ``databases.NAME.engine``)."""
    if engine == "sqlserver":
        from drkit.engines.sqlserver.chain_model import SQLSERVER_CHAIN

        return SQLSERVER_CHAIN
    if engine == "postgres":
        from drkit.engines.postgres.chain_model import POSTGRES_CHAIN

        return POSTGRES_CHAIN
    raise ValueError(f"unknown engine {engine!r}; drkit knows {', '.join(ENGINES)}")


def chain_for(rt: Runtime, db: str) -> ChainModel:
    """The restore-chain rules of the policy's database ``db``."""
    return chain_model(rt.policy.database(db).engine)


def open_engine(rt: Runtime, db: str) -> Engine:
    """``db``'s operations for the engine the policy names (``databases.NAME.engine``)."""
    engine = rt.policy.database(db).engine
    if engine == "sqlserver":
        from drkit.engines.sqlserver.database import SqlServerDatabase

        return SqlServerDatabase(rt, db)
    from drkit.engines.postgres.database import PostgresDatabase

    return PostgresDatabase(rt, db)


def dr_operations(rt: Runtime, db: str) -> DrOperations:
    """What the DR runbooks do to ``db``, for the engine the policy names (``databases.NAME.engine``)."""
    engine = rt.policy.database(db).engine
    if engine == "sqlserver":
        from drkit.engines.sqlserver.dr import SqlServerDr

        return SqlServerDr.from_runtime(rt, db)
    from drkit.engines.postgres.dr import PostgresDr

    return PostgresDr.from_runtime(rt, db)
