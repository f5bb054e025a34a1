"""Retention planning, the reference: the rules of :mod:`drkit.retention`, decided backup by backup, for reading.

:func:`plan` takes what :func:`drkit.retention.plan` takes and returns the same actions (kinds, backups,
tiers; the reasons are worded more plainly). It is written to be checked against the rules in
:mod:`drkit.retention`'s docstring, not to be fast: restore points come straight from the database's chain
model (``ChainModel.plan_restore`` at every instant where a plan can change, ``plan_for_backup`` for a
held backup's own restore), and each backup's copies are decided tier by tier with sets of tier names.
The property tests run both planners over generated catalogs of both engines and require the same actions;
``bench/retention.py`` shows how much slower this one is.

Why "every instant where a plan can change" is enough: a restore plan compares its target only with the
end times of backups, so between two consecutive end times every target plans the same way, and the latest
target of such a stretch is the one a microsecond (datetime's resolution) before the next end time.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from drkit.catalog.records import BACKUP_KINDS, RESTORABLE_STATUSES, BackupRecord, CopyRecord, HoldRecord
from drkit.engines.base import ChainModel
from drkit.errors import RestorePlanError
from drkit.plans import fmt_time
from drkit.retention import ACTION_KINDS, Action, ActionKind, TierLike

_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class Tier:
    """One tier of the policy, as the rules read it."""

    name: str
    keep_days: int
    cutoff: datetime
    """Backups that ended at or before this are past the tier's age window."""
    move: bool
    """A move tier takes a backup over from the tier before it, once that tier lets it go."""
    gated: bool
    """Takes only verified backups (of the verified kinds); a move tier inherits the gate before it."""


@dataclass(frozen=True)
class Needed:
    """Restore points read this backup: the latest target that does (inside the widest window, or the point
    the restore to the latest point reaches), and whether the restore to the latest point reads it."""

    until: datetime
    latest: bool


def _before(now: datetime, days: int) -> datetime:
    try:
        return now - timedelta(days=days)
    except OverflowError:
        return datetime.min.replace(tzinfo=now.tzinfo)


def tiers_of(tiers: Mapping[str, TierLike], now: datetime, verified_only_to: Collection[str],
             move_into: Collection[str]) -> list[Tier]:
    out: list[Tier] = []
    for i, (name, tier) in enumerate(tiers.items()):
        keep = int(tier.keep_days)
        if keep < 0:
            raise ValueError(f"tier {name!r}: keep_days must not be negative, got {keep}")
        move = name in move_into
        if move and i == 0:
            raise ValueError(f"tier {name!r} is first in the policy, so nothing can move into it")
        gated = name in verified_only_to or (move and i > 0 and out[i - 1].gated)
        out.append(Tier(name, keep, _before(now, keep), move, gated))
    return out


def restore_needs(model: ChainModel, database: str, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord],
                  tier_order: Sequence[str], now: datetime, since: datetime) -> dict[str, Needed]:
    """Which backups the restores to the targets in ``[since, now]``, and to the latest point, read."""
    ends = {b.end_time for b in backups if b.end_time is not None and since <= b.end_time <= now}
    targets = {since, now, *ends, *(t - _TICK for t in ends if t - _TICK >= since)}
    until: dict[str, datetime] = {}
    for target in targets:
        try:
            plan = model.plan_restore(database, backups, copies, target=target, now=now, tier_order=tier_order)
        except RestorePlanError:
            continue
        for piece in plan.pieces:
            key = piece.backup.id
            until[key] = max(until.get(key, target), target)
    latest: set[str] = set()
    try:
        plan = model.plan_restore(database, backups, copies, target=None, now=now, tier_order=tier_order)
    except RestorePlanError:
        pass
    else:
        for piece in plan.pieces:
            key = piece.backup.id
            latest.add(key)
            until[key] = max(until.get(key, plan.reaches), plan.reaches)
    return {key: Needed(t, key in latest) for key, t in until.items()}


def held_chain(model: ChainModel, held: BackupRecord, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord],
               tier_order: Sequence[str]) -> list[BackupRecord]:
    """The held backup and what its own restore reads (for a diff of any status, or a restorable backup)."""
    if held.kind != "diff" and held.status not in RESTORABLE_STATUSES:
        return [held]
    try:
        plan = model.plan_for_backup(held, backups, copies, tier_order=tier_order)
    except RestorePlanError:
        return [held]
    return [held, *(p.backup for p in plan.pieces)]


