"""Retention planning: which copies to make, move, delete or keep, each with its reason (pure).

:func:`plan` is a function of catalog records (backups, their copies, legal holds), the tiers of the policy
(in order: ``local``, ``blob``, ``archive``) and ``now``. It does no I/O; the ``retention_sweep`` flow applies
its actions (copies and moves first, then deletes) and ``drkit retention plan`` prints them.

The life of a backup (README.md, "Tiers, retention and legal holds"), with ages measured from the backup's
``end_time`` (else ``finished_at``):

* it is born in the first tier (``local``) and kept there while younger than ``local.keep_days``;
* it is copied to each later *copy tier* (``blob``) while younger than that tier's ``keep_days``, but to a
  tier in ``verified_only_to`` only once its status is ``verified`` (for the kinds in ``verified_kinds``:
  all, by default);
* a *move tier* (``move_into``: ``archive``, Azure's Archive access tier) takes it over from the tier before
  it once that tier lets it go, and keeps it while younger than its own ``keep_days``; a move tier inherits
  the verification gate of the tier it takes over from;
* a copy that no tier wants any more is deleted, unless one of the rules below keeps it.

Restore points are chain-aware, as the database's engine plans them (its chain model's ``plan_restore``,
:class:`drkit.engines.base.ChainModel`): a target time needs the newest full at or before it, a diff on
that full at or before it, and the unbroken run of log backups from that base to the first log that
reaches the target (PostgreSQL joins them WAL segment by segment, SQL Server by LSN). This module knows no
engine: it asks the chain model's index (:meth:`ChainModel.index`) which backups the targets in a window
read. A tier with a window of ``keep_days`` keeps every copy it holds that a target inside
``[now - keep_days, now]`` needs, however old the copy is itself ("kept: diff X on this full is inside
blob's 30-day window"). And whatever the tiers want, :func:`plan` never deletes the last copy (nor moves it
out of the policy's tiers) of:

(a) a piece that any target inside any tier's window needs: every target in ``[now - max keep_days, now]``
    that plans before the actions still plans after them, to the same pieces;
(b) the newest verified full of a database, ever; and it keeps one copy outside the move tiers
    (readable without rehydration) if it has one. Likewise the pieces a restore to the latest point
    reads (``plan_restore(target=None)``), however old: a database never ends up with nothing to restore;
(c) anything under an active legal hold, nor any piece the held backup's own restore needs (what the chain
    model's ``plan_for_backup`` reads for it, when that plans: a diff's full; a log's chain; checked for a
    diff of any status and for a restorable backup): no copy of them is deleted or moved away (a move
    becomes a copy);
(d) a backup that some tier still promises to keep: one younger than a tier's ``keep_days`` that the tier
    holds or may take (restorable, and verified if the tier is gated).

Copies in the archive tier count as available for (a) and (d): restoring from them takes a rehydration,
which the restore flow starts and waits for. Copies in tiers outside the policy are never touched and never
counted; ``pending`` copies count as absent (a copy to that tier is planned again); ``running`` backups are
left alone.

Only copies a tier keeps beyond what its age window alone would give (by a restore point, a hold, rule (b)
or the last-copy rules) get a ``keep`` action; pass ``routine_keeps=True`` to list every kept copy.
Planning again after all actions were applied yields no copy, move or delete; after a crash half-way,
planning again yields what is left to reach the same state.

:func:`plan` is the fast planner (a catalog of millions of backups in seconds, ``bench/retention.py``);
:func:`drkit.retention_reference.plan` decides the same rules backup by backup, for reading, and the
property tests hold the two to the same actions on both engines.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from drkit.catalog.records import BACKUP_KINDS, RESTORABLE_STATUSES, BackupRecord, CopyRecord, HoldRecord
from drkit.engines.base import ChainModel
from drkit.plans import Need
from drkit.plans import fmt_time as _fmt

ActionKind = Literal["copy", "move", "delete", "keep"]
ACTION_KINDS: tuple[ActionKind, ...] = ("copy", "move", "delete", "keep")
"""Also the order :func:`plan` returns actions in, and the order to apply them in."""

_RESTORABLE = frozenset(RESTORABLE_STATUSES)


class TierLike(Protocol):
    """What the planner reads of a tier: how long it keeps a backup (``drkit.config.TierConfig`` is one)."""

    @property
    def keep_days(self) -> int: ...


@dataclass(frozen=True)
class TierSpec:
    """A tier for :func:`plan` when there is no policy object at hand (tests, rehearsals)."""

    keep_days: int


@dataclass(frozen=True)
class Action:
    """One step of a retention plan.

    ``copy``: put a copy of the backup into ``tier_to``, read from ``tier_from``. ``move``: the same, then
    delete the copy in ``tier_from`` (on Azure, between access tiers of one container: set the tier).
    ``delete``: delete the copy in ``tier_from``. ``keep``: leave the copy in ``tier_from`` where it is.
    """

    kind: ActionKind
    backup_id: str
    database: str
    tier_from: str
    tier_to: str | None
    reason: str

    @property
    def tier(self) -> str:
        """The tier the action changes or keeps: the destination of a copy or move, else ``tier_from``."""
        return self.tier_to if self.tier_to is not None else self.tier_from

    @property
    def changes(self) -> bool:
        """True for copy, move and delete."""
        return self.kind != "keep"


# -- the planner -----------------------------------------------------------------------------------------


def _days(keep_days: int) -> str:
    return f"{keep_days} d"


def _age(td: timedelta) -> str:
    seconds = max(0.0, td.total_seconds())
    days = seconds / 86400
    if days >= 1:
        return f"{days:.1f} d"
    return f"{seconds / 3600:.1f} h"


def _before(now: datetime, days: int) -> datetime:
    """``now - days``, or the earliest datetime for windows reaching before year 1."""
    try:
        return now - timedelta(days=days)
    except OverflowError:
        return datetime.min.replace(tzinfo=now.tzinfo)


class _Rules:
    """The tiers in order, with the masks the per-backup decisions use."""

    def __init__(self, tiers: Mapping[str, TierLike], now: datetime, verified_only_to: Collection[str],
                 move_into: Collection[str], verified_kinds: Collection[str] = BACKUP_KINDS) -> None:
        self.names = list(tiers)
        self.verified_kinds = frozenset(verified_kinds)
        self.keep = [int(tiers[t].keep_days) for t in self.names]
        for name, keep in zip(self.names, self.keep, strict=True):
            if keep < 0:
                raise ValueError(f"tier {name!r}: keep_days must not be negative, got {keep}")
        if self.names and self.names[0] in move_into:
            raise ValueError(f"tier {self.names[0]!r} is first in the policy, so nothing can move into it")
        self.index = {t: i for i, t in enumerate(self.names)}
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError(f"now must be a timezone-aware datetime, got naive {now.isoformat()}")
        self.cutoff = [_before(now, k) for k in self.keep]
        self.move = [t in move_into for t in self.names]
        self.gated: list[bool] = []
        for i, t in enumerate(self.names):
            self.gated.append(t in verified_only_to or (self.move[i] and i > 0 and self.gated[i - 1]))
        self.n = len(self.names)
        # for the per-backup fast path: (bit, cutoff, mode, gated); mode 0: the first tier (takes nothing),
        # 1: a copy tier, 2: a move tier
        self.tiers_for_want = [(1 << i, self.cutoff[i], 0 if i == 0 else 2 if self.move[i] else 1, self.gated[i])
                               for i in range(self.n)]
        # per set of tiers (a bit mask): the latest of their cutoffs; a copy older is past some tier's window
        self.latest_cutoff = [max((self.cutoff[i] for i in range(self.n) if mask >> i & 1), default=now)
                              for mask in range(1 << self.n)]
        # per set of tiers: the tiers after the first of them, which could take a copy from it
        self.later = [0 if not mask else ((1 << self.n) - 1) & ~((mask & -mask) * 2 - 1) for mask in range(1 << self.n)]
        self.readable = sum(1 << i for i in range(len(self.names)) if not self.move[i])
        self.oldest = min(self.cutoff) if self.cutoff else now
        # tiers by window width, narrowest first: to say which window a restore point falls in
        self.by_width = sorted(range(len(self.names)), key=lambda i: (self.keep[i], i))

    def window_of(self, t: datetime) -> int:
        """The narrowest tier whose window contains ``t`` (``t`` must be inside some window)."""
        return next((i for i in self.by_width if t >= self.cutoff[i]), self.by_width[-1])

    def tiers(self, mask: int) -> str:
        return " and ".join(t for i, t in enumerate(self.names) if mask >> i & 1)


class _Planner:
    def __init__(self, rules: _Rules, now: datetime, routine_keeps: bool) -> None:
        self.r = rules
        self.now = now
        self.routine = routine_keeps
        self.out: dict[ActionKind, list[Action]] = {k: [] for k in ACTION_KINDS}

    def add(self, kind: ActionKind, b: BackupRecord, tier_from: int, tier_to: int | None, reason: str) -> None:
        names = self.r.names
        self.out[kind].append(Action(kind, b.id, b.database, names[tier_from],
                                     None if tier_to is None else names[tier_to], reason))

    def database(self, backups: Sequence[BackupRecord], model: ChainModel, held_by: Mapping[str, int],
                 pending_by: Mapping[str, int], holds: Mapping[str, str]) -> None:
        r = self.r
        held_get = held_by.get
        chains = model.index(backups, held_get)
        newest = chains.newest_verified_full
        needs = chains.needs(self.now, r.oldest)
        # (c): a held backup protects its own restore chain
        protect: dict[str, str] = {}
        if holds:
            by_id = {b.id: b for b in backups}
            for backup_id, why in holds.items():
                held_backup = by_id.get(backup_id)
                if held_backup is None:
                    continue
                protect.setdefault(backup_id, f"kept: legal hold {why}")
                if held_backup.kind == "diff" or held_backup.status in _RESTORABLE:
                    for piece in chains.chain_of(held_backup, by_id):
                        protect.setdefault(piece.id, f"kept: restoring {backup_id} needs it, and that backup is "
                                                     f"under legal hold {why}")
        # The fast path, inline: most backups sit where the policy wants them and get no action.
        needs_get, protect_get = needs.get, protect.get
        tiers = r.tiers_for_want
        gated_kinds = r.verified_kinds
        latest_cutoff = r.latest_cutoff
        routine = self.routine
        later = r.later
        for b in backups:
            held = held_get(b.id)
            if not held:
                continue
            status = b.status
            if status == "running":
                continue
            ref = b.end_time or b.finished_at or b.started_at
            if not later[held] and ref > latest_cutoff[held] and not routine and not (protect and b.id in protect):
                continue  # every copy inside its tier's window, and no later tier to take it: the bulk
            need = needs_get(b.id)
            until = None if need is None else need[0]
            eligible = status in _RESTORABLE and b.end_time is not None
            verified = status == "verified" or b.kind not in gated_kinds
            want = 0
            for bit, cut, mode, gated in tiers:
                if ref > cut or (until is not None and until >= cut):
                    if held & bit:
                        want |= bit
                    elif mode and eligible and (verified or not gated) and (mode == 1 or not want & bit >> 1):
                        want |= bit  # mode 1: a copy tier takes it; 2: a move tier, once the one before lets go
            protected = protect_get(b.id) if protect else None
            if want == held:
                if protected is not None or routine or (until is not None and ref <= latest_cutoff[held]):
                    self._keeps(b, held, need, protected, ref)
                continue
            self.backup(b, held, want, pending_by.get(b.id, 0), need, protected, b is newest)

    # -- one backup --------------------------------------------------------------------------------------

    def backup(self, b: BackupRecord, held: int, want: int, pending: int, need: Need | None,
               protected: str | None, newest: bool) -> None:
        """The actions for one backup whose copies (``held``) are not the ones the tiers want (``want``)."""
        r = self.r
        n = r.n
        ref = b.end_time or b.finished_at or b.started_at
        eligible = b.status in _RESTORABLE and b.end_time is not None
        verified = b.status == "verified" or b.kind not in r.verified_kinds
        acquire, release = want & ~held, held & ~want
        # Acquisitions, each from a copy in an earlier tier (never back from a later one). Only the lowest
        # one may move, from the nearest earlier tier that lets the backup go; later ones copy (the flow runs
        # copies before moves; if a copy fails, the next sweep copies it from the moved copy, which is
        # earlier). Held backups never move; the newest verified full moves into a move tier only while a
        # copy outside the move tiers stays or arrives.
        targets = [i for i in range(n) if acquire >> i & 1 and held & ((1 << i) - 1)]
        readable_arrivals = sum(1 << i for i in targets) & r.readable
        gone = arrives = 0
        for k, i in enumerate(targets):
            below = held & ((1 << i) - 1)
            leaving = release & below if k == 0 and protected is None else 0
            src = leaving.bit_length() - 1 if leaving else -1
            if src >= 0 and newest and r.readable >> src & 1 and not r.readable >> i & 1 \
                    and not held & want & r.readable and not readable_arrivals:
                src = -1  # (b): the newest verified full stays readable; copy instead
            if src >= 0:
                gone |= 1 << src
                arrives |= 1 << i
                self.add("move", b, src, i, self._move_reason(b, src, i, ref, need, pending))
            else:
                # into a move tier, from the nearest earlier tier (Azure: a server-side copy or a tier change);
                # otherwise from the cheapest tier to read
                src = below.bit_length() - 1 if r.move[i] else (below & -below).bit_length() - 1
                self.add("copy", b, src, i, self._copy_reason(b, i, ref, need, pending))
        # Releases: delete unless a rule keeps the copy; earlier tiers first, so the later copy survives.
        deleted = 0
        needed = need is not None and (need.until >= r.oldest or need.latest)
        for i in range(n):
            bit = 1 << i
            if not release & bit or gone & bit:
                continue
            existing = held & ~deleted & ~bit & ~gone
            remaining = existing | arrives
            if protected is not None:
                self.add("keep", b, i, None, protected)
            elif newest and held & r.readable and not remaining & r.readable:
                self.add("keep", b, i, None, f"kept: newest verified full of {b.database}; its last copy "
                                             "readable without rehydration")
            elif newest and not remaining:
                self.add("keep", b, i, None, f"kept: newest verified full of {b.database}")
            elif not remaining and needed:
                assert need is not None
                self.add("keep", b, i, None, self._last_copy_reason(b, need))
            elif not remaining and (promise := self._promise(b, held, ref, eligible, verified)) is not None:
                self.add("keep", b, i, None, promise)
            else:
                deleted |= bit
                self.add("delete", b, i, None, self._delete_reason(b, i, ref, existing, arrives))
        self._keeps(b, held & want, need, protected, ref)

    # -- reasons -----------------------------------------------------------------------------------------

    def _needed(self, b: BackupRecord, need: Need, i: int) -> str:
        """Why restore points inside tier ``i``'s window need ``b``."""
        base, window = need.base, f"inside {self.r.names[i]}'s {self.r.keep[i]}-day window"
        if b.kind == "full" and base.kind == "diff" and base.id != b.id:
            return f"diff {base.id} on this full is {window}"
        if base.id == b.id:
            return f"restore points up to {_fmt(need.until)} {window} restore from this {b.kind}"
        if b.kind == "log":
            return f"restore points up to {_fmt(need.until)} {window} replay this log (from {base.kind} {base.id})"
        return f"restore points up to {_fmt(need.until)} {window} need it ({base.kind} {base.id})"

    def _keeps(self, b: BackupRecord, kept: int, need: Need | None, protected: str | None, ref: datetime) -> None:
        """keep actions for copies kept past their tier's age window (or all, with ``routine_keeps``)."""
        r = self.r
        for i in range(len(r.names)):
            if not kept >> i & 1:
                continue
            if protected is not None:
                self.add("keep", b, i, None, protected)
            elif ref <= r.cutoff[i]:
                assert need is not None and need.until >= r.cutoff[i]  # the only reason a tier wants it
                self.add("keep", b, i, None, f"kept: {self._needed(b, need, i)}")
            elif self.routine:
                self.add("keep", b, i, None, f"{r.names[i]} copy is {_age(self.now - ref)} old, inside its "
                                             f"{r.keep[i]}-day window")

    def _gate_note(self, b: BackupRecord) -> str:
        r = self.r
        if b.status == "verified" or b.status not in _RESTORABLE or b.kind not in r.verified_kinds:
            return ""
        gated = [t for i, t in enumerate(r.names) if r.gated[i] and not r.move[i]]
        return f" (not verified, so it cannot go to {' or '.join(gated)})" if gated else ""

    def _last_copy_reason(self, b: BackupRecord, need: Need) -> str:
        if need.until < self.r.oldest:
            return (f"kept: the only copy left; the latest restore point of {b.database} "
                    f"({_fmt(need.until)}) restores from it{self._gate_note(b)}")
        w = self.r.window_of(need.until)
        return f"kept: the only copy left; {self._needed(b, need, w)}{self._gate_note(b)}"

    def _promise(self, b: BackupRecord, held: int, ref: datetime, eligible: bool, verified: bool) -> str | None:
        r = self.r
        for i in range(len(r.names)):
            if ref > r.cutoff[i] and (held >> i & 1 or (eligible and (verified or not r.gated[i]))):
                return (f"kept: the only copy left, and {r.names[i]} still promises to keep it "
                        f"({_age(self.now - ref)} old, {r.keep[i]}-day window){self._gate_note(b)}")
        return None

    def _copy_reason(self, b: BackupRecord, i: int, ref: datetime, need: Need | None, pending: int) -> str:
        r = self.r
        why = "verified; " if r.gated[i] and b.status == "verified" else ""
        if ref > r.cutoff[i]:
            why += f"{r.names[i]} keeps backups for {_days(r.keep[i])} (this one is {_age(self.now - ref)} old)"
        else:
            assert need is not None
            why += self._needed(b, need, i)
        if pending >> i & 1:
            why += "; a previous copy was left pending"
        return f"copy to {r.names[i]}: {why}"

    def _move_reason(self, b: BackupRecord, src: int, i: int, ref: datetime, need: Need | None,
                     pending: int) -> str:
        r = self.r
        age = _age(self.now - ref)
        why = f"{r.names[src]} copy older than {_days(r.keep[src])} ({age})"
        if ref > r.cutoff[i]:
            why += f"; {r.names[i]} keeps it until {_days(r.keep[i])}"
        else:
            assert need is not None
            why += f"; {self._needed(b, need, i)}"
        if r.gated[i] and not r.move[i] and b.status == "verified":
            why += " (verified)"
        if pending >> i & 1:
            why += "; a previous copy was left pending"
        return why

    def _delete_reason(self, b: BackupRecord, i: int, ref: datetime, existing: int, arrives: int) -> str:
        r = self.r
        what = f"{r.names[i]} copy" if b.status in _RESTORABLE else f"{r.names[i]} copy of a {b.status} backup"
        why = f"{what} older than {_days(r.keep[i])} ({_age(self.now - ref)})"
        if existing:
            one = existing & (existing - 1) == 0
            return why + f" and {r.tiers(existing)} {'holds a complete copy' if one else 'hold complete copies'}"
        if arrives:
            return why + f" and the copy moving to {r.tiers(arrives)} stays"
        return why + "; no restore point inside any tier's window needs it and no tier keeps it any longer"


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
    """The retention actions for the catalog at ``now``: copies, then moves, then deletes, then keeps.

    ``tiers`` is the policy's ``tiers`` mapping in order (cheapest to read first; the first is where backups
    are written). ``verified_only_to`` names the tiers that take only ``verified`` backups, of the kinds in
    ``verified_kinds`` (other kinds go there once restorable, e.g. ``{"full"}`` when verification only ever
    marks fulls); ``move_into`` the tiers that take a backup over from the tier before them when that one
    lets it go (Azure's Archive access tier). ``holds`` may include removed holds; only active ones count.
    ``chains`` maps a database name to its engine's chain model (``Runtime.chain_model``): restore points
    are its answers. See the module docstring for the rules.
    """
    rules = _Rules(tiers, now, verified_only_to, move_into, verified_kinds)
    if not rules.names:
        return []
    held_by: dict[str, int] = {}
    pending_by: dict[str, int] = {}
    index = rules.index
    held_get = held_by.get
    for c in copies:
        i = index.get(c.tier)
        if i is None:
            continue
        if c.status == "complete":
            held_by[c.backup_id] = held_get(c.backup_id, 0) | 1 << i
        elif c.status == "pending":
            pending_by[c.backup_id] = pending_by.get(c.backup_id, 0) | 1 << i
    hold_why: dict[str, dict[str, str]] = {}  # database -> backup id -> "by alice: INC-42"
    for h in holds:
        if h.active:
            hold_why.setdefault(h.database, {}).setdefault(h.backup_id, f"by {h.created_by}: {h.reason}")
    by_db: dict[str, list[BackupRecord]] = {}
    for b in backups:
        group = by_db.get(b.database)
        if group is None:
            group = by_db[b.database] = []
        group.append(b)
    planner = _Planner(rules, now, routine_keeps)
    for database, group in by_db.items():
        planner.database(group, chains(database), held_by, pending_by, hold_why.get(database, {}))
    return [a for kind in ACTION_KINDS for a in planner.out[kind]]
