"""`wazza-consumer --start-from` (WAZZA_START_FROM) on the real broker and both stores: where a
service's first start reads from, recorded at once, and ignored by every later start."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime

import pytest

from consumers.service import BUILTIN
from consumers.start_from import FROM_BEGINNING, StartFrom, parse_start_from
from consumers.store import Store
from tests.support.consumers import (
    SETTLE_SECONDS,
    completed,
    job,
    publish,
    rows,
    running,
    settings_on,
    until,
)
from tests.support.env import BIN, subprocess_env
from tests.support.kafka import Topics, make_topics
from wazza_tools.dev.localbroker import LocalBroker

AT = "2025-10-22T10:30:00Z"
# Apart by more than the broker's timestamp precision (ms), so that TIME falls between them.
BETWEEN_SECONDS = 0.05


async def stored(store: Store, service: str, topic: str) -> dict[int, int]:
    """The service's stored next offset per partition."""
    found = await rows(
        store,
        "SELECT kafka_partition, next_offset FROM consumer_offsets WHERE service = ? AND topic = ?",
        service,
        topic,
    )
    return {int(p): int(o) for p, o in found}


async def present(store: Store, *job_ids: str) -> set[str]:
    """Which of these jobs the store holds."""
    return {j for j in job_ids if await job(store, j) is not None}


async def run_until_applied(
    broker: LocalBroker, topics: Topics, store: Store, start_from: StartFrom, *wanted: str
) -> None:
    """Run `completion` with `start_from` until the `wanted` jobs are applied (a consumer group
    of its own each time: the store's offsets, not Kafka's, are what a later start finds)."""
    settings = settings_on(broker, topics, start_from=start_from)
    async with running(store, settings, BUILTIN["completion"]):
        await until(lambda: _all_present(store, wanted), f"{wanted} applied")


async def _all_present(store: Store, wanted: tuple[str, ...]) -> bool:
    return await present(store, *wanted) == set(wanted)


async def test_now_skips_what_the_topic_held_and_records_the_ends_at_once(
    broker: LocalBroker, store: Store
) -> None:
    topics = await make_topics(broker.bootstrap_servers)
    old = [completed(f"job_old_{i}", AT) for i in range(6)]
    await publish(broker.bootstrap_servers, topics.raw, old)
    settings = settings_on(broker, topics, start_from=parse_start_from("now"))

    async with running(store, settings, BUILTIN["completion"]) as [runtime]:
        await asyncio.wait_for(runtime.assigned.wait(), SETTLE_SECONDS)
        # Recorded before any batch: three partitions, six records, at their ends.
        recorded = await stored(store, "completion", topics.raw)
        assert sorted(recorded) == [0, 1, 2]
        assert sum(recorded.values()) == 6
        await publish(broker.bootstrap_servers, topics.raw, [completed("job_new", AT)])
        await until(lambda: _all_present(store, ("job_new",)), "the new job applied")

    assert await present(store, *(f"job_old_{i}" for i in range(6))) == set()


async def test_a_time_starts_at_the_first_record_written_at_or_after_it(
    broker: LocalBroker, store: Store
) -> None:
    topics = await make_topics(broker.bootstrap_servers)
    before = [completed(f"job_before_{i}", AT) for i in range(4)]
    await publish(broker.bootstrap_servers, topics.raw, before)
    await asyncio.sleep(BETWEEN_SECONDS)
    moment = datetime.now(UTC).isoformat(timespec="milliseconds")
    await asyncio.sleep(BETWEEN_SECONDS)
    after = [f"job_after_{i}" for i in range(4)]
    await publish(broker.bootstrap_servers, topics.raw, [completed(j, AT) for j in after])

    await run_until_applied(broker, topics, store, parse_start_from(moment), *after)

    assert await present(store, *(f"job_before_{i}" for i in range(4))) == set()
    assert sum((await stored(store, "completion", topics.raw)).values()) == 8


async def test_beginning_reads_everything_the_topic_holds(
    broker: LocalBroker, store: Store
) -> None:
    topics = await make_topics(broker.bootstrap_servers)
    jobs = [f"job_all_{i}" for i in range(5)]
    await publish(broker.bootstrap_servers, topics.raw, [completed(j, AT) for j in jobs])

    await run_until_applied(broker, topics, store, FROM_BEGINNING, *jobs)


async def test_a_later_start_continues_from_the_stored_offsets_whatever_the_option(
    broker: LocalBroker, store: Store
) -> None:
    topics = await make_topics(broker.bootstrap_servers)
    await publish(broker.bootstrap_servers, topics.raw, [completed("job_skipped", AT)])
    settings = settings_on(broker, topics, start_from=parse_start_from("now"))
    # The first start stops before its first batch: the offsets it chose are kept.
    async with running(store, settings, BUILTIN["completion"]) as [runtime]:
        await asyncio.wait_for(runtime.assigned.wait(), SETTLE_SECONDS)
    first = await stored(store, "completion", topics.raw)
    assert sum(first.values()) == 1
    # Written while the service was down: a later start with `now` must not skip it...
    await publish(broker.bootstrap_servers, topics.raw, [completed("job_while_down", AT)])
    await run_until_applied(broker, topics, store, parse_start_from("now"), "job_while_down")
    # ...and one with `beginning` must not go back over what the first start skipped.
    await publish(broker.bootstrap_servers, topics.raw, [completed("job_last", AT)])
    await run_until_applied(broker, topics, store, FROM_BEGINNING, "job_last")

    assert await present(store, "job_skipped") == set()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        pytest.param(
            ["--start-from", "yesterday"], {},
            "argument --start-from: 'yesterday' is not beginning, now or an ISO-8601 time",
            id="option",
        ),
        pytest.param(
            [], {"WAZZA_START_FROM": "2999-01-01T00:00:00Z"},
            "wazza-consumer: WAZZA_START_FROM: '2999-01-01T00:00:00Z' is in the future (use now)",
            id="env",
        ),
    ],
)  # fmt: skip
def test_a_start_it_cannot_use_is_refused_in_one_line(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    done = subprocess.run(
        [str(BIN / "wazza-consumer"), "completion", "--metrics-port", "0", *argv],
        env=subprocess_env(**env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 2, done
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_the_help_says_the_option_is_for_the_first_start_only() -> None:
    done = subprocess.run(
        [str(BIN / "wazza-consumer"), "--help"], env=subprocess_env(), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip

    text = " ".join(done.stdout.split())
    assert "FIRST start only" in text
    assert "Later starts always continue from the stored offsets" in text
    assert "--start-from now" in text
    assert "WAZZA_START_FROM" in text