class _Database:
    """The decisions for one database's backups."""

    def __init__(self, tiers: list[Tier], now: datetime, verified_kinds: Collection[str], routine_keeps: bool,
                 needs: Mapping[str, Needed], newest: BackupRecord | None, protected: Mapping[str, str]) -> None:
        self.tiers = tiers
        self.now = now
        self.verified_kinds = verified_kinds
        self.routine_keeps = routine_keeps
        self.needs = needs
        self.newest = newest
        self.protected = protected
        self.readable = {t.name for t in tiers if not t.move}
        self.actions: list[Action] = []

    def add(self, kind: ActionKind, b: BackupRecord, tier_from: str, tier_to: str | None, reason: str) -> None:
        self.actions.append(Action(kind, b.id, b.database, tier_from, tier_to, reason))

    def decide(self, b: BackupRecord, held: set[str], pending: set[str]) -> None:
        """The actions for one backup's copies (``held``: the tiers with a complete copy)."""
        tiers, names = self.tiers, [t.name for t in self.tiers]
        ref = b.end_time or b.finished_at or b.started_at
        need = self.needs.get(b.id)
        until = need.until if need is not None else None
        restorable = b.status in RESTORABLE_STATUSES and b.end_time is not None
        verified = b.status == "verified" or b.kind not in self.verified_kinds
        protected = self.protected.get(b.id)
        newest = b is self.newest

        def in_window(t: Tier) -> bool:
            """Younger than the tier's keep_days, or read by a restore point inside its window."""
            return ref > t.cutoff or (until is not None and until >= t.cutoff)

        # Which tiers want the backup now.
        wanted: list[str] = []
        for i, t in enumerate(tiers):
            if not in_window(t):
                continue
            if t.name in held:
                wanted.append(t.name)  # a tier keeps what it holds while its window covers it
            elif i > 0 and restorable and (verified or not t.gated) and not (t.move and names[i - 1] in wanted):
                wanted.append(t.name)  # a copy tier takes it; a move tier once the tier before lets it go
        if set(wanted) == held:
            self.keeps(b, sorted(held, key=names.index), ref, need, protected)
            return

        # Copies arrive from an earlier tier (never back from a later one). The first arrival may move the
        # copy of the nearest earlier tier that lets it go (not for a backup under legal hold, nor the newest
        # verified full's last readable copy into a move tier); the others are copies: into a move tier from
        # the nearest earlier tier, else from the cheapest.
        arrivals = [n for n in names if n in wanted and n not in held
                    and any(h in held for h in names[:names.index(n)])]
        readable_arrivals = [n for n in arrivals if n in self.readable]
        moved_from: set[str] = set()
        moved_to: set[str] = set()
        for k, name in enumerate(arrivals):
            tier = tiers[names.index(name)]
            earlier = [h for h in names[:names.index(name)] if h in held]
            leaving = [h for h in earlier if h not in wanted] if k == 0 and protected is None else []
            source = leaving[-1] if leaving else None
            if (source is not None and newest and source in self.readable and name not in self.readable
                    and not any(h in self.readable for h in held if h in wanted) and not readable_arrivals):
                source = None
            if source is not None:
                moved_from.add(source)
                moved_to.add(name)
                why = f"{self.why_wanted(tier, ref, until)}{self.pending(name, pending)}"
                self.add("move", b, source, name, f"{source} lets it go ({self.age(ref)} old); {name} takes it "
                                                  f"over{why}")
            else:
                source = earlier[-1] if tier.move else earlier[0]
                self.add("copy", b, source, name,
                         f"copy to {name}{self.why_wanted(tier, ref, until)}{self.pending(name, pending)}")

        # Copies no tier wants are deleted, earliest tier first, unless a rule keeps the last one.
        deleted: set[str] = set()
        for name in names:
            if name not in held or name in wanted or name in moved_from:
                continue
            remaining = (held - deleted - moved_from - {name}) | moved_to
            promise = self.promise(b, held, ref, restorable, verified)
            if protected is not None:
                self.add("keep", b, name, None, protected)
            elif newest and held & self.readable and not remaining & self.readable:
                self.add("keep", b, name, None, "kept: the newest verified full keeps a copy readable without "
                                                "rehydration")
            elif newest and not remaining:
                self.add("keep", b, name, None, "kept: the newest verified full")
            elif not remaining and need is not None:
                self.add("keep", b, name, None, f"kept: the last copy, and {self.read_by(need)}")
            elif not remaining and promise is not None:
                self.add("keep", b, name, None, f"kept: the last copy, and {promise} still promises to keep it")
            else:
                deleted.add(name)
                self.add("delete", b, name, None, f"{name} lets it go ({self.age(ref)} old)")
        self.keeps(b, [n for n in names if n in held and n in wanted], ref, need, protected)

    def keeps(self, b: BackupRecord, kept: list[str], ref: datetime, need: Needed | None,
              protected: str | None) -> None:
        """keep actions for the copies kept past their tier's age window (every kept copy with routine_keeps)."""
        for name in kept:
            tier = next(t for t in self.tiers if t.name == name)
            if protected is not None:
                self.add("keep", b, name, None, protected)
            elif ref <= tier.cutoff:
                assert need is not None
                self.add("keep", b, name, None, f"kept: {self.read_by(need)}, inside {name}'s window")
            elif self.routine_keeps:
                self.add("keep", b, name, None, f"{name} copy is {self.age(ref)} old, inside its window")

    def promise(self, b: BackupRecord, held: set[str], ref: datetime, restorable: bool, verified: bool) -> str | None:
        """A tier that still promises to keep ``b``: it is younger than the tier's keep_days, and the tier
        holds it or may take it."""
        for t in self.tiers:
            if ref > t.cutoff and (t.name in held or (restorable and (verified or not t.gated))):
                return t.name
        return None

    def why_wanted(self, tier: Tier, ref: datetime, until: datetime | None) -> str:
        if ref > tier.cutoff:
            return f": {tier.name} keeps backups for {tier.keep_days} d"
        return f": restore points up to {fmt_time(until)} inside {tier.name}'s window read it"

    def read_by(self, need: Needed) -> str:
        if not need.latest:
            return f"restore points up to {fmt_time(need.until)} read it"
        return "the restore to the latest point reads it"

    def age(self, ref: datetime) -> str:
        return f"{max(0.0, (self.now - ref).total_seconds()) / 86400:.1f} d"

    @staticmethod
    def pending(name: str, pending: set[str]) -> str:
        return "; a previous copy was left pending" if name in pending else ""


