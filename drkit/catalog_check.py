"""``drkit catalog check``: does the catalog tell the truth about the stores? Findings, then repairs.

Like pgBackRest's ``verify``, but for the catalog as a whole. :func:`plan` is pure (a function of catalog
records, what each store holds, and ``now``); :func:`run_check` lists the stores, reads them for
``--deep``, plans, and with ``repair`` carries out each finding's repair. What is checked:

* **every complete copy** exists in its tier with the recorded size, with its ``manifest.drk`` beside it
  (``deep``: and its bytes hash to the recorded SHA-256, read without the key). A missing object is a
  ``missing`` finding, a wrong size or hash a ``corrupt`` one; the repair marks the copy so, and restores
  and retention then plan around it. A missing ``backup.json`` is rewritten.
* **stale ``running`` rows**: a backup whose process is provably gone (it ran on this host, see
  :mod:`drkit.liveness`), or that has been running for longer than :data:`STALE_AFTER` when its process
  cannot be checked from here. The repair fails the row ("interrupted: …") and removes its objects and
  partial writes. (The next backup of the database does the same for every running row, since it holds
  the database's lock.)
* **orphans**: objects under ``<database>/<backup id>/`` that no record points at (a failed backup, a copy
  marked deleted whose objects stayed, a backup the catalog does not know) and ``.part`` files of
  interrupted writes (filesystem tiers; Azure discards uncommitted blocks itself after a week). Only those
  older than :data:`GRACE` are removed, so a write in flight is never touched. A ``backup.json`` of a
  backup the catalog does not know is never removed: it is reported as ``unrecorded`` (``drkit catalog
  rebuild --from TIER`` imports it).
* **lost restore points**: a restorable backup whose last complete copies this check found missing or
  corrupt; the finding says which database and what can no longer be restored. Nothing can repair that
  (take a new full); once ``--repair`` has marked the copies, the loss is on record and not reported again.

A store that cannot be listed is an ``unreachable`` finding, and nothing about its copies is concluded.
Every repair is audited (``catalog.repair``; also ``copy.missing`` / ``copy.corrupt`` for a marked copy,
``backup.status`` for a failed row); every check ends with a ``catalog.check`` audit event (found,
repaired and remaining findings per database), which ``drkit status`` shows.
"""

from __future__ import annotations

import posixpath
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from drkit.backup import abandon
from drkit.catalog.records import RESTORABLE_STATUSES, BackupRecord, CopyRecord
from drkit.copies import record_damage
from drkit.engines import chain_for
from drkit.engines.base import ChainModel
from drkit.errors import DrkitError, IntegrityError, ObjectNotFoundError, RestorePlanError
from drkit.liveness import describe as describe_process
from drkit.liveness import gone as process_gone
from drkit.pipeline import verify_stored
from drkit.runtime import Runtime
from drkit.storage import FilesystemStore
from drkit.tiers.naming import DATA_OBJECT, DESCRIPTOR_OBJECT, MANIFEST_OBJECT, object_key, tier_location
from drkit.tiers.rebuild import write_descriptor

STALE_AFTER = timedelta(hours=24)
"""A ``running`` row whose process cannot be checked from here is stale after this long."""

GRACE = timedelta(hours=1)
"""Orphan objects and partial writes younger than this are left alone (a write may be in flight)."""

ACTOR = "drkit-catalog-check"

FindingKind = Literal["missing", "corrupt", "descriptor", "stale", "orphan", "partial", "unrecorded", "lost",
                      "unreachable", "unreadable"]
RepairKind = Literal["mark-copy", "fail-backup", "remove-objects", "remove-partial", "write-descriptor"]
_LIVE_COPY = frozenset({"complete", "pending", "missing", "corrupt"})  # a row that still claims its objects


# -- what the stores hold ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: datetime | None  # None: the store cannot say (then it is never old enough to remove)
    archived: bool = False  # in Azure's Archive tier: cannot be read without rehydration


@dataclass(frozen=True)
class Inventory:
    """What one store location holds, listed once for every tier that shares it (blob and archive)."""

    tiers: tuple[str, ...]
    objects: Mapping[str, StoredObject] = field(default_factory=dict)
    partials: tuple[StoredObject, ...] = ()
    error: str | None = None  # listing failed: nothing is concluded about this location


@dataclass(frozen=True)
class Deep:
    """The result of reading one copy for ``--deep``: ``corrupt`` (hash or name mismatch) or ``unreadable``."""

    verdict: Literal["corrupt", "unreadable"]
    detail: str


