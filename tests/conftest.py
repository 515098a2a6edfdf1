"""Fixtures only (helpers live in tests/support/): one real local broker for the session, fresh
topics per test, PostgreSQL and the stores."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from consumers.store import Store
from tests.support.consumers import opened
from tests.support.kafka import Topics, make_topics
from wazza_tools.dev.apache_kafka import ApacheKafka, java_and_maven
from wazza_tools.dev.localbroker import LocalBroker

# The engine of the session's broker: Apache Kafka, what production runs (idempotence, topic ids,
# deletions that take effect asynchronously). `WAZZA_TEST_ENGINE=tansu` runs the suite on the
# no-Java fallback instead; the tests about that fallback take `tansu_broker` whatever is chosen,
# and the engine's own tests (tests/wazza_tools/dev/test_apache_kafka.py) run on Apache Kafka
# always.
ENGINE = os.environ.get("WAZZA_TEST_ENGINE", "kafka")

# The fixtures that start a broker or a database: a test taking any of them (directly or through
# another fixture) is `slow`, out of `make test-fast`, and so is every test of tests/system/.
# Tests that start processes of their own carry the mark themselves.
_INFRA_FIXTURES = frozenset(
    {"broker", "tansu_broker", "topics", "postgres_server", "postgres_dsn", "store_url", "store"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INFRA_FIXTURES.intersection(getattr(item, "fixturenames", ())) or (
            "system" in item.path.relative_to(Path(__file__).parent).parts[:1]
        ):
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture
async def topics(broker: LocalBroker) -> Topics:
    """Fresh topics for this test."""
    return await make_topics(broker.bootstrap_servers)


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
    from tests.support.postgres import postgres_server_dsn

    dsn, cleanup = postgres_server_dsn()
    try:
        yield dsn
    finally:
        cleanup()


@pytest.fixture
async def postgres_dsn(postgres_server: str) -> AsyncIterator[str]:
    """A fresh database of this test's own on the session's server, dropped afterwards."""
    from tests.support.postgres import fresh_database

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
    from tests.support.postgres import fresh_database

    async with fresh_database(postgres_server) as dsn:
        yield dsn


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """The store at `store_url`, migrated."""
    async with opened(store_url) as migrated:
        yield migrated
