"""The order rules: each rule on its own, then order-independence as a property."""

from __future__ import annotations

import itertools
from functools import reduce

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.events import JobEvent
from consumers.state import APPLIED, CONFLICT, STALE, Decision, JobState, decide
from wazza_hooks import contract

JOB = "job_abc123"


def progress(percent: float, at: int, eid: str = "") -> JobEvent:
    return JobEvent(
        contract.JOB_PROCESSING, JOB, eid or f"p{percent}@{at}", at, percent=percent,
        stage="rendering", eta_seconds=100 - percent,
    )  # fmt: skip


def completed(at: int, eid: str = "") -> JobEvent:
    return JobEvent(
        contract.JOB_COMPLETED, JOB, eid or f"c@{at}", at,
        output={"url": f"https://cdn.wazza.ai/{at}.mp4"}, metadata={"creditsUsed": 15},
    )  # fmt: skip


def failed(at: int, eid: str = "") -> JobEvent:
    return JobEvent(
        contract.JOB_FAILED, JOB, eid or f"f@{at}", at,
        error={"code": "CONTENT_POLICY_VIOLATION", "message": "no"},
    )  # fmt: skip


def fold(events: list[JobEvent]) -> tuple[JobState | None, list[Decision]]:
    state: JobState | None = None
    decisions = []
    for event in events:
        decision = decide(state, event)
        decisions.append(decision)
        state = decision.state
    return state, decisions


def test_the_first_event_of_a_job_creates_it_whatever_its_kind() -> None:
    for event in (progress(10, 1), completed(1), failed(1)):
        decision = decide(None, event)
        assert decision.outcome == APPLIED
        assert decision.state.job_id == JOB


def test_progress_never_goes_backwards() -> None:
    state, decisions = fold([progress(50, 2), progress(30, 3)])
    assert [d.outcome for d in decisions] == [APPLIED, STALE]
    assert state is not None
    assert state.percent == 50


def test_progress_after_a_terminal_state_is_stale() -> None:
    state, decisions = fold([completed(5), progress(99, 9)])
    assert [d.outcome for d in decisions] == [APPLIED, STALE]
    assert state is not None
    assert (state.status, state.percent, state.stage) == ("completed", 100, "completed")


def test_between_two_terminal_events_the_later_one_wins_in_either_order() -> None:
    late_fail, early_done = failed(20), completed(10)
    forward, backward = fold([early_done, late_fail]), fold([late_fail, early_done])
    assert forward[0] == backward[0]
    assert forward[0] is not None
    assert forward[0].status == "failed"
    assert [d.outcome for d in backward[1]] == [APPLIED, CONFLICT]
    # Arriving second and winning, the failure names the completion it supersedes.
    assert forward[1][1].superseded_event_id == early_done.event_id


def test_at_equal_times_a_failure_outranks_a_completion() -> None:
    a, _ = fold([completed(7), failed(7)])
    b, _ = fold([failed(7), completed(7)])
    assert a == b
    assert a is not None
    assert a.status == "failed"


def test_a_completion_records_output_and_metadata() -> None:
    state, _ = fold([progress(40, 1), completed(9)])
    assert state is not None
    assert state.output == {"url": "https://cdn.wazza.ai/9.mp4"}
    assert state.metadata == {"creditsUsed": 15}
    assert state.finished_ms == 9


def sparse_progress(percent: float | None, at: int, eid: str, stage: str | None) -> JobEvent:
    """A progress event that may leave out its percent, stage and metadata (the spec's
    `progress` object is the sender's to fill)."""
    return JobEvent(
        contract.JOB_PROCESSING, JOB, eid, at, percent=percent, stage=stage,
        metadata=None if stage is None else {"model": stage},
    )  # fmt: skip


events = st.builds(
    lambda kind, at, percent, n, stage: {
        "p": lambda: progress(percent, at, f"p{n}"),
        "s": lambda: sparse_progress(None if n % 3 == 0 else percent, at, f"s{n}", stage),
        "c": lambda: completed(at, f"c{n}"),
        "f": lambda: failed(at, f"f{n}"),
    }[kind](),
    kind=st.sampled_from("ppscf"),
    at=st.integers(0, 5),
    percent=st.integers(0, 100),
    n=st.integers(0, 10**6),
    stage=st.sampled_from([None, "queued", "rendering"]),
)


@settings(max_examples=300)
@given(st.lists(events, min_size=1, max_size=6, unique_by=lambda e: e.event_id), st.randoms())
def test_the_final_state_is_the_same_whatever_the_arrival_order(
    batch: list[JobEvent], rnd: object
) -> None:
    orders = list(itertools.permutations(batch)) if len(batch) <= 4 else []
    if not orders:
        shuffled = list(batch)
        for _ in range(20):
            rnd.shuffle(shuffled)  # type: ignore[attr-defined]
            orders.append(tuple(shuffled))
    finals = [reduce(lambda s, e: decide(s, e).state, order, None) for order in orders]
    assert all(final == finals[0] for final in finals)


@settings(max_examples=200)
@given(st.lists(events, min_size=1, max_size=6, unique_by=lambda e: e.event_id))
def test_exactly_one_terminal_event_stands_when_conflicts_are_resolved(
    batch: list[JobEvent],
) -> None:
    state, decisions = fold(batch)
    terminals = [e for e in batch if e.terminal]
    assert state is not None
    if terminals:
        applied = {
            e.event_id for e, d in zip(batch, decisions, strict=True) if d.outcome == APPLIED
        }
        superseded = {d.superseded_event_id for d in decisions if d.superseded_event_id}
        standing = {e.event_id for e in terminals} & (applied - superseded)
        assert standing == {state.terminal_event_id}
    else:
        assert state.status == "processing"