# -- findings and repairs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Repair:
    kind: RepairKind
    backup_id: str | None = None
    tier: str | None = None
    status: str | None = None  # mark-copy: the copy's new status
    reason: str = ""  # fail-backup: the row's error
    keys: tuple[str, ...] = ()  # remove-objects / remove-partial

    def describe(self) -> str:
        if self.kind == "mark-copy":
            return f"mark the {self.tier} copy {self.status}"
        if self.kind == "fail-backup":
            return "mark the backup failed and remove its objects"
        if self.kind == "write-descriptor":
            return f"rewrite {DESCRIPTOR_OBJECT}"
        return f"remove {len(self.keys)} file(s)"


Chains = Callable[[str], ChainModel | None]
"""A database's chain model, or None when the policy no longer names it."""


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    database: str | None
    subject: str  # a backup id, an object key or a store location
    tier: str | None
    detail: str  # one line: what is wrong and what it means
    repair: Repair | None = None

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "database": self.database, "subject": self.subject, "tier": self.tier,
                "detail": self.detail, "repair": None if self.repair is None else self.repair.describe()}


def _when(t: datetime | None) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds") if t else "?"


def _age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def _split(key: str) -> tuple[str, str, str] | None:
    """``(database, backup id, name)`` for a key in drkit's layout, else None (not drkit's to judge)."""
    parts = key.split("/")
    if len(parts) != 3 or not parts[1].startswith(parts[0] + "-"):
        return None
    return parts[0], parts[1], parts[2]


