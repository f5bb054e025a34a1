"""LSNs and WAL segment names (drkit.engines.postgres.lsn), checked against values PostgreSQL itself prints."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drkit.engines.postgres.lsn import (
    DEFAULT_SEGMENT_SIZE,
    format_lsn,
    is_segment_name,
    parse_lsn,
    parse_segment_name,
    segment_name,
    segment_name_for_lsn,
    segment_number,
    segment_start_lsn,
    segments_per_xlogid,
)

LSNS = st.integers(0, 2**64 - 1)
SEGMENT_SIZES = st.sampled_from([2**k for k in range(20, 31)])  # initdb --wal-segsize: 1 MiB .. 1 GiB
TIMELINES = st.integers(1, 2**32 - 1)


@pytest.mark.parametrize(("text", "value"), [
    ("0/0", 0),
    ("0/3000028", 0x3000028),
    ("1/4A0000A0", 0x1_4A00_00A0),
    ("16/B374D848", 0x16_B374_D848),
    ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
    ("1/4a0000a0", 0x1_4A00_00A0),  # lower case, as some tools print it
    (" 0/3000028\n", 0x3000028),  # as read from a command's output
])
def test_parse_known_lsns(text: str, value: int) -> None:
    assert parse_lsn(text) == value


@pytest.mark.parametrize("text", ["", "0", "3000028", "0/", "/1", "0/123456789", "G/0", "0x1/0", "1/2/3", "-1/0"])
def test_parse_rejects_non_lsns(text: str) -> None:
    with pytest.raises(ValueError, match="LSN"):
        parse_lsn(text)


def test_format_matches_postgres() -> None:
    assert format_lsn(0x3000028) == "0/3000028"
    assert format_lsn(0x1_4A00_00A0) == "1/4A0000A0"
    assert format_lsn(0) == "0/0"


@settings(max_examples=200, deadline=None)
@given(LSNS)
def test_format_then_parse_round_trips(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.booleans())
def test_parse_then_format_round_trips(hi: int, lo: int, lower: bool) -> None:
    text = f"{hi:X}/{lo:X}"
    assert format_lsn(parse_lsn(text.lower() if lower else text)) == text


@settings(max_examples=200, deadline=None)
@given(LSNS, LSNS)
def test_order_is_preserved(a: int, b: int) -> None:
    # LSNs are compared as ints everywhere; parsing must keep PostgreSQL's order
    assert (parse_lsn(format_lsn(a)) < parse_lsn(format_lsn(b))) == (a < b)


@pytest.mark.parametrize(("tli", "lsn", "size", "name"), [
    (1, 0x1_4A00_00A0, DEFAULT_SEGMENT_SIZE, "00000001000000010000004A"),
    (1, 0x3000028, DEFAULT_SEGMENT_SIZE, "000000010000000000000003"),
    (1, 0, DEFAULT_SEGMENT_SIZE, "000000010000000000000000"),
    (2, 0xFFFF_FFFF, DEFAULT_SEGMENT_SIZE, "0000000200000000000000FF"),  # last segment of xlogid 0
    (2, 0x1_0000_0000, DEFAULT_SEGMENT_SIZE, "000000020000000100000000"),  # first of xlogid 1
    (0xA, 0x16_B374_D848, DEFAULT_SEGMENT_SIZE, "0000000A00000016000000B3"),
    (1, 0x1_4A00_00A0, 64 * 1024 * 1024, "000000010000000100000012"),  # --wal-segsize=64
    (1, 0x1_4A00_00A0, 1024 * 1024, "0000000100000001000004A0"),  # --wal-segsize=1
])
def test_segment_names_match_postgres(tli: int, lsn: int, size: int, name: str) -> None:
    assert segment_name_for_lsn(tli, lsn, size) == name
    assert parse_segment_name(name, size) == (tli, segment_number(lsn, size))


def test_segments_per_xlogid() -> None:
    assert segments_per_xlogid() == 256
    assert segments_per_xlogid(64 * 1024 * 1024) == 64
    assert segments_per_xlogid(1024 * 1024) == 4096


@settings(max_examples=200, deadline=None)
@given(TIMELINES, LSNS, SEGMENT_SIZES)
def test_segment_name_round_trips(tli: int, lsn: int, size: int) -> None:
    name = segment_name_for_lsn(tli, lsn, size)
    assert is_segment_name(name)
    got_tli, segno = parse_segment_name(name, size)
    assert got_tli == tli
    assert segno == lsn // size
    start = segment_start_lsn(segno, size)
    assert start <= lsn < start + size


@settings(max_examples=200, deadline=None)
@given(TIMELINES, st.integers(0, 2**40), SEGMENT_SIZES)
def test_consecutive_segments_sort_in_order(tli: int, segno: int, size: int) -> None:
    # the spool and the planner rely on name order being WAL order within a timeline
    segno %= 2**64 // size - 1
    assert segment_name(tli, segno, size) < segment_name(tli, segno + 1, size)


@pytest.mark.parametrize("name", [
    "", "00000001000000000000000", "0000000100000000000000031", "00000001000000000000000g",
    "00000001000000000000000a",  # PostgreSQL writes upper case
    "00000002.history", "000000010000000000000003.partial", "000000010000000000000003.00000028.backup",
])
def test_not_segment_names(name: str) -> None:
    assert not is_segment_name(name)
    with pytest.raises(ValueError, match="segment"):
        parse_segment_name(name)
