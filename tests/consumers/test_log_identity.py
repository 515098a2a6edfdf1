"""Telling the log the stored offsets belong to from another one (consumers/log_identity.py)."""

from __future__ import annotations

from consumers.log_identity import LogReset, Stored, find_resets

OLD_ID = "01a24992-3118-73b3-a9c0-29d34e5278cb"
NEW_ID = "01a24992-3525-7b13-8b61-6cd1a5415318"


def test_offsets_within_the_same_log_are_left_alone() -> None:
    stored = {0: Stored(10, OLD_ID), 1: Stored(0, OLD_ID), 2: Stored(7, None)}
    assert find_resets(stored, OLD_ID, {0: 10, 1: 3, 2: 9}) == []


def test_an_offset_beyond_the_end_of_its_partition_is_another_log_and_only_that_one() -> None:
    stored = {0: Stored(10, OLD_ID), 1: Stored(40, OLD_ID), 2: Stored(5, OLD_ID)}
    [reset] = find_resets(stored, OLD_ID, {0: 12, 1: 25, 2: 5})
    assert reset == LogReset(1, 40, 0, "the stored offset 40 lies beyond the log's end 25")


def test_a_changed_topic_id_is_another_log_for_every_partition_whatever_its_end() -> None:
    stored = {0: Stored(3, OLD_ID), 1: Stored(4, OLD_ID)}
    resets = find_resets(stored, NEW_ID, {0: 500, 1: 500})
    assert [(r.partition, r.stored_offset, r.new_offset) for r in resets] == [(0, 3, 0), (1, 4, 0)]
    assert all(NEW_ID in r.reason and OLD_ID in r.reason for r in resets)


def test_an_id_unknown_on_either_side_decides_nothing_and_an_unknown_end_neither() -> None:
    stored = {0: Stored(30, None), 1: Stored(30, OLD_ID)}
    assert find_resets(stored, NEW_ID, {}) == [
        LogReset(1, 30, 0, f"the topic id changed from {OLD_ID} to {NEW_ID}")
    ]
    assert find_resets(stored, None, {}) == []


def test_the_new_log_is_taken_from_the_start_given() -> None:
    [reset] = find_resets({0: Stored(90, OLD_ID)}, OLD_ID, {0: 20}, log_start=5)
    assert reset.new_offset == 5