def plan(
    backups: Sequence[BackupRecord],
    copies: Sequence[CopyRecord],
    locations: Mapping[str, str],
    inventories: Mapping[str, Inventory],
    *,
    now: datetime,
    tier_order: Sequence[str],
    dead: Collection[str] = (),
    deep: Mapping[tuple[str, str], Deep] | None = None,
    stale_after: timedelta = STALE_AFTER,
    grace: timedelta = GRACE,
    chains: Chains,
) -> list[Finding]:
    """Every finding, each with its repair (None when only a person can act). Pure.

    ``locations`` maps each policy tier to its store location (the key of ``inventories``); ``dead`` are
    the ids of ``running`` backups whose process is known to be gone; ``deep`` the reads that failed;
    ``chains`` gives a database's restore-chain rules (None: unknown, its lost restore points go unjudged).
    """
    deep = deep or {}
    by_id = {b.id: b for b in backups}
    findings: list[Finding] = []
    for loc, inv in inventories.items():
        if inv.error is not None:
            findings.append(Finding("unreachable", None, loc, ",".join(inv.tiers),
                                    f"cannot list the store of tier(s) {', '.join(inv.tiers)}: {inv.error}; "
                                    "its copies were not checked"))

    # 1. complete copies: present, the recorded size, with their manifest (and hash, when deep).
    healthy: dict[str, set[str]] = defaultdict(set)
    damaged: dict[str, list[tuple[CopyRecord, str]]] = defaultdict(list)
    for c in copies:
        b = by_id.get(c.backup_id)
        if b is None:
            continue
        if c.status != "complete":
            continue
        held = inventories.get(locations.get(c.tier, ""))
        if held is None or held.error is not None:
            healthy[b.id].add(c.tier)  # a tier outside the policy, or unreachable: cannot tell, assume fine
            continue
        problem = _copy_problem(b, c, held, deep.get((b.id, c.tier)))
        if problem is None:
            healthy[b.id].add(c.tier)
            if c.store_key == object_key(b, DATA_OBJECT) and object_key(b, DESCRIPTOR_OBJECT) not in held.objects:
                findings.append(Finding("descriptor", b.database, b.id, c.tier,
                                        f"{object_key(b, DESCRIPTOR_OBJECT)} is missing in {c.tier}: the store alone "
                                        "could not rebuild this backup's record",
                                        Repair("write-descriptor", b.id, c.tier)))
            continue
        kind, detail = problem
        if kind == "unreadable":
            healthy[b.id].add(c.tier)  # not proven bad
            findings.append(Finding("unreadable", b.database, b.id, c.tier, detail))
            continue
        damaged[b.id].append((c, kind))
        findings.append(Finding(kind, b.database, b.id, c.tier, detail,
                                Repair("mark-copy", b.id, c.tier, status=kind)))

    # 2. running rows whose process is gone, or that ran for too long to be alive.
    stale: set[str] = set()
    for b in backups:
        if b.status != "running":
            continue
        age = now - b.started_at
        who = describe_process(b.meta.get("process"))
        if b.id in dead:
            reason = f"interrupted: {who} gone (found by catalog check)"
        elif age > stale_after:
            reason = (f"interrupted: still running after {_age(age)}, and {who} cannot be checked from here "
                      "(found by catalog check)")
        else:
            continue
        stale.add(b.id)
        findings.append(Finding("stale", b.database, b.id, None,
                                f"{b.kind} backup started {_when(b.started_at)} is still 'running' but "
                                f"{reason.removeprefix('interrupted: ')}",
                                Repair("fail-backup", b.id, reason=reason)))

    # 3. objects no record points at, and interrupted writes.
    claimed: dict[str, set[str]] = defaultdict(set)  # location -> backup ids with a live copy row there
    for c in copies:
        if c.status in _LIVE_COPY and c.tier in locations:
            claimed[locations[c.tier]].add(c.backup_id)
    running = {b.id for b in backups if b.status == "running"}
    for loc, inv in inventories.items():
        if inv.error is not None:
            continue
        groups: dict[tuple[str, str], list[StoredObject]] = defaultdict(list)
        for obj in inv.objects.values():
            parts = _split(obj.key)
            if parts is not None:
                groups[(parts[0], parts[1])].append(obj)
        for (db, bid), objs in sorted(groups.items()):
            if bid in running or bid in claimed[loc]:
                continue  # in flight, pointed at, or covered by its stale finding
            findings.extend(_orphans(by_id.get(bid), db, bid, objs, inv, now=now, grace=grace))
        for part in inv.partials:
            owner = _split(posixpath.join(posixpath.dirname(part.key), "x"))
            if owner is not None and owner[1] in running:
                continue  # its backup is running (or stale: removed with it)
            if part.modified is None or now - part.modified < grace:
                continue
            findings.append(Finding("partial", owner[0] if owner else None, part.key, inv.tiers[0],
                                    f"an interrupted write ({part.size} bytes, last written {_when(part.modified)})",
                                    Repair("remove-partial", tier=inv.tiers[0], keys=(part.key,))))

    # 4. restore points lost: restorable backups whose last complete copies this check found damaged. (Once
    # the repair marked them, the loss is on record (audit, `drkit backups`) and not reported again.)
    lost = [b for b in backups if b.status in RESTORABLE_STATUSES and damaged.get(b.id) and not healthy.get(b.id)]
    effects = _effects(lost, backups, copies, damaged, now=now, tier_order=tier_order, chains=chains)
    for b in sorted(lost, key=lambda x: (x.database, x.started_at)):
        why = ", ".join(sorted({f"{c.tier} {kind}" for c, kind in damaged[b.id]}))
        findings.append(Finding("lost", b.database, b.id, None,
                                f"{_what_is_lost(b, backups)} (copies: {why}){effects.get(b.database, '')}"))
    return findings


def _copy_problem(b: BackupRecord, c: CopyRecord, inv: Inventory, read: Deep | None
                  ) -> tuple[Literal["missing", "corrupt", "unreadable"], str] | None:
    obj = inv.objects.get(c.store_key)
    if obj is None:
        return "missing", f"{c.store_key} is gone from {c.tier}"
    if c.store_key != object_key(b, DATA_OBJECT):
        return None  # not drkit's layout (SQL Server's own URL backups): existence is all we can check
    if c.stored_bytes and obj.size != c.stored_bytes:
        return "corrupt", f"{c.store_key} in {c.tier} is {obj.size} bytes, the catalog recorded {c.stored_bytes}"
    if object_key(b, MANIFEST_OBJECT) not in inv.objects:
        return "missing", f"{object_key(b, MANIFEST_OBJECT)} is gone from {c.tier}: the copy cannot be restored"
    if read is not None:
        return read.verdict, read.detail
    return None


