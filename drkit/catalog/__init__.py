"""The drkit catalog: what was backed up, where the copies are, and an append-only audit trail.

Everything a restore or retention decision needs is read from here, as immutable records::

    from drkit.catalog import Catalog

    catalog = Catalog.open("sqlite:////var/lib/drkit/catalog.db")
    full = catalog.latest("orders", "full")

The schema is migrated with Alembic revisions bundled in this package (``Catalog.open`` / ``migrate``).
"""

from typing import TYPE_CHECKING, Any

from drkit.catalog.records import (
    BACKUP_KINDS,
    BACKUP_STATUSES,
    COPY_STATUSES,
    RESTORABLE_STATUSES,
    AuditRecord,
    BackupRecord,
    CopyRecord,
    EndpointRecord,
    HoldRecord,
)

if TYPE_CHECKING:
    from drkit.catalog.repository import Catalog


def __getattr__(name: str) -> Any:
    """``Catalog`` on first use: the repository imports SQLAlchemy (0.3 s), which records' users never need."""
    if name == "Catalog":
        from drkit.catalog.repository import Catalog

        return Catalog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKUP_KINDS",
    "BACKUP_STATUSES",
    "COPY_STATUSES",
    "RESTORABLE_STATUSES",
    "AuditRecord",
    "BackupRecord",
    "Catalog",
    "CopyRecord",
    "EndpointRecord",
    "HoldRecord",
]
