"""`wazza-hooks status`, run as an operator runs it, against the real broker (Apache Kafka), both
stores, a real `wazza-ingest` and real `wazza-consumer` processes (or the ingester's app and a
service's runtime in the test's loop, where a process adds nothing): everything healthy exits 0
with each part in the JSON; a consumer or an ingester down, an unreachable store, a hung
endpoint and a lagging service are each one line naming it, with exit 1; dead letters warn."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from consumers.service import BUILTIN
from consumers.settings import ConsumerSettings
from consumers.store import Store
from consumers.store.migrations import KNOWN
from ingest.app import build_app
from tests.support.commands import Result, hooks
from tests.support.consumers import (
    completed,
    offsets_reach,
    opened,
    publish,
    running,
    settings_on,
    until,
)
from tests.support.env import BIN, SECRET, subprocess_env
from tests.support.kafka import Topics, ingest_settings, make_topics
from tests.support.ops import env_for
from tests.support.processes import running as process
from tests.support.signing import sign_wazza
from wazza_hooks.config import redact_url
from wazza_tools.dev.apache_kafka import ApacheKafka
from wazza_tools.dev.localbroker import free_port, port_in_use

# The bound each part of `status` gets in these tests: the same as the command's default.
BOUND = 3.0


def status_env(settings: ConsumerSettings, topics: Topics, store_url: str) -> dict[str, str]:
    """The consumers' environment, which `status` reads, plus the quarantine topic."""
    return {**env_for(settings, store_url), "WAZZA_QUARANTINE_TOPIC": topics.quarantine}


def problems(result: Result) -> list[str]:
    """The problem lines on stderr (no traceback), without their prefix."""
    assert "Traceback" not in result.err, result
    return [
        line.removeprefix("wazza-hooks: ")
        for line in result.err.splitlines()
        if line.startswith("wazza-hooks: ") and not line.startswith("wazza-hooks: warning: ")
    ]


async def ready(url: str) -> bool:
    """The process at `url` answers its /readyz with 200."""
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def post_webhooks(url: str, bodies: list[bytes]) -> None:
    """Send each body to the ingester, signed as Wazza signs; each must be accepted."""
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            headers = sign_wazza(SECRET, body, int(time.time()))
            async with http.post(f"{url}/api/webhooks/wazza", data=body, headers=headers) as r:
                assert r.status == 200, await r.text()


@contextlib.asynccontextmanager
async def ingester_app(broker: ApacheKafka, topics: Topics) -> AsyncIterator[str]:
    """The ingester's real application on a loopback port, ready; its base URL."""
    server = TestServer(build_app(ingest_settings(broker.bootstrap_servers, topics)))
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        await until(lambda: ready(url), "the ingester ready")
        yield url
    finally:
        await server.close()


