"""The local WAL spool: what ``archive_command`` left there, and which run of it to ship next.

Choosing the next batch is a pure function (:func:`plan_batch`) of the spool's
file names and what the catalog says was shipped before, so the gap and
timeline rules are unit-testable without a server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from drkit.errors import WalGapError
from drkit.lsn import (
    DEFAULT_SEGMENT_SIZE,
    is_segment_name,
    parse_segment_name,
    segment_name,
    segment_start_lsn,
)


@dataclass(frozen=True)
class Anchor:
    """Where the log chain must continue from."""

    timeline: int
    next_segno: int  # the first segment the next batch must contain
    after: str  # what it continues, for messages ("log backup X", "full backup Y")


@dataclass(frozen=True)
class WalBatch:
    timeline: int
    segments: tuple[str, ...]
    history_files: tuple[str, ...]
    start_lsn: int
    end_lsn: int

    @property
    def start_wal(self) -> str:
        return self.segments[0]

    @property
    def end_wal(self) -> str:
        return self.segments[-1]


def list_spool(spool: Path) -> tuple[list[str], list[str]]:
    """(segment names, timeline history file names) currently in the spool, sorted."""
    segments, histories = [], []
    try:
        names = os.listdir(spool)
    except FileNotFoundError:
        return [], []
    for name in names:
        if is_segment_name(name):
            segments.append(name)
        elif name.endswith(".history") and len(name) == 16 and all(c in "0123456789ABCDEF" for c in name[:8]):
            histories.append(name)
    return sorted(segments), sorted(histories)


def plan_batch(
    segments: list[str],
    histories: list[str],
    anchor: Anchor,
    *,
    upto_segno: int,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> WalBatch | None:
    """The unbroken run of segments from ``anchor.next_segno`` through ``upto_segno`` on the anchor's timeline.

    Returns None when there is nothing new. Raises WalGapError when a segment
    is missing or the server switched timeline: the chain cannot continue
    until a new full backup is taken.
    """
    if upto_segno < anchor.next_segno:
        return None
    on_tli: dict[int, str] = {}
    for name in segments:
        tli, segno = parse_segment_name(name, segment_size)
        if tli > anchor.timeline and segno <= upto_segno:
            raise WalGapError(
                f"timeline switch: the spool holds {name} on timeline {tli}, but the log chain after "
                f"{anchor.after} is on timeline {anchor.timeline} (a promotion or PITR happened); "
                "take a new full backup (drkit backup full DB) to start a chain on the new timeline"
            )
        if tli == anchor.timeline:
            on_tli[segno] = name
    wanted = range(anchor.next_segno, upto_segno + 1)
    missing = [s for s in wanted if s not in on_tli]
    if missing:
        first_missing = segment_name(anchor.timeline, missing[0], segment_size)
        present = [on_tli[s] for s in wanted if s in on_tli]
        around = f"; the spool has {present[0]} .. {present[-1]}" if present else "; the spool has none of them"
        raise WalGapError(
            f"WAL gap after {anchor.after}: segment {first_missing} is missing ({len(missing)} missing)"
            f"{around}. Point-in-time restore past this gap is impossible; take a new full backup "
            "(drkit backup full DB) and check archive_command / pg_stat_archiver"
        )
    names = tuple(on_tli[s] for s in wanted)
    hist = tuple(h for h in histories if int(h[:8], 16) <= anchor.timeline)
    return WalBatch(
        timeline=anchor.timeline,
        segments=names,
        history_files=hist,
        start_lsn=segment_start_lsn(anchor.next_segno, segment_size),
        end_lsn=segment_start_lsn(upto_segno + 1, segment_size),
    )


def prune_spool(spool: Path, upto: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Remove shipped segments (same or older timeline, segno ≤ upto's); returns how many."""
    up_tli, up_segno = parse_segment_name(upto, segment_size)
    removed = 0
    for name in list_spool(spool)[0]:
        tli, segno = parse_segment_name(name, segment_size)
        if tli <= up_tli and segno <= up_segno:
            try:
                os.unlink(spool / name)
                removed += 1
            except FileNotFoundError:
                pass
    return removed
