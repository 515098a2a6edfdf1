"""Shared fixtures: one real local broker for the session, unique topics per test."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.store import Store, open_store
from ingest.settings import IngestSettings
from wazza_hooks.apache_kafka import ApacheKafka, java_and_maven
from wazza_hooks.localbroker import LocalBroker
from wazza_hooks.topics import ensure_topics

SECRET = "test-secret-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


# The engine of the session's broker: Apache Kafka, what production runs (idempotence, topic ids,
# deletions that take effect asynchronously). `WAZZA_TEST_ENGINE=tansu` runs the suite on the
# no-Java fallback instead; the tests about that fallback take `tansu_broker` whatever is chosen,
# and the engine's own tests (tests/wazza_hooks/test_apache_kafka.py) run on Apache Kafka always.
ENGINE = os.environ.get("WAZZA_TEST_ENGINE", "kafka")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker | ApacheKafka]:
    """A real broker on a free port for the whole session (one per test worker): Tansu, or with
    WAZZA_TEST_ENGINE=kafka a single-node Apache Kafka with its log in a temporary folder (never
    skipped: it fails, naming what is missing, where Java 17+ or Maven is)."""
    if ENGINE == "tansu":
        with LocalBroker(log_path=tmp_path_factory.mktemp("broker") / "broker.log") as tansu:
            yield tansu
        return
    missing = java_and_maven()
    if missing is not None:
        pytest.fail(f"the tests run on Apache Kafka: {missing}", pytrace=False)
    with ApacheKafka(tmp_path_factory.mktemp("kafka")) as kafka:
        yield kafka


@pytest.fixture(scope="session")
def tansu_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """The no-Java fallback (Tansu, memory only, no idempotence), for the tests about it."""
    with LocalBroker(log_path=tmp_path_factory.mktemp("tansu") / "broker.log") as tansu:
        yield tansu


@dataclass(frozen=True)
class Topics:
    """The topics of one test."""

    raw: str
    quarantine: str
    dlq: str


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


async def make_topics(bootstrap: str, partitions: int = 3) -> Topics:
    """Create a fresh raw/quarantine/dlq trio on the broker."""
    topics = Topics(unique("test.raw"), unique("test.quarantine"), unique("test.dlq"))
    await ensure_topics(
        bootstrap, dict.fromkeys((topics.raw, topics.quarantine, topics.dlq), partitions)
    )
    return topics


@pytest.fixture
async def topics(broker: LocalBroker) -> Topics:
    """Fresh topics for this test."""
    return await make_topics(broker.bootstrap_servers)


def ingest_settings(bootstrap: str, topics: Topics, **overrides: str) -> IngestSettings:
    """Settings as the environment would give them, pointed at the test broker and topics."""
    env = {
        "WAZZA_WEBHOOK_SECRETS": SECRET,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "WAZZA_RAW_TOPIC": topics.raw,
        "WAZZA_QUARANTINE_TOPIC": topics.quarantine,
        **overrides,
    }
    return IngestSettings.from_env(env)


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 10.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a topic from the beginning; waits until `expect` arrived (or timeout),
    then reads a little longer so that unexpected extra records are seen too."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        # From 0, not seek_to_beginning(): Tansu's ListOffsets(earliest) was seen to answer
        # past a partition's first records after two producers wrote to it (7 for records
        # 0-19; CI lost two of sixty records that way). The test broker never deletes any.
        for tp in tps:
            consumer.seek(tp, 0)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        settle: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
            if len(records) >= expect:
                # Keep reading briefly: a duplicate or stray record must not go unseen.
                settle = settle or time.monotonic() + 0.5
                if time.monotonic() >= settle:
                    break
        return records
    finally:
        await consumer.stop()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition; fail the test with `what` when it does not come true in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


async def async_wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """The same, without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a project command run as a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAZZA_", "KAFKA_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


@pytest.fixture
async def no_leftover_tasks() -> AsyncIterator[None]:
    """Fails a test that leaves tasks running on its loop."""
    before = asyncio.all_tasks()
    yield
    after = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert not after, f"tasks left running: {after}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for the session: the machine's on 127.0.0.1:5432 (or the one
    WAZZA_TEST_POSTGRES_DSN names), else a private one from the pgserver wheel. Never skipped."""
    from .postgres import postgres_server_dsn

    dsn, cleanup = postgres_server_dsn()
    try:
        yield dsn
    finally:
        cleanup()


@pytest.fixture
async def postgres_dsn(postgres_server: str) -> AsyncIterator[str]:
    """A fresh database of this test's own on the session's server, dropped afterwards."""
    from .postgres import fresh_database

    async with fresh_database(postgres_server) as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server: str
) -> AsyncIterator[str]:
    """A fresh store's URL: a SQLite file, or a PostgreSQL database of the test's own. Every
    test that takes it (or `store`) runs against both databases."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/wazza.db"
        return
    from .postgres import fresh_database

    async with fresh_database(postgres_server) as dsn:
        yield dsn


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """The store at `store_url`, migrated."""
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()