def plan(
    backups: Iterable[BackupRecord],
    copies: Iterable[CopyRecord],
    holds: Iterable[HoldRecord],
    tiers: Mapping[str, TierLike],
    now: datetime,
    *,
    verified_only_to: Collection[str] = frozenset({"blob"}),
    move_into: Collection[str] = frozenset({"archive"}),
    verified_kinds: Collection[str] = BACKUP_KINDS,
    routine_keeps: bool = False,
    chains: Callable[[str], ChainModel],
) -> list[Action]:
    """The retention actions, as :func:`drkit.retention.plan` (same arguments, same actions)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be a timezone-aware datetime, got naive {now.isoformat()}")
    policy = tiers_of(tiers, now, verified_only_to, move_into)
    if not policy:
        return []
    names = [t.name for t in policy]
    since = min(t.cutoff for t in policy)
    copies = list(copies)
    held: dict[str, set[str]] = {}
    pending: dict[str, set[str]] = {}
    for c in copies:
        if c.tier in names and c.status == "complete":
            held.setdefault(c.backup_id, set()).add(c.tier)
        elif c.tier in names and c.status == "pending":
            pending.setdefault(c.backup_id, set()).add(c.tier)
    by_db: dict[str, list[BackupRecord]] = {}
    for b in backups:
        by_db.setdefault(b.database, []).append(b)
    active = [h for h in holds if h.active]
    actions: list[Action] = []
    for database, mine in by_db.items():
        model = chains(database)
        needs = restore_needs(model, database, mine, copies, names, now, since)
        verified_fulls = [b for b in mine if b.kind == "full" and b.status == "verified" and b.end_time is not None
                          and held.get(b.id)]
        newest = None
        for b in verified_fulls:  # the newest; the first in catalog order among equals
            if newest is None or (b.end_time is not None and newest.end_time is not None
                                  and b.end_time > newest.end_time):
                newest = b
        by_id = {b.id: b for b in mine}
        protected: dict[str, str] = {}
        for h in active:
            held_backup = by_id.get(h.backup_id)
            if h.database != database or held_backup is None:
                continue
            why = f"by {h.created_by}: {h.reason}"
            protected.setdefault(h.backup_id, f"kept: legal hold {why}")
            for piece in held_chain(model, held_backup, mine, copies, names):
                protected.setdefault(piece.id, f"kept: restoring {h.backup_id} needs it, and that backup is under "
                                               f"legal hold {why}")
        db = _Database(policy, now, verified_kinds, routine_keeps, needs, newest, protected)
        for b in mine:
            if b.status != "running" and held.get(b.id):
                db.decide(b, held[b.id], pending.get(b.id, set()))
        actions.extend(db.actions)
    return [a for kind in ACTION_KINDS for a in actions if a.kind == kind]