def _orphans(b: BackupRecord | None, db: str, bid: str, objs: list[StoredObject], inv: Inventory, *,
             now: datetime, grace: timedelta) -> list[Finding]:
    tier = inv.tiers[0]
    names = {posixpath.basename(o.key) for o in objs}
    if b is None and DESCRIPTOR_OBJECT in names:
        return [Finding("unrecorded", db, bid, tier,
                        f"{db}/{bid}/{DESCRIPTOR_OBJECT} describes a backup the catalog does not have; "
                        f"`drkit catalog rebuild --from {tier}` imports it")]
    if b is None:
        why = "belong to no backup in the catalog"
        removable = [o for o in objs if posixpath.basename(o.key) in (DATA_OBJECT, MANIFEST_OBJECT)]
    else:
        why = (f"belong to backup {bid}, which is {b.status}" if b.status == "failed"
               else f"belong to backup {bid}, which has no copy in {tier}")
        removable = list(objs)
    old = tuple(o.key for o in removable if o.modified is not None and now - o.modified >= grace)
    if not old:
        if b is None and len(removable) < len(objs):  # names drkit never writes, under an unknown backup id
            return [Finding("orphan", db, bid, tier, f"{len(objs)} object(s) under {db}/{bid}/ {why}; they are "
                            "not drkit's objects, so they are left for a person to judge")]
        return []  # too young to judge: a write may be in flight
    detail = f"{len(old)} object(s) under {db}/{bid}/ {why}"
    if len(objs) > len(old):
        detail += f" ({len(objs) - len(old)} other(s) left: younger than {_age(grace)}, or not drkit's)"
    return [Finding("orphan", db, bid, tier, detail, Repair("remove-objects", bid, tier, keys=old))]


def _what_is_lost(b: BackupRecord, backups: Sequence[BackupRecord]) -> str:
    if b.kind == "full":
        diffs = [d for d in backups if d.base_id == b.id and d.status in RESTORABLE_STATUSES]
        tail = f" and the {len(diffs)} differential(s) based on it" if diffs else ""
        return (f"{b.database}: full backup {b.id} (consistent at {_when(b.end_time)}) has no usable copy left: "
                f"it{tail} cannot be restored")
    if b.kind == "diff":
        return (f"{b.database}: differential {b.id} (to {_when(b.end_time)}) has no usable copy left: restores "
                "through it must replay its full's log chain instead")
    return (f"{b.database}: log backup {b.id} (WAL {b.start_wal}..{b.end_wal}, {_when(b.start_time)} to "
            f"{_when(b.end_time)}) has no usable copy left: no restore passes through it, so points after "
            f"{_when(b.start_time)} need a base backup taken after it")


def _effects(lost: Iterable[BackupRecord], backups: Sequence[BackupRecord], copies: Sequence[CopyRecord],
             damaged: Mapping[str, list[tuple[CopyRecord, str]]], *, now: datetime,
             tier_order: Sequence[str], chains: Chains) -> dict[str, str]:
    """Per database with a lost backup: how its newest restorable point moved."""
    bad = {(c.backup_id, c.tier) for pairs in damaged.values() for c, _ in pairs}
    after_copies = [c for c in copies if (c.backup_id, c.tier) not in bad]
    out: dict[str, str] = {}
    for db in sorted({b.database for b in lost}):
        model = chains(db)
        if model is None:
            continue  # a database the policy no longer names: its chain rules are unknown
        before, after = (_latest(model, db, backups, cs, now, tier_order) for cs in (copies, after_copies))
        if before != after:
            out[db] = (f"; {db}'s newest restorable point is now {_when(after)} (was {_when(before)})" if after
                       else f"; {db} can no longer be restored at all (was to {_when(before)})")
    return out


def _latest(model: ChainModel, db: str, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord],
            now: datetime, tier_order: Sequence[str]) -> datetime | None:
    try:
        return model.plan_restore(db, backups, copies, target=None, now=now, tier_order=tier_order).reaches
    except RestorePlanError:
        return None


# -- doing: list, read, plan, repair -------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    finding: Finding
    repaired: bool
    note: str = ""  # what was done, or why not