async def test_everything_healthy_exits_0_then_a_stopped_consumer_and_ingester_are_named(
    broker: ApacheKafka, store_url: str
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=2)
    settings = settings_on(broker, topics)
    env = status_env(settings, topics, store_url)
    ingest_port, metrics_port = free_port(), free_port()
    ingester, consumer = f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{metrics_port}"
    ingest_env = subprocess_env(
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        KAFKA_ENABLE_IDEMPOTENCE="false",
        WAZZA_WEBHOOK_SECRETS=SECRET,
        WAZZA_RAW_TOPIC=topics.raw,
        WAZZA_QUARANTINE_TOPIC=topics.quarantine,
    )
    with (
        process([str(BIN / "wazza-ingest"), "--port", str(ingest_port)], ingest_env) as ingest,
        process(
            [str(BIN / "wazza-consumer"), "completion", "--metrics-port", str(metrics_port)],
            env,
        ) as completion,
    ):
        await until(lambda: ready(ingester), "the ingester ready")
        await until(lambda: ready(consumer), "the consumer ready")
        bodies = [completed(f"job_{i}", "2025-10-22T10:30:00Z") for i in range(5)]
        await post_webhooks(ingester, bodies)
        async with opened(store_url) as store:
            await until(lambda: offsets_reach(store, "completion", 5), "the events applied")

        args = ["status", "--ingester", ingester, "--consumer", consumer]
        result = await hooks(*args, "--json", env=env)
        assert result.code == 0, result
        assert result.err == ""
        doc = result.json()
        assert doc["healthy"] is True
        assert doc["problems"] == []
        assert doc["warnings"] == []
        assert doc["broker"] == {
            "bootstrapServers": broker.bootstrap_servers,
            "reachable": True,
            "engine": "Apache Kafka",
            "version": "4.1",
            "metadataVersion": "4.1-IV1",
            "clusterId": doc["broker"]["clusterId"],
            "brokers": 1,
            "error": None,
        }
        assert doc["broker"]["clusterId"]
        [ingest_doc] = doc["ingesters"]
        assert ingest_doc["url"] == ingester
        assert ingest_doc["ready"] is True
        assert ingest_doc["brokerUp"] is True
        assert ingest_doc["requests"]["accepted"] == 5
        assert ingest_doc["ratePerSecond"] == {"requests": 0.0, "accepted": 0.0}
        assert doc["consumers"] == [
            {
                "url": consumer,
                "service": "completion",
                "ready": True,
                "reason": None,
                "assignedPartitions": 2,
                "error": None,
            }
        ]
        store_doc = doc["store"]
        assert store_doc["reachable"] is True
        assert store_doc["error"] is None
        assert store_doc["schemaVersion"] == KNOWN == store_doc["knownSchemaVersion"]
        assert store_doc["sizeBytes"] > 0
        [service] = doc["services"]
        assert service["service"] == "completion"
        assert service["group"] == settings.group_prefix + "completion"
        assert (service["members"], service["ready"], service["lag"]) == (1, True, 0)
        assert sum(p["end"] for p in service["partitions"]) == 5
        assert service["lastAppliedAt"].endswith("Z")
        assert doc["deadLetters"] == {
            "topic": topics.dlq,
            "records": 0,
            "waiting": 0,
            "keptInStore": 0,
        }
        assert doc["quarantine"] == {"topic": topics.quarantine, "records": 0}

        text = await hooks(*args, env=env)
        assert text.code == 0, text
        lines = text.out.splitlines()
        assert lines[0].startswith(f"broker       {broker.bootstrap_servers}: up, Apache Kafka 4.1")
        assert f"consumer     {consumer}: completion ready, 2 partitions assigned" in lines
        assert "service      completion: lag 0 records, 1 consumer, ready, last applied " in (
            text.out
        )
        assert lines[-1] == "healthy"

        completion.proc.send_signal(signal.SIGTERM)
        assert await completion.wait_exit(30) == 0
        ingest.proc.send_signal(signal.SIGTERM)
        await ingest.wait_exit(30)
        assert not port_in_use("127.0.0.1", ingest_port)

        down = await hooks(*args, env=env)
        assert down.code == 1, down
        assert problems(down) == [
            f"ingester at {ingester}: unreachable (connection refused)",
            f"consumer at {consumer}: unreachable (connection refused)",
            f"service completion: no consumer running (group {settings.group_prefix}completion "
            "has no members)",
        ]
        assert down.out.splitlines()[-1] == "NOT HEALTHY: 3 problems (on stderr)"


async def test_lag_is_the_records_published_while_no_consumer_runs(
    broker: ApacheKafka, store: Store, store_url: str
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=3)
    settings = settings_on(broker, topics)
    env = status_env(settings, topics, store_url)
    first = [completed(f"job_a{i}", "2025-10-22T10:30:00Z") for i in range(4)]
    await publish(broker.bootstrap_servers, topics.raw, first)
    async with running(store, settings, BUILTIN["completion"]):
        await until(lambda: offsets_reach(store, "completion", 4), "the first records applied")
    later = [completed(f"job_b{i}", "2025-10-22T10:31:00Z") for i in range(7)]
    await publish(broker.bootstrap_servers, topics.raw, later)

    async with ingester_app(broker, topics) as ingester:
        at_limit, over = await asyncio.gather(
            hooks("status", "--ingester", ingester, "--max-lag", 7, "--json", env=env),
            hooks("status", "--ingester", ingester, "--max-lag", 6, env=env),
        )
    [service] = at_limit.json()["services"]
    assert service["lag"] == 7
    assert service["members"] == 0
    assert sum(p["lag"] for p in service["partitions"]) == 7
    stopped = (
        f"service completion: no consumer running (group {settings.group_prefix}completion "
        "has no members)"
    )
    assert at_limit.code == 1
    assert problems(at_limit) == [stopped]
    assert over.code == 1
    assert problems(over) == [
        f"service completion: lag 7 records on {topics.raw}, above --max-lag 6",
        stopped,
    ]
    assert "service      completion: lag 7 records, NO CONSUMER RUNNING, last applied 20" in (
        over.out
    )


