"""Per-database status: newest backup of each kind, its age, and the worst-case data-loss window now.

The data-loss window (RPO) is the time since the newest point a restore can
reach: the end of the newest log backup joined to a base, or the newest base.
Beside it, the last ``drkit catalog check``: when, and whether it left findings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from drkit.catalog.records import RESTORABLE_STATUSES, AuditRecord, BackupRecord, BackupTally, CopyRecord
from drkit.engines.base import ChainModel
from drkit.errors import RestorePlanError
from drkit.plans import RestorePlan

if TYPE_CHECKING:
    from drkit.catalog.repository import Catalog

KINDS = ("full", "diff", "log")

CHAIN_MARGIN = timedelta(days=1)
"""How long before the start of the newest restorable full :func:`latest_chain` reads the catalog from: the log
that holds the full's first WAL (or its last LSN) ends after the full started, and a day covers any skew."""


@dataclass(frozen=True)
class DatabaseStatus:
    database: str
    newest: dict[str, BackupRecord | None]
    restorable_until: datetime | None
    rpo_seconds: float | None
    corrupt: int
    failed: int
    copies: int = 0  # copies of the newest restorable chain: the fewest any of its pieces has
    stores: int = 0  # distinct stores (locations) holding every piece of it

    @property
    def rule_321(self) -> str:
        """3-2-1: at least 3 copies on at least 2 stores (one of them offsite); the numbers say how far."""
        ok = self.copies >= 3 and self.stores >= 2
        return f"{'ok' if ok else 'short'}: {self.copies} copies on {self.stores} store(s)"

    def as_json(self, now: datetime) -> dict[str, object]:
        def one(b: BackupRecord | None) -> dict[str, object] | None:
            if b is None:
                return None
            end = b.end_time or b.finished_at or b.started_at
            return {"id": b.id, "status": b.status, "end_time": end.isoformat(),
                    "age_seconds": round((now - end).total_seconds(), 1), "stored_bytes": b.stored_bytes}
        return {
            "database": self.database,
            "newest": {k: one(v) for k, v in self.newest.items()},
            "restorable_until": self.restorable_until.isoformat() if self.restorable_until else None,
            "rpo_seconds": None if self.rpo_seconds is None else round(self.rpo_seconds, 1),
            "corrupt": self.corrupt, "failed": self.failed,
            "chain_copies": self.copies, "chain_stores": self.stores,
        }


def database_status(database: str, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord], *,
                    now: datetime, tier_order: Sequence[str], chain: ChainModel,
                    locations: Mapping[str, str] | None = None) -> DatabaseStatus:
    """``chain`` is the database's engine's chain model; ``locations`` maps a tier to where its store is (two
    tiers in one container are one store)."""
    mine = [b for b in backups if b.database == database]
    newest: dict[str, BackupRecord | None] = {}
    for kind in KINDS:
        ok = [b for b in mine if b.kind == kind and b.status in RESTORABLE_STATUSES]
        newest[kind] = max(ok, key=lambda b: b.end_time or b.started_at) if ok else None
    try:
        plan: RestorePlan | None = chain.plan_restore(database, mine, copies, target=None, now=now,
                                                      tier_order=tier_order)
    except RestorePlanError:
        plan = None
    reaches, n_copies, n_stores = _chain_numbers(plan, copies, tier_order, locations)
    return DatabaseStatus(
        database=database, newest=newest, restorable_until=reaches,
        rpo_seconds=(now - reaches).total_seconds() if reaches else None,
        corrupt=sum(1 for b in mine if b.status == "corrupt"),
        failed=sum(1 for b in mine if b.status == "failed"),
        copies=n_copies, stores=n_stores,
    )


def _chain_numbers(plan: RestorePlan | None, copies: Sequence[CopyRecord], tier_order: Sequence[str],
                   locations: Mapping[str, str] | None) -> tuple[datetime | None, int, int]:
    """Where ``plan`` reaches, and the copies and stores of its pieces (the fewest any piece has)."""
    if plan is None:
        return None, 0, 0
    where = locations or {t: t for t in tier_order}
    held: dict[str, list[CopyRecord]] = {p.backup.id: [] for p in plan.pieces}
    for c in copies:  # one pass over the copies, not one per piece (a year of logs is many copies)
        if c.backup_id in held and c.status == "complete" and c.tier in where:
            held[c.backup_id].append(c)
    per_piece = [held[p.backup.id] for p in plan.pieces]
    return (plan.reaches, min(len(cs) for cs in per_piece),
            min(len({where[c.tier] for c in cs}) for cs in per_piece))


