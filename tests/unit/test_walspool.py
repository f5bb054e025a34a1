"""The local WAL spool (engines.postgres.walspool): which run of segments the next log backup ships, and pruning."""

from __future__ import annotations

from pathlib import Path

import pytest

from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE, segment_name
from drkit.engines.postgres.walspool import Anchor, list_spool, plan_batch, prune_spool
from drkit.errors import WalGapError

SEG = DEFAULT_SEGMENT_SIZE
AFTER_L1 = Anchor(timeline=1, next_segno=5, after="log backup L1")


def segs(tl: int, first: int, last: int) -> list[str]:
    return [segment_name(tl, s) for s in range(first, last + 1)]


# -- plan_batch --------------------------------------------------------------------------------------


def test_contiguous_run_from_the_anchor_to_the_switch() -> None:
    spool = segs(1, 3, 9)  # 3 and 4 were shipped already but are still in the spool
    batch = plan_batch(spool, [], AFTER_L1, upto_segno=8)
    assert batch is not None
    assert batch.segments == tuple(segs(1, 5, 8))
    assert (batch.start_wal, batch.end_wal) == ("000000010000000000000005", "000000010000000000000008")
    assert batch.timeline == 1
    assert batch.start_lsn == 5 * SEG
    assert batch.end_lsn == 9 * SEG  # the end of segment 8
    assert batch.history_files == ()


def test_run_across_an_xlogid_boundary() -> None:
    anchor = Anchor(timeline=1, next_segno=0xFE, after="full backup F1")
    batch = plan_batch(segs(1, 0xFE, 0x101), [], anchor, upto_segno=0x101)
    assert batch is not None
    assert batch.segments == ("0000000100000000000000FE", "0000000100000000000000FF",
                              "000000010000000100000000", "000000010000000100000001")


def test_single_segment_batch() -> None:
    batch = plan_batch(segs(1, 5, 5), [], AFTER_L1, upto_segno=5)
    assert batch is not None and batch.segments == (segment_name(1, 5),)


@pytest.mark.parametrize("upto", [3, 4])
def test_nothing_new_returns_none(upto: int) -> None:
    assert plan_batch(segs(1, 3, 4), [], AFTER_L1, upto_segno=upto) is None


def test_missing_segment_is_a_gap_naming_it() -> None:
    spool = [*segs(1, 5, 6), *segs(1, 8, 9)]
    with pytest.raises(WalGapError) as err:
        plan_batch(spool, [], AFTER_L1, upto_segno=9)
    msg = str(err.value)
    assert "000000010000000000000007" in msg
    assert "log backup L1" in msg
    assert "full" in msg  # what to do: take a new full backup


def test_missing_first_segment_is_a_gap() -> None:
    with pytest.raises(WalGapError, match="000000010000000000000005"):
        plan_batch(segs(1, 6, 9), [], AFTER_L1, upto_segno=9)


def test_empty_spool_is_a_gap_when_segments_are_expected() -> None:
    with pytest.raises(WalGapError, match="000000010000000000000005"):
        plan_batch([], [], AFTER_L1, upto_segno=6)


def test_segments_past_the_switch_are_not_shipped() -> None:
    batch = plan_batch(segs(1, 5, 12), [], AFTER_L1, upto_segno=7)
    assert batch is not None and batch.end_wal == segment_name(1, 7)


def test_higher_timeline_segment_means_timeline_switch() -> None:
    spool = [*segs(1, 5, 6), *segs(2, 6, 8)]
    with pytest.raises(WalGapError) as err:
        plan_batch(spool, ["00000002.history"], AFTER_L1, upto_segno=8)
    msg = str(err.value)
    assert "timeline" in msg
    assert "000000020000000000000006" in msg
    assert "full" in msg


def test_older_timeline_leftovers_are_ignored() -> None:
    anchor = Anchor(timeline=2, next_segno=6, after="full backup F2")
    spool = [*segs(1, 4, 6), *segs(2, 6, 8)]
    batch = plan_batch(spool, ["00000002.history"], anchor, upto_segno=8)
    assert batch is not None
    assert batch.segments == tuple(segs(2, 6, 8))
    assert batch.timeline == 2


def test_history_files_up_to_the_chain_timeline_are_included() -> None:
    anchor = Anchor(timeline=3, next_segno=6, after="full backup F3")
    histories = ["00000002.history", "00000003.history"]
    batch = plan_batch(segs(3, 6, 7), histories, anchor, upto_segno=7)
    assert batch is not None
    assert batch.history_files == ("00000002.history", "00000003.history")


def test_history_of_a_newer_timeline_is_not_shipped_with_an_older_chain() -> None:
    batch = plan_batch(segs(1, 5, 6), ["00000002.history"], AFTER_L1, upto_segno=6)
    assert batch is not None
    assert batch.history_files == ()


# -- list_spool / prune_spool --------------------------------------------------------------------------


def fill(spool: Path, names: list[str]) -> None:
    spool.mkdir(parents=True, exist_ok=True)
    for name in names:
        (spool / name).write_bytes(b"wal")


def test_list_spool_sees_segments_and_histories_only(tmp_path: Path) -> None:
    fill(tmp_path, [
        segment_name(1, 7), segment_name(1, 5), "00000002.history",
        f"{segment_name(1, 8)}.partial",  # the old timeline's last segment after a promotion
        f"{segment_name(1, 5)}.00000028.backup",  # backup history file
        f".{segment_name(1, 9)}.part-1234",  # archive_command's temp file, not finished
        ".drkit-archive-wal.py", "README",
    ])
    segments, histories = list_spool(tmp_path)
    assert segments == [segment_name(1, 5), segment_name(1, 7)]  # sorted
    assert histories == ["00000002.history"]


def test_list_spool_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert list_spool(tmp_path / "nope") == ([], [])


def test_prune_removes_only_what_was_shipped(tmp_path: Path) -> None:
    keep_others = ["00000002.history", f".{segment_name(1, 9)}.part-1", ".drkit-archive-wal.py"]
    fill(tmp_path, [*segs(1, 3, 9), *segs(2, 4, 5), *keep_others])
    removed = prune_spool(tmp_path, segment_name(1, 6))
    assert removed == 4
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*segs(1, 7, 9), *segs(2, 4, 5), *keep_others])


def test_prune_after_a_timeline_switch_removes_the_old_timeline_too(tmp_path: Path) -> None:
    fill(tmp_path, [*segs(1, 3, 5), *segs(2, 5, 7)])
    assert prune_spool(tmp_path, segment_name(2, 6)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [segment_name(2, 7)]


def test_prune_of_an_empty_or_missing_spool_is_zero(tmp_path: Path) -> None:
    assert prune_spool(tmp_path, segment_name(1, 6)) == 0
    assert prune_spool(tmp_path / "nope", segment_name(1, 6)) == 0


def test_planned_batch_then_prune_leaves_the_unshipped_tail(tmp_path: Path) -> None:
    fill(tmp_path, segs(1, 5, 9))
    segments, histories = list_spool(tmp_path)
    batch = plan_batch(segments, histories, AFTER_L1, upto_segno=7)
    assert batch is not None
    prune_spool(tmp_path, batch.end_wal)
    assert list_spool(tmp_path)[0] == segs(1, 8, 9)
