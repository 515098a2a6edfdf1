"""simulate's plan and expected state: pure functions of the options, the clock and the answers."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import orjson
import pytest

from wazza_tools.send.expect import (
    STATE_FIELDS,
    Expectation,
    expect_job,
    read_expect,
    write_expect,
)
from wazza_tools.send.plan import JobPlan, PlanOptions, make_plan
from wazza_tools.send.webhooks import SenderError

NOW = 1_795_000_000.0


def plan(**options: float) -> list[JobPlan]:
    return make_plan(PlanOptions(jobs=int(options.pop("jobs", 400)), **options), NOW)  # type: ignore[arg-type]


def all_landed(job: JobPlan) -> Expectation:
    return expect_job(job, range(len(job.events)), {})


# --- the plan ---------------------------------------------------------------------------------


def test_the_same_seed_and_clock_give_the_same_plan_and_another_seed_another() -> None:
    assert plan(seed=3) == plan(seed=3)
    assert plan(seed=3) != plan(seed=4)


def test_each_job_reports_rising_progress_then_ends_completed_or_failed() -> None:
    for job in plan(seed=1):
        kinds = [e.event_type for e in job.events]
        assert kinds[-1] in ("job.completed", "job.failed")
        assert set(kinds[:-1]) == {"job.processing"}
        assert 3 <= len(kinds) - 1 <= 7
        docs = [orjson.loads(e.body) for e in job.events]
        percents = [d["progress"]["percent"] for d in docs[:-1]]
        assert percents == sorted(percents)
        assert len(set(percents)) == len(percents)
        times = [d["timestamp"] for d in docs]
        assert times == sorted(times)
        assert len(set(times)) == len(times)
        assert all(d["jobId"] == job.job_id for d in docs)


def test_bodies_have_the_spec_fields_and_no_others() -> None:
    fields = {
        "job.processing": {"event", "jobId", "status", "progress", "timestamp"},
        "job.completed": {"event", "jobId", "status", "output", "metadata", "timestamp"},
        "job.failed": {"event", "jobId", "status", "error", "timestamp"},
    }
    status = {"job.processing": "processing", "job.completed": "completed", "job.failed": "failed"}
    for job in plan(seed=2, jobs=50):
        for event in job.events:
            doc = orjson.loads(event.body)
            assert set(doc) == fields[event.event_type]
            assert doc["event"] == event.event_type
            assert doc["status"] == status[event.event_type]
            assert doc["timestamp"].endswith("Z")
            assert len(doc["timestamp"]) == len("2025-10-22T10:30:00Z")
            if event.event_type == "job.processing":
                assert set(doc["progress"]) == {"percent", "stage", "estimatedTimeRemaining"}
            if event.event_type == "job.completed":
                assert set(doc["output"]) == {"url", "width", "height", "duration", "format"}
                assert set(doc["metadata"]) == {"provider", "model", "creditsUsed"}
            if event.event_type == "job.failed":
                assert set(doc["error"]) == {"code", "message"}


def test_every_event_of_a_run_has_its_own_body_so_the_ingester_gives_it_its_own_id() -> None:
    ids = [hashlib.sha256(e.body).hexdigest() for job in plan(seed=5) for e in job.events]

    assert len(set(ids)) == len(ids)


def test_event_times_lie_in_the_ten_minutes_before_the_plan() -> None:
    from consumers.events import parse_time_ms

    for job in plan(seed=6, jobs=100):
        for event in job.events:
            at = parse_time_ms(orjson.loads(event.body)["timestamp"])
            assert at is not None
            assert NOW - 600 <= at / 1000 <= NOW


def test_without_duplicates_or_reordering_each_job_is_sent_once_in_its_own_order() -> None:
    for job in plan(seed=7):
        assert job.order == tuple(range(len(job.events)))
        assert not job.reordered


def test_the_share_of_failed_jobs_follows_the_option() -> None:
    jobs = plan(seed=8, jobs=2000, failures=0.2)
    failed = sum(job.terminal.event_type == "job.failed" for job in jobs)

    assert 300 <= failed <= 500
    assert all(j.terminal.event_type == "job.completed" for j in plan(seed=8, failures=0.0))


def test_a_duplicate_is_the_same_event_again_later_in_its_job() -> None:
    jobs = plan(seed=9, jobs=2000, duplicates=0.1)
    copies = 0
    for job in jobs:
        counts = Counter(job.order)
        assert set(counts) == set(range(len(job.events)))
        assert max(counts.values()) <= 2
        copies += len(job.order) - len(job.events)
    events = sum(len(job.events) for job in jobs)

    assert 0.07 * events <= copies <= 0.13 * events


def test_reordering_moves_progress_after_the_terminal_event_or_swaps_two_progress_events() -> None:
    jobs = plan(seed=10, jobs=2000, reorder=0.1)
    kinds = Counter[str]()
    for job in jobs:
        if not job.reordered:
            assert job.order == tuple(range(len(job.events)))
            continue
        last = len(job.events) - 1
        if job.order[-1] != last:
            assert job.order[-2:] == (last, last - 1)
            assert job.order[:-2] == tuple(range(last - 1))
            kinds["progress after terminal"] += 1
        else:
            swapped = [i for i, e in enumerate(job.order) if i != e]
            assert len(swapped) == 2
            assert swapped[1] == swapped[0] + 1
            kinds["two progress swapped"] += 1

    assert 140 <= sum(kinds.values()) <= 260
    assert min(kinds.values()) > 40


@pytest.mark.parametrize("name", ["failures", "duplicates", "reorder"])
def test_a_share_outside_0_to_1_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        plan(**{name: 1.5})


# --- the expected state -------------------------------------------------------------------------


def test_a_completed_job_is_expected_complete_at_100_percent_with_its_output() -> None:
    job = next(j for j in plan(seed=11) if j.terminal.event_type == "job.completed")
    doc = orjson.loads(job.terminal.body)

    expected = all_landed(job)

    assert expected.undetermined is None
    assert expected.state == {
        "status": "completed",
        "percent": 100.0,
        "stage": "completed",
        "estimatedTimeRemaining": 0.0,
        "output": doc["output"],
        "error": None,
        "metadata": doc["metadata"],
        "lastProgressAt": None,
        "finishedAt": doc["timestamp"].replace("Z", ".000Z"),
    }


def test_a_failed_job_is_expected_failed_with_its_error_and_no_percent() -> None:
    job = next(j for j in plan(seed=12) if j.terminal.event_type == "job.failed")
    doc = orjson.loads(job.terminal.body)

    state = all_landed(job).state

    assert state is not None
    assert (state["status"], state["percent"], state["stage"]) == ("failed", None, "failed")
    assert state["error"] == doc["error"]
    assert state["metadata"] is None


def test_duplicates_and_reordering_do_not_change_the_expected_state() -> None:
    plain = {j.job_id: all_landed(j) for j in plan(seed=13)}
    shaken = {j.job_id: all_landed(j) for j in plan(seed=13, duplicates=0.5, reorder=0.5)}

    assert shaken == plain


def test_a_job_whose_terminal_event_never_landed_is_expected_at_its_highest_progress() -> None:
    job = plan(seed=14)[0]
    last_progress = orjson.loads(job.events[-2].body)

    expected = expect_job(job, range(len(job.events) - 1), {})

    assert expected.state is not None
    assert expected.state["status"] == "processing"
    assert expected.state["percent"] == last_progress["progress"]["percent"]
    assert expected.state["stage"] == last_progress["progress"]["stage"]
    assert expected.state["lastProgressAt"] == last_progress["timestamp"].replace("Z", ".000Z")


def test_a_given_up_terminal_event_makes_the_job_undetermined_between_its_two_outcomes() -> None:
    job = plan(seed=15)[0]
    last = len(job.events) - 1
    why = "given up after 5 attempts (last: HTTP 503)"

    expected = expect_job(job, range(last), {last: why})

    assert expected.state is None
    assert expected.undetermined is not None
    assert why in expected.undetermined
    assert expected.any_of is not None
    assert [s["status"] if s else None for s in expected.any_of] == [
        "processing",
        job.terminal.event_type.removeprefix("job."),
    ]
    assert expected.matches(expected.any_of[1])
    assert not expected.matches(None)


def test_a_given_up_progress_event_of_a_job_that_finished_changes_nothing() -> None:
    job = plan(seed=16)[0]

    expected = expect_job(job, [0, len(job.events) - 1], {1: "given up after 5 attempts"})

    assert expected == all_landed(job)


def test_a_delivery_given_up_whose_duplicate_landed_is_no_doubt() -> None:
    job = plan(seed=17)[0]
    last = len(job.events) - 1

    expected = expect_job(job, range(last + 1), {last: "given up"})

    assert expected == all_landed(job)


def test_a_job_with_nothing_landed_and_all_in_doubt_may_also_have_no_row() -> None:
    job = plan(seed=18)[0]

    expected = expect_job(job, [], {0: "given up"})

    assert expected.any_of is not None
    assert None in expected.any_of
    assert len(expected.any_of) == 2


# --- the expect file ----------------------------------------------------------------------------


def test_the_expect_file_round_trips_definite_and_undetermined_jobs(tmp_path: Path) -> None:
    jobs = plan(seed=19, jobs=3)
    last = len(jobs[1].events) - 1
    expectations = [
        all_landed(jobs[0]),
        expect_job(jobs[1], range(last), {last: "given up"}),
        Expectation(jobs[2].job_id, None, "too many in doubt", None),
    ]
    path = tmp_path / "expect.json"

    write_expect(path, expectations, {"url": "http://x", "seed": 19})
    back = read_expect(path)

    assert back.expectations == tuple(expectations)
    document = orjson.loads(path.read_bytes())
    assert document["format"] == "wazza-hooks-expect"
    assert document["summary"] == {"jobs": 3, "definite": 1, "undetermined": 2}
    assert set(document["jobs"][jobs[0].job_id]["expect"]) == set(STATE_FIELDS)
    assert "anyOf" not in document["jobs"][jobs[2].job_id]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "no expect file", id="missing"),
        pytest.param(b"{not json", "not JSON", id="not-json"),
        pytest.param(b'{"jobs": {}}', "not an expect file", id="no-format"),
        pytest.param(
            b'{"format": "wazza-hooks-expect", "version": 9, "jobs": {}}', "version", id="version"
        ),
        pytest.param(
            b'{"format": "wazza-hooks-expect", "version": 1, "jobs": {"j": {}}}',
            "neither",
            id="empty-entry",
        ),
        pytest.param(
            b'{"format": "wazza-hooks-expect", "version": 1, "jobs": {"j": {"expect": {}}}}',
            "fields",
            id="bad-state",
        ),
        pytest.param(
            b'{"format": "wazza-hooks-expect", "version": 1, '
            b'"jobs": {"j": {"undetermined": "why", "anyOf": 3}}}',
            "not a list",
            id="any-of-not-a-list",
        ),
    ],
)
def test_a_bad_expect_file_is_refused_with_a_reason(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "expect.json"
    if content is not None:
        path.write_bytes(content)

    with pytest.raises(SenderError, match=message):
        read_expect(path)
