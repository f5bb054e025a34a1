"""Reading a backup from its copies: the next good copy, and recording one found missing or corrupt.

A backup has one copy per tier (``local``, ``blob``, ``archive``, ...). Whatever reads
a backup's objects to restore or verify it goes through a :class:`CopyPicker`: it
reads the plan's copy first, then the other complete copies, cheapest tier first.
A copy that fails is handled by why it failed:

* an object is gone (:class:`~drkit.errors.ObjectNotFoundError`): the copy is
  marked ``missing``;
* its bytes are damaged (:class:`~drkit.errors.IntegrityError`: wrong size,
  SHA-256, tag, a stream bound to another object): the copy is marked ``corrupt``;
* anything else the store says (:class:`~drkit.errors.StoreError`: the network,
  an archived blob not yet rehydrated): the copy is skipped for this read only.

A marked copy gets an audit event (``copy.missing`` / ``copy.corrupt``), and so
does any other tier's copy stored in the same place (one Azure container, two
access tiers: the same objects). Planning never uses a copy that is not
``complete``, so later restores go straight to a good copy. An encryption key
error is not a copy's fault: it is raised as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from drkit.catalog.records import BackupRecord, CopyRecord
from drkit.errors import DrkitError, IntegrityError, ObjectNotFoundError, RestoreError, StoreError
from drkit.plans import RestorePiece
from drkit.runtime import Runtime
from drkit.tiers.naming import tier_location


def damage_of(exc: BaseException) -> str | None:
    """The copy status a read failure proves ("missing", "corrupt"), or None when it proves nothing."""
    if isinstance(exc, ObjectNotFoundError):
        return "missing"
    if isinstance(exc, IntegrityError):
        return "corrupt"
    return None


def complete_copies(rt: Runtime, backup_id: str, *, prefer: str | None = None) -> list[CopyRecord]:
    """A backup's complete copies in the policy's tiers: ``prefer`` first, then cheapest tier first."""
    rank = {t: i for i, t in enumerate(rt.tier_order)}
    copies = [c for c in rt.catalog.copies(backup_id) if c.status == "complete" and c.tier in rank]
    return sorted(copies, key=lambda c: (c.tier != prefer, rank[c.tier]))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def record_damage(rt: Runtime, backup: BackupRecord, tier: str, status: str, reason: str, *,
                  actor: str, found_by: str) -> list[str]:
    """Mark ``backup``'s complete copy in ``tier`` ``status`` ("missing" or "corrupt"), audited.

    Complete copies of other tiers that share its objects are marked too. Returns the tiers marked.
    """
    if status not in ("missing", "corrupt"):
        raise ValueError(f"not a damaged copy status: {status}")
    where = tier_location(rt.policy, tier)
    marked: list[str] = []
    for c in rt.catalog.copies(backup.id):
        if c.status != "complete" or c.tier not in rt.policy.tiers:
            continue
        if c.tier != tier and tier_location(rt.policy, c.tier) != where:
            continue
        rt.catalog.set_copy_status(backup.id, c.tier, status)
        rt.catalog.audit(actor=actor, action=f"copy.{status}", database=backup.database, subject=backup.id,
                         detail={"tier": c.tier, "store_key": c.store_key, "reason": reason[:500],
                                 "found_by": found_by, "was": c.status})
        marked.append(c.tier)
    return marked


@dataclass
class CopyPicker:
    """For one restore or verification: which copy of each piece to read next, and what happened to the others.

    ``warnings`` holds one line per copy that failed (also passed to ``on_warning`` as it happens);
    ``read_from`` maps each backup id to the tier of the copy last picked for it.
    """

    rt: Runtime
    actor: str
    found_by: str
    on_warning: Callable[[str], None] | None = None
    warnings: list[str] = field(default_factory=list, init=False)
    read_from: dict[str, str] = field(default_factory=dict, init=False)
    _skip: set[tuple[str, str]] = field(default_factory=set, init=False)
    _tried: dict[str, list[str]] = field(default_factory=dict, init=False)
    _damaged_only: dict[str, bool] = field(default_factory=dict, init=False)

    def pick(self, piece: RestorePiece) -> RestorePiece:
        """The first copy of ``piece`` that exists with its recorded size: the plan's, then the others.

        Raises RestoreError naming every copy tried when none is left.
        """
        b = piece.backup
        for c in complete_copies(self.rt, b.id, prefer=piece.tier):
            if (b.id, c.tier) in self._skip:
                continue
            candidate = RestorePiece(backup=b, tier=c.tier, store_key=c.store_key, stored_bytes=c.stored_bytes,
                                     sha256=c.sha256 or b.sha256)
            try:
                size = self.rt.store(c.tier).size(c.store_key)
                if c.stored_bytes and size != c.stored_bytes:
                    raise IntegrityError(f"{c.store_key} in tier {c.tier} is {size} bytes; the catalog "
                                         f"records {c.stored_bytes}")
            except (StoreError, IntegrityError) as exc:
                self.failed(candidate, exc)
                continue
            self.read_from[b.id] = c.tier
            return candidate
        raise RestoreError(self._none_left(piece))

    def failed(self, copy: RestorePiece, exc: BaseException) -> None:
        """Reading ``copy`` failed with ``exc``: record the copy missing/corrupt (or skip it), say so.

        Errors that are not about the copy (anything but StoreError and IntegrityError) are re-raised.
        """
        if not isinstance(exc, (StoreError, IntegrityError)):
            raise exc
        b = copy.backup
        status = damage_of(exc)
        detail = _first_line(exc)
        skipped = [copy.tier]
        note = ""
        if status is not None:
            try:
                skipped += record_damage(self.rt, b, copy.tier, status, detail, actor=self.actor,
                                         found_by=self.found_by)
                note = f"; recorded {status}"
            except DrkitError as why:
                note = f"; could not record it ({_first_line(why)})"
        for tier in skipped:
            self._skip.add((b.id, tier))
        self._damaged_only[b.id] = self._damaged_only.get(b.id, True) and status is not None
        self._tried.setdefault(b.id, []).append(f"{copy.tier}: {status or 'unreadable'} ({detail})")
        message = (f"{b.kind} {b.id}: the {copy.tier} copy is {status or 'unreadable'} ({detail}){note}; "
                   "trying the next copy")
        self.warnings.append(message)
        if self.on_warning is not None:
            self.on_warning(message)

    def damaged_only(self, backup_id: str) -> bool:
        """True when every copy of the backup that was tried proved missing or corrupt (not merely unreadable)."""
        return self._damaged_only.get(backup_id, False)

    def _none_left(self, piece: RestorePiece) -> str:
        b = piece.backup
        tried = self._tried.get(b.id, [])
        others = [f"{c.tier}: {c.status}" for c in self.rt.catalog.copies(b.id)
                  if c.status != "complete" and not any(t.startswith(f"{c.tier}: ") for t in tried)]
        what = f"no readable copy of {b.kind} {b.id} is left"
        parts = [f"tried {'; '.join(tried)}"] if tried else []
        if others:
            parts.append(f"other copies: {', '.join(others)}")
        if not tried and not others:
            parts.append(f"it has no complete copy in the tiers {', '.join(self.rt.tier_order)}")
        return f"{what}: " + "; ".join(parts)
