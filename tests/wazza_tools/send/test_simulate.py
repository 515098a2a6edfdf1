"""simulate's engine over real HTTP, against a stand-in receiver scripted per test."""

from __future__ import annotations

import asyncio
import io
import time

import orjson
import pytest

from tests.support.standin import receiver
from wazza_tools.send.expect import expect_job
from wazza_tools.send.plan import JobPlan, PlanOptions, make_plan
from wazza_tools.send.simulate import Aborted, ProgressLine, RunOptions, Simulation, Tally

SECRET = "simulate-test-secret"
# Retries in these tests wait milliseconds, not the seconds a real run waits.
FAST = {"backoff_seconds": 0.01}


def plans(jobs: int = 30, **options: float) -> list[JobPlan]:
    return make_plan(PlanOptions(jobs=jobs, seed=1, **options), time.time())


def options(url: str, **overrides: object) -> RunOptions:
    return RunOptions(url=url, secret=SECRET.encode(), concurrency=8, **{**FAST, **overrides})  # type: ignore[arg-type]


def kind(body: bytes) -> str:
    return str(orjson.loads(body)["event"])


async def test_every_delivery_arrives_once_signed_fresh_and_each_job_in_its_order() -> None:
    jobs = plans(jobs=40)
    async with receiver(SECRET) as rec:
        tally = await Simulation(options(rec.url)).run(jobs)

    assert tally.planned == tally.sent == tally.accepted == tally.attempts == len(rec.received)
    assert (tally.retried, tally.given_up) == (0, [])
    assert all(r.signature_ok and r.content_type == "application/json" for r in rec.received)
    assert all(abs(r.at - r.timestamp) <= 2 for r in rec.received)
    for job in jobs:
        sent = [b for b in rec.bodies() if orjson.loads(b)["jobId"] == job.job_id]
        assert sent == [e.body for e in job.events]
        assert tally.landed[job.job_id] == set(range(len(job.events)))
    assert tally.statuses == {"200": tally.attempts}


async def test_duplicates_are_the_same_bytes_again_and_reordering_shows_on_the_wire() -> None:
    jobs = plans(jobs=60, duplicates=0.3, reorder=0.5)
    async with receiver(SECRET) as rec:
        tally = await Simulation(options(rec.url)).run(jobs)

    for job in jobs:
        sent = [b for b in rec.bodies() if orjson.loads(b)["jobId"] == job.job_id]
        assert sent == [job.events[i].body for i in job.order]
    assert tally.accepted == sum(len(j.order) for j in jobs) > sum(len(j.events) for j in jobs)


async def test_a_refused_attempt_is_retried_with_the_same_body_signed_anew_until_taken() -> None:
    async def flaky(body: bytes, nth: int) -> tuple[int, dict[str, object]]:
        return (503, {"error": "unavailable"}) if nth <= 2 else (200, {"received": True})

    jobs = plans(jobs=5)
    async with receiver(SECRET, flaky) as rec:
        tally = await Simulation(options(rec.url)).run(jobs)

    events = sum(len(j.events) for j in jobs)
    assert tally.accepted == events
    assert tally.retried == 2 * events
    assert tally.attempts == 3 * events
    assert tally.given_up == []
    assert all(r.signature_ok for r in rec.received)
    assert sorted(rec.bodies()) == sorted(e.body for j in jobs for e in j.events for _ in range(3))


async def test_no_answer_in_time_counts_as_a_failure_and_is_retried() -> None:
    async def stalls_once(body: bytes, nth: int) -> tuple[int, dict[str, object]]:
        if nth == 1 and kind(body) == "job.completed":
            await asyncio.sleep(1.0)
        return 200, {"received": True}

    jobs = plans(jobs=4, failures=0.0)
    async with receiver(SECRET, stalls_once) as rec:
        tally = await Simulation(options(rec.url, timeout_seconds=0.2)).run(jobs)

    assert tally.statuses["timeout"] == 4
    assert tally.retried == 4
    assert all(tally.landed[j.job_id] == set(range(len(j.events))) for j in jobs)
    assert len(rec.received) == tally.attempts


async def test_after_five_failed_attempts_a_delivery_is_given_up_and_its_job_undetermined() -> None:
    async def terminal_unavailable(body: bytes, nth: int) -> tuple[int, dict[str, object]]:
        if kind(body) != "job.processing":
            return 503, {"error": "unavailable"}
        return 200, {"received": True}

    jobs = plans(jobs=3)
    async with receiver(SECRET, terminal_unavailable) as rec:
        tally = await Simulation(options(rec.url)).run(jobs)

    assert len(rec.received) == sum(len(j.events) - 1 for j in jobs) + 5 * len(jobs)
    assert sorted((g.job_id, g.last, g.maybe_landed) for g in tally.given_up) == [
        (j.job_id, "HTTP 503", True) for j in jobs
    ]
    doubt = tally.in_doubt()
    for job in jobs:
        last = len(job.events) - 1
        assert set(doubt[job.job_id]) == {last}
        expected = expect_job(job, tally.landed[job.job_id], doubt[job.job_id])
        assert expected.undetermined is not None
        assert "given up after 5 attempts (last: HTTP 503)" in expected.undetermined


async def test_a_delivery_refused_with_a_4xx_every_time_cannot_have_landed() -> None:
    async def bad_request(body: bytes, nth: int) -> tuple[int, dict[str, object]]:
        if kind(body) == "job.processing":
            return 400, {"error": "bad_request"}
        return 200, {"received": True}

    jobs = plans(jobs=2)
    async with receiver(SECRET, bad_request) as rec:
        tally = await Simulation(options(rec.url)).run(jobs)

    assert tally.given_up
    assert not any(g.maybe_landed for g in tally.given_up)
    assert tally.in_doubt() == {}
    assert len(rec.received) == tally.attempts


async def test_a_quarantined_202_is_counted_apart_and_not_expected_in_the_store() -> None:
    async def quarantines(body: bytes, nth: int) -> tuple[int, dict[str, object]]:
        return 202, {"received": True, "quarantined": "missing_job_id"}

    jobs = plans(jobs=2)
    async with receiver(SECRET, quarantines) as rec:
        tally = await Simulation(options(rec.url)).run(jobs)

    assert tally.quarantined == tally.planned
    assert tally.accepted == 0
    assert all(not landed for landed in tally.landed.values())


async def test_a_wrong_secret_stops_the_run_at_once_saying_so() -> None:
    jobs = plans(jobs=200)
    async with receiver("another-secret") as rec:
        with pytest.raises(Aborted, match="secret"):
            await Simulation(options(rec.url)).run(jobs)

    assert len(rec.received) <= 8 * 2


async def test_the_rate_caps_attempts_per_second() -> None:
    jobs = plans(jobs=12)
    planned = sum(len(j.order) for j in jobs)
    async with receiver(SECRET) as rec:
        started = time.monotonic()
        tally = await Simulation(options(rec.url, rate=planned / 0.5)).run(jobs)
        elapsed = time.monotonic() - started

    assert tally.accepted == planned == len(rec.received)
    assert elapsed >= 0.45


def test_the_progress_line_is_redrawn_in_place_on_a_terminal_and_written_whole_elsewhere() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tally = Tally(planned=10, accepted=4, attempts=5, started=time.perf_counter())
    log, tty = io.StringIO(), Terminal()

    ProgressLine(tally, log).draw()
    ProgressLine(tally, tty).draw()

    assert log.getvalue().endswith("\n")
    assert "4/10 webhooks" in log.getvalue()
    assert "40%" in log.getvalue()
    assert tty.getvalue().startswith("\r")
    assert "\n" not in tty.getvalue()