# -- the same, asked of the catalog: only the records these numbers depend on ----------------------------


@dataclass(frozen=True)
class LatestChain:
    """The plan to the latest point (None: none) and the records it was planned from."""

    plan: RestorePlan | None
    backups: list[BackupRecord]
    copies: list[CopyRecord]


def latest_chain(catalog: Catalog, database: str, tallies: Sequence[BackupTally], *, now: datetime,
                 tier_order: Sequence[str], chain: ChainModel) -> LatestChain:
    """The latest plan from the records of the newest restorable chain (:meth:`Catalog.chain_scope`), kept
    only when it reaches the end of the newest restorable backup there is: then no older chain can reach
    further. Otherwise (a WAL gap, no full with a copy, a backup without a copy yet) planned from every record
    of the database, as :func:`database_status` does."""
    ceiling = max((t.newest_end for t in tallies if t.status in RESTORABLE_STATUSES and t.newest_end is not None),
                  default=None)
    scope = catalog.chain_scope(database, tier_order, CHAIN_MARGIN)
    if scope is not None and ceiling is not None:
        plan = _plan(chain, database, *scope, now=now, tier_order=tier_order)
        if plan is not None and plan.reaches == ceiling:
            return LatestChain(plan, *scope)
    backups, copies = catalog.list_backups(database), catalog.all_copies(database)
    return LatestChain(_plan(chain, database, backups, copies, now=now, tier_order=tier_order), backups, copies)


def _plan(chain: ChainModel, database: str, backups: list[BackupRecord], copies: list[CopyRecord], *,
          now: datetime, tier_order: Sequence[str]) -> RestorePlan | None:
    try:
        return chain.plan_restore(database, backups, copies, target=None, now=now, tier_order=tier_order)
    except RestorePlanError:
        return None


def catalog_status(catalog: Catalog, database: str, *, now: datetime, tier_order: Sequence[str],
                   chain: ChainModel, locations: Mapping[str, str] | None = None,
                   tallies: Sequence[BackupTally] | None = None) -> tuple[DatabaseStatus, LatestChain]:
    """:func:`database_status` (the same result) from what the catalog answers with aggregates and the newest
    chain's records, not from every record; the chain comes back too (the metrics estimate the RTO from it)."""
    if tallies is None:
        tallies = catalog.backup_tallies(database)
    latest = latest_chain(catalog, database, tallies, now=now, tier_order=tier_order, chain=chain)
    reaches, n_copies, n_stores = _chain_numbers(latest.plan, latest.copies, tier_order, locations)
    st = DatabaseStatus(
        database=database, newest={k: catalog.newest_backup(database, k) for k in KINDS},
        restorable_until=reaches, rpo_seconds=(now - reaches).total_seconds() if reaches else None,
        corrupt=sum(t.count for t in tallies if t.status == "corrupt"),
        failed=sum(t.count for t in tallies if t.status == "failed"),
        copies=n_copies, stores=n_stores)
    return st, latest


@dataclass(frozen=True)
class CheckStatus:
    """The last catalog check as it concerns one database (its findings plus those of no database)."""

    at: datetime | None
    findings: int
    deep: bool = False

    def text(self, now: datetime, age: Callable[[float], str]) -> str:
        if self.at is None:
            return "never"
        ago = f"{age((now - self.at).total_seconds())} ago"
        return f"clean, {ago}" if not self.findings else f"{self.findings} finding(s), {ago}"

    def as_json(self) -> dict[str, object]:
        return {"at": self.at.isoformat() if self.at else None, "findings": self.findings,
                "clean": self.at is not None and not self.findings, "deep": self.deep}


def check_status(event: AuditRecord | None, database: str) -> CheckStatus:
    """From the newest ``catalog.check`` audit event (None: never checked)."""
    if event is None:
        return CheckStatus(at=None, findings=0)
    by_db = event.detail.get("by_database") or {}
    mine = int(by_db.get(database, 0)) + int(by_db.get("", 0))
    return CheckStatus(at=event.at, findings=mine, deep=bool(event.detail.get("deep")))