async def test_dead_letters_are_a_warning_and_a_problem_with_strict(
    broker: ApacheKafka, store: Store, store_url: str
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=2)
    settings = settings_on(broker, topics)
    env = status_env(settings, topics, store_url)
    await publish(
        broker.bootstrap_servers, topics.raw, [completed("job_ok", "2025-10-22T10:30:00Z")]
    )
    # Records in the dead-letter and quarantine topics, as a consumer and the ingester put them.
    await publish(
        broker.bootstrap_servers, topics.dlq, [completed("job_x", "2025-10-22T10:30:00Z")]
    )
    await publish(
        broker.bootstrap_servers,
        topics.quarantine,
        [completed(f"job_q{i}", "2025-10-22T10:30:00Z") for i in range(2)],
    )
    async with (
        running(store, settings, BUILTIN["completion"]),
        ingester_app(broker, topics) as ingester,
    ):
        await until(lambda: offsets_reach(store, "completion", 1), "the record applied")
        plain, strict = await asyncio.gather(
            hooks("status", "--ingester", ingester, "--json", env=env),
            hooks("status", "--ingester", ingester, "--strict", env=env),
        )
    warning = f"1 dead letter in {topics.dlq} not redriven (wazza-hooks dlq list)"
    assert plain.code == 0, plain
    assert plain.err == f"wazza-hooks: warning: {warning}\n"
    doc = plain.json()
    assert doc["healthy"] is True
    assert doc["warnings"] == [warning]
    assert doc["deadLetters"] == {
        "topic": topics.dlq,
        "records": 1,
        "waiting": 1,
        "keptInStore": 0,
    }
    assert doc["quarantine"] == {"topic": topics.quarantine, "records": 2}
    assert strict.code == 1, strict
    assert problems(strict) == [warning]


async def test_an_unreachable_store_and_a_hung_ingester_are_named_within_the_bound(
    broker: ApacheKafka, tmp_path: Path
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=1)
    settings = settings_on(broker, topics)
    closed = free_port()
    # A port that takes connections (the kernel completes them) and never answers: a hung
    # process, as far as a client can tell.
    with socket.create_server(("127.0.0.1", 0)) as hung:
        hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        sqlite_url = f"sqlite:///{tmp_path}/missing.db"
        postgres_url = f"postgresql://wazza:hunter2@127.0.0.1:{closed}/wazza"
        began = time.monotonic()
        on_sqlite, on_postgres = await asyncio.gather(
            hooks(
                "status",
                "--ingester",
                hung_url,
                "--timeout",
                BOUND,
                env=status_env(settings, topics, sqlite_url),
            ),
            hooks("status", "--ingester", hung_url, env=status_env(settings, topics, postgres_url)),
        )
        took = time.monotonic() - began
    # Two bounds (readyz, then each scrape's own) and the command's start, with room.
    assert took < 4 * BOUND + 10, took
    hung_line = f"ingester at {hung_url}: no answer in time"
    assert on_sqlite.code == 1, on_sqlite
    assert problems(on_sqlite) == [
        hung_line,
        f"store at {sqlite_url}: no SQLite file {tmp_path}/missing.db",
    ]
    assert on_postgres.code == 1, on_postgres
    hung_report, store_report = problems(on_postgres)
    assert hung_report == hung_line
    shown = f"postgresql://wazza:***@127.0.0.1:{closed}/wazza"
    assert store_report.startswith(f"store at {shown}: cannot reach PostgreSQL: "), store_report
    assert "hunter2" not in on_postgres.err + on_postgres.out


async def test_pending_migrations_are_a_problem_naming_them(
    broker: ApacheKafka, store: Store, store_url: str
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=1)
    settings = settings_on(broker, topics)
    # A store as the release before this one left it: the newest migration not recorded.
    async with store.transaction() as tx:
        await tx.execute("DELETE FROM schema_version WHERE version = ?", KNOWN)
    result = await hooks(
        "status", "--sample", 0, "--json", env=status_env(settings, topics, store_url)
    )
    assert result.code == 1, result
    shown = redact_url(store_url)
    assert (
        f"store at {shown}: schema version {KNOWN - 1}, migration(s) {KNOWN} pending "
        "(run `wazza-hooks migrate`, or start a consumer that migrates)"
    ) in problems(result)
    doc = result.json()["store"]
    assert (doc["reachable"], doc["schemaVersion"], doc["knownSchemaVersion"]) == (
        True,
        KNOWN - 1,
        KNOWN,
    )


async def test_bad_arguments_exit_2_with_one_line() -> None:
    for args, named in (
        (["--ingester", "localhost:8080"], "'localhost:8080' is not an http:// or https:// URL"),
        (["--max-lag", "-1"], "--max-lag"),
        (["--timeout", "0"], "--timeout"),
        (["--database-url", "mysql://db/wazza"], "--database-url must start with sqlite:///"),
    ):
        result = await hooks("status", *args)
        assert result.code == 2, result
        assert named in result.err
        assert "Traceback" not in result.err