@dataclass(frozen=True)
class CheckReport:
    at: datetime
    deep: bool
    repair: bool
    checked: Mapping[str, int]  # copies, objects, stores
    outcomes: tuple[Outcome, ...]

    @property
    def remaining(self) -> list[Finding]:
        return [o.finding for o in self.outcomes if not o.repaired]

    @property
    def clean(self) -> bool:
        return not self.remaining

    def summary(self) -> str:
        found, left = len(self.outcomes), len(self.remaining)
        what = f"{self.checked['copies']} copies in {self.checked['stores']} store(s)"
        if not found:
            return f"catalog check: clean ({what}{', deep' if self.deep else ''})"
        if self.repair:
            return f"catalog check: {found} finding(s), {found - left} repaired, {left} remain ({what})"
        return f"catalog check: {found} finding(s) ({what}); `drkit catalog check --repair` repairs what it can"

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "deep": self.deep, "repair": self.repair, "clean": self.clean,
                "checked": dict(self.checked), "remaining": len(self.remaining),
                "findings": [{**o.finding.as_json(), "repaired": o.repaired, "note": o.note}
                             for o in self.outcomes]}

    def markdown(self) -> str:
        lines = [f"# Catalog check {_when(self.at)}", "", f"**{self.summary()}**", ""]
        if self.outcomes:
            lines += ["| finding | database | subject | tier | detail | repair |", "|---|---|---|---|---|---|"]
            for o in self.outcomes:
                f = o.finding
                done = (("done: " if o.repaired else "not done: ") + o.note) if self.repair and f.repair else (
                    f.repair.describe() if f.repair else "needs a person")
                cells = [f.kind, f.database or "", f.subject, f.tier or "", f.detail, done]
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines) + "\n"


def take_inventory(rt: Runtime) -> tuple[dict[str, str], dict[str, Inventory]]:
    """Each tier's location, and what each location holds (one listing per location)."""
    locations = {t: tier_location(rt.policy, t) for t in rt.tier_order}
    tiers_of: dict[str, list[str]] = defaultdict(list)
    for t, loc in locations.items():
        tiers_of[loc].append(t)
    inventories: dict[str, Inventory] = {}
    for loc, tiers in tiers_of.items():
        try:
            inventories[loc] = _list(rt, tiers)
        except DrkitError as exc:
            inventories[loc] = Inventory(tuple(tiers), error=str(exc))
    return locations, inventories


def _list(rt: Runtime, tiers: list[str]) -> Inventory:
    store = rt.store(tiers[0])
    objects: dict[str, StoredObject] = {}
    partials: list[StoredObject] = []
    if isinstance(store, FilesystemStore):
        for f in store.files():
            obj = StoredObject(f.key, f.size, datetime.fromtimestamp(f.modified, UTC))
            if f.partial:
                partials.append(obj)
            else:
                objects[f.key] = obj
    elif rt.policy.tiers[tiers[0]].store == "azure":
        from drkit.storage.azure import AzureStore  # the SDK only when a tier is on Azure

        assert isinstance(store, AzureStore)
        for info in store.objects():
            objects[info.key] = StoredObject(info.key, info.size, info.last_modified, info.tier == "Archive")
    else:  # any other Store: keys and sizes only, never old enough to remove
        for key in store.list():
            objects[key] = StoredObject(key, store.size(key), None)
    return Inventory(tuple(tiers), objects, tuple(partials))


def _read_deep(rt: Runtime, backups: Mapping[str, BackupRecord], copies: Sequence[CopyRecord],
               locations: Mapping[str, str], inventories: Mapping[str, Inventory]) -> dict[tuple[str, str], Deep]:
    """Hash every complete copy that is present with its size (keyless); what did not match or read."""
    out: dict[tuple[str, str], Deep] = {}
    for c in copies:
        b = backups.get(c.backup_id)
        inv = inventories.get(locations.get(c.tier, ""))
        if c.status != "complete" or b is None or inv is None or inv.error is not None:
            continue
        sha = c.sha256 or b.sha256
        obj = inv.objects.get(c.store_key)
        if not sha or obj is None or obj.archived or c.store_key != object_key(b, DATA_OBJECT):
            continue
        try:
            with rt.store(c.tier).reader(c.store_key) as src:
                verify_stored(src, sha, expected_context=c.store_key)
        except IntegrityError as exc:
            out[(b.id, c.tier)] = Deep("corrupt", f"{c.store_key} in {c.tier}: {exc}")
        except ObjectNotFoundError:
            continue  # removed since the listing: the next check sees it missing
        except DrkitError as exc:
            out[(b.id, c.tier)] = Deep("unreadable", f"{c.store_key} in {c.tier} could not be read: {exc}")
    return out


