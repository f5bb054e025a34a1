"""PostgreSQL LSNs and WAL segment names: parsing, formatting and arithmetic.

LSNs are kept as plain ints everywhere in drkit (the catalog stores them as
BIGINT); this module is the only place that knows their text forms.
"""

from __future__ import annotations

import re

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
_SEGMENT_RE = re.compile(r"[0-9A-F]{24}")
_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def parse_lsn(text: str) -> int:
    """``'0/3000028'`` → ``50331688``."""
    m = _LSN_RE.match(text.strip())
    if not m:
        raise ValueError(f"not a PostgreSQL LSN: {text!r} (expected like '0/3000028')")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segments_per_xlogid(segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return 0x100000000 // segment_size


def segment_number(lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return lsn // segment_size


def segment_name(timeline: int, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per = segments_per_xlogid(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def segment_name_for_lsn(timeline: int, lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    return segment_name(timeline, segment_number(lsn, segment_size), segment_size)


def is_segment_name(name: str) -> bool:
    return _SEGMENT_RE.fullmatch(name) is not None


def parse_segment_name(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """``'000000010000000000000003'`` → ``(timeline=1, segno=3)``."""
    if not is_segment_name(name):
        raise ValueError(f"not a WAL segment name: {name!r}")
    segno = segment_number_of(name, segment_size)
    assert segno is not None
    return int(name[0:8], 16), segno


def segment_number_of(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int | None:
    """The segment number a WAL segment name holds (its timeline aside); None when ``name`` is not one.

    The fast path of :func:`parse_segment_name`, for chain planning, which reads two names per log backup
    on every plan: it also takes lower-case hex digits (the same number), and raises nothing.
    """
    if len(name) != 24 or not name.isascii() or not name.isalnum():
        return None
    try:
        xlog_seg = int(name, 16) & 0xFFFFFFFFFFFFFFFF
    except ValueError:
        return None
    return (xlog_seg >> 32) * (0x100000000 // segment_size) + (xlog_seg & 0xFFFFFFFF)


def segment_span(first: str, last: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int] | None:
    """The segment numbers of two WAL segment names (a log backup's first and last), as
    :func:`segment_number_of` reads them, in one call; None unless both are segment names."""
    if len(first) != 24 or len(last) != 24 or not first.isascii() or not last.isascii() or not first.isalnum() \
            or not last.isalnum():
        return None
    try:
        x, y = int(first, 16) & 0xFFFFFFFFFFFFFFFF, int(last, 16) & 0xFFFFFFFFFFFFFFFF
    except ValueError:
        return None
    per = 0x100000000 // segment_size
    return (x >> 32) * per + (x & 0xFFFFFFFF), (y >> 32) * per + (y & 0xFFFFFFFF)


def segment_start_lsn(segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return segno * segment_size
