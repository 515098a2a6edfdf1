"""Invariant 1 with the broker taken away and brought back: a 2xx means durable, a broker that is
gone gives 503 + Retry-After within the deadline, and a broker that returns is used again
without restarting the ingester."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from ingest.app import build_app
from tests.support.env import SECRET
from tests.support.kafka import Topics, ingest_settings, read_topic
from tests.support.processes import hang
from tests.support.signing import completed_body, sign_wazza
from wazza_tools.dev.apache_kafka import ApacheKafka
from wazza_tools.dev.localbroker import LocalBroker
from wazza_tools.dev.topics import ensure_topics

DEADLINE = 1.0
# The answer comes at the deadline, plus the loop turn that notices it: on a loaded 2-core CI
# machine, half a second.
SLACK = 0.5
TOPICS = Topics("outage.raw", "outage.quarantine", "outage.dlq")


async def send(http: ClientSession, url: str, job_id: str) -> tuple[int, float, str | None]:
    body = completed_body(job_id)
    started = time.monotonic()
    async with http.post(url, data=body, headers=sign_wazza(SECRET, body, int(time.time()))) as r:
        await r.read()
        return r.status, time.monotonic() - started, r.headers.get("Retry-After")


async def wait_ready(http: ClientSession, url: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        async with http.get(url) as resp:
            if resp.status == 200:
                return
        await asyncio.sleep(0.05)
    pytest.fail("the ingester never became ready")


async def create_topics(broker: LocalBroker | ApacheKafka) -> None:
    await ensure_topics(broker.bootstrap_servers, {TOPICS.raw: 3, TOPICS.quarantine: 3})


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["kafka", "tansu"])
async def test_a_broker_outage_gives_503s_within_the_deadline_and_200s_resume_after_it(
    tmp_path: Path, engine: str
) -> None:
    """On Apache Kafka with the idempotent producer (the production default), whose log
    survives the outage; and on the memory-only fallback, with direct delivery."""
    broker: LocalBroker | ApacheKafka
    if engine == "kafka":
        broker = ApacheKafka(tmp_path / "kafka")
    else:
        broker = LocalBroker(log_path=tmp_path / "broker.log")
    broker.start()
    await create_topics(broker)
    settings = ingest_settings(
        broker.bootstrap_servers,
        TOPICS,
        WAZZA_PUBLISH_TIMEOUT_SECONDS=str(DEADLINE),
        KAFKA_ENABLE_IDEMPOTENCE="true" if engine == "kafka" else "false",
    )
    server = TestServer(build_app(settings), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/api/webhooks/wazza"))
    try:
        async with ClientSession() as http:
            await wait_ready(http, str(server.make_url("/readyz")))
            # Up: every 200 is a record.
            before = [f"job_before_{i}" for i in range(20)]
            answers = await asyncio.gather(*(send(http, url, j) for j in before))
            assert [status for status, _, _ in answers] == [200] * 20
            stored = await read_topic(broker.bootstrap_servers, TOPICS.raw, expect=20)
            assert sorted(r.key for r in stored) == sorted(j.encode() for j in before)

            # Down: requests keep flowing; each is answered 503 in time, with Retry-After.
            broker.stop()
            during: list[tuple[int, float, str | None]] = []

            async def flow(lane: int) -> None:
                for i in range(4):
                    during.append(await send(http, url, f"job_during_{lane}_{i}"))

            await asyncio.gather(*(flow(lane) for lane in range(4)))
            assert {status for status, _, _ in during} == {503}
            assert max(elapsed for _, elapsed, _ in during) <= DEADLINE + SLACK
            assert {retry for _, _, retry in during} == {"5"}
            async with http.get(server.make_url("/readyz")) as resp:
                assert resp.status == 503

            # Back (same address; Tansu empty, Apache Kafka with its log): 200s resume without
            # restarting the ingester, and every 200 is a record again.
            broker.start()
            await create_topics(broker)
            # Recovery: answers are 200 or 503 (never anything else) until 200s are steady.
            deadline = time.monotonic() + 30
            streak = 0
            attempt = 0
            resumed = []
            while streak < 5 and time.monotonic() < deadline:
                job = f"job_resume_{attempt}"
                status, _, _ = await send(http, url, job)
                attempt += 1
                assert status in (200, 503)
                streak = streak + 1 if status == 200 else 0
                if status == 200:
                    resumed.append(job)
            assert streak == 5, "200s did not resume within 30 s of the broker's return"
            accepted = [f"job_after_{i}" for i in range(20)]
            answers = await asyncio.gather(*(send(http, url, j) for j in accepted))
            assert [status for status, _, _ in answers] == [200] * 20
            # Every 200 since the broker came back is a record, the first ones included.
            every = resumed + accepted
            if not broker.memory_only:  # the records acknowledged before the outage, kept
                every += before
            stored = await read_topic(broker.bootstrap_servers, TOPICS.raw, expect=len(every))
            keys = {r.key for r in stored}
            assert {j.encode() for j in every} <= keys
    finally:
        await server.close()
        broker.stop()


@pytest.mark.slow
async def test_a_hung_broker_gives_503s_within_the_deadline_and_every_200_is_durable(
    tmp_path: Path,
) -> None:
    """The broker stops answering (SIGSTOP: a hung process or a partition) with its data kept."""
    broker = LocalBroker(log_path=tmp_path / "broker.log")
    broker.start()
    topics = Topics("hung.raw", "hung.quarantine", "hung.dlq")
    await ensure_topics(broker.bootstrap_servers, {topics.raw: 3, topics.quarantine: 3})
    settings = ingest_settings(
        broker.bootstrap_servers, topics, WAZZA_PUBLISH_TIMEOUT_SECONDS=str(DEADLINE)
    )
    server = TestServer(build_app(settings), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/api/webhooks/wazza"))
    assert broker.pid is not None
    try:
        async with ClientSession() as http:
            await wait_ready(http, str(server.make_url("/readyz")))
            results: dict[str, int] = {}

            async def flow(lane: int, phase: str, count: int) -> None:
                for i in range(count):
                    job = f"job_{phase}_{lane}_{i}"
                    status, elapsed, _ = await send(http, url, job)
                    assert elapsed <= DEADLINE + SLACK
                    results[job] = status

            await asyncio.gather(*(flow(lane, "up", 5) for lane in range(4)))
            try:
                await hang(broker.pid)
                await asyncio.gather(*(flow(lane, "hung", 3) for lane in range(4)))
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                await flow(0, f"back{int(time.monotonic() * 1000)}", 1)
                if list(results.values())[-1] == 200:
                    break
            await asyncio.gather(*(flow(lane, "after", 5) for lane in range(4)))

            hung = {job: status for job, status in results.items() if "_hung_" in job}
            assert set(hung.values()) == {503}
            assert all(results[f"job_up_{lane}_{i}"] == 200 for lane in range(4) for i in range(5))
            assert all(
                results[f"job_after_{lane}_{i}"] == 200 for lane in range(4) for i in range(5)
            )
            accepted = {job.encode() for job, status in results.items() if status == 200}
            stored = await read_topic(broker.bootstrap_servers, topics.raw, expect=len(accepted))
            assert accepted <= {r.key for r in stored}
    finally:
        await server.close()
        broker.stop()