def run_check(rt: Runtime, *, deep: bool = False, repair: bool = False, actor: str = ACTOR,
              now: Callable[[], datetime] | None = None) -> CheckReport:
    """List every store, then read the catalog, plan, and (``repair``) repair; audited as ``catalog.check``."""
    clock = now or (lambda: datetime.now(UTC))
    locations, inventories = take_inventory(rt)  # stores first: every object listed has its record by now
    backups = rt.catalog.list_backups()
    copies = rt.catalog.all_copies()
    by_id = {b.id: b for b in backups}
    reads = _read_deep(rt, by_id, copies, locations, inventories) if deep else {}
    dead = {b.id for b in backups if b.status == "running" and process_gone(b.meta.get("process"))}
    at = clock()
    def chains(db: str) -> ChainModel | None:
        return chain_for(rt, db) if db in rt.policy.databases else None

    findings = plan(backups, copies, locations, inventories, now=at, tier_order=rt.tier_order, dead=dead,
                    deep=reads, chains=chains)
    outcomes = [_repair(rt, f, actor) if repair and f.repair else Outcome(f, False) for f in findings]
    checked = {"copies": sum(1 for c in copies if c.status == "complete"), "stores": len(inventories),
               "objects": sum(len(i.objects) for i in inventories.values())}
    report = CheckReport(at, deep, repair, checked, tuple(outcomes))
    remaining = report.remaining
    rt.catalog.audit(actor=actor, action="catalog.check", subject="deep" if deep else "quick", detail={
        "found": len(findings), "repaired": len(findings) - len(remaining), "remaining": len(remaining),
        "by_database": dict(Counter(f.database or "" for f in remaining)),
        "kinds": dict(Counter(f.kind for f in remaining)), "repair": repair, "deep": deep})
    return report


def _repair(rt: Runtime, f: Finding, actor: str) -> Outcome:
    r = f.repair
    assert r is not None
    try:
        note = _apply(rt, r, f.detail)
    except DrkitError as exc:
        return Outcome(f, False, str(exc))
    if note.startswith("skipped"):
        return Outcome(f, False, note)
    rt.catalog.audit(actor=actor, action="catalog.repair", database=f.database, subject=f.subject,
                     detail={"finding": f.kind, "repair": r.kind, "tier": r.tier, "status": r.status,
                             "detail": f.detail[:500], "keys": list(r.keys)[:50], "done": note})
    return Outcome(f, True, note)


def _apply(rt: Runtime, r: Repair, detail: str) -> str:
    if r.kind == "mark-copy":
        assert r.backup_id and r.tier and r.status
        marked = record_damage(rt, rt.catalog.get(r.backup_id), r.tier, r.status, detail, actor=ACTOR,
                               found_by="catalog check")
        return f"{', '.join(marked) or r.tier} copy marked {r.status}"
    if r.kind == "fail-backup":
        assert r.backup_id
        abandon(rt, rt.catalog.get(r.backup_id), r.reason, actor=ACTOR)
        return "marked failed, its objects removed"
    if r.kind == "write-descriptor":
        assert r.backup_id and r.tier
        b = rt.catalog.get(r.backup_id)
        write_descriptor(rt, b, [r.tier])
        if not rt.store(r.tier).exists(object_key(b, DESCRIPTOR_OBJECT)):
            return f"skipped: {DESCRIPTOR_OBJECT} could not be written (is the backup key set?)"
        return f"{DESCRIPTOR_OBJECT} rewritten"
    assert r.tier
    store = rt.store(r.tier)
    if r.kind == "remove-partial":
        removed = sum(store.cleanup_partials(GRACE.total_seconds(), prefix=k)
                      for k in r.keys if isinstance(store, FilesystemStore))
        return f"removed {removed} partial file(s)"
    # remove-objects: the catalog may have changed since the listing; ask it again right before deleting.
    assert r.backup_id
    try:
        owner: BackupRecord | None = rt.catalog.get(r.backup_id)
    except DrkitError:
        owner = None
    here = tier_location(rt.policy, r.tier)
    if owner is not None and (owner.status == "running" or any(
            c.status in _LIVE_COPY and c.tier in rt.policy.tiers and tier_location(rt.policy, c.tier) == here
            for c in rt.catalog.copies(owner.id))):
        return "skipped: a record claims these objects now"
    for key in r.keys:
        store.delete(key)
    return f"removed {len(r.keys)} object(s)"


class FindingsRemain(DrkitError):
    """A catalog check left findings that need a person (or ``--repair``)."""


def raise_if_findings(report: CheckReport) -> None:
    """FindingsRemain naming the first findings, unless the report is clean."""
    left = report.remaining
    if left:
        first = "; ".join(f"{f.kind} {f.subject}" for f in left[:3])
        raise FindingsRemain(f"{report.summary()}: {first}{' …' if len(left) > 3 else ''}")
