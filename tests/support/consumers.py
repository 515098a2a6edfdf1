"""Building raw-topic records the way the ingester writes them, running services in the test's
own loop, and reading the store back."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from consumers import metrics as consumer_metrics
from consumers.runtime import ConsumerRuntime
from consumers.service import Service
from consumers.settings import ConsumerSettings
from consumers.store import Store, open_store
from tests.support.kafka import Topics
from wazza_hooks import contract
from wazza_tools.dev.apache_kafka import ApacheKafka
from wazza_tools.dev.localbroker import LocalBroker

# A store reaches the expected state within this long on a loaded 2-core CI machine.
SETTLE_SECONDS = 30.0


def settings_for(bootstrap: str, raw: str, dlq: str, **more: Any) -> ConsumerSettings:
    """A service's settings against the test broker and topics, in a consumer group no other
    test uses (`more`: other fields of ConsumerSettings)."""
    return ConsumerSettings(
        database_url="unused: the store is opened by the test",
        bootstrap_servers=bootstrap,
        enable_idempotence=False,
        raw_topic=raw,
        dlq_topic=dlq,
        group_prefix=f"test-{uuid.uuid4().hex[:8]}-",
        **more,
    )


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    """The store at `url`, migrated, closed on exit."""
    store = await open_store(url)
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def running(
    store: Store, settings: ConsumerSettings, *services: Service
) -> AsyncIterator[list[ConsumerRuntime]]:
    """Run services in this loop; on exit, fail if one ended on its own, stop them and surface
    their errors."""
    stop = asyncio.Event()
    runtimes = [ConsumerRuntime(service, settings, store) for service in services]
    tasks = [asyncio.create_task(r.run(stop)) for r in runtimes]
    try:
        yield runtimes
        ended = [t for t in tasks if t.done()]
        assert not ended, [t.exception() for t in ended]
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `check` until true; fail with `what` after SETTLE_SECONDS."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def body(event: str, job_id: str, at: str, **fields: Any) -> bytes:
    """A webhook body shaped like the spec's, with its event time `at` (ISO-8601)."""
    status = {"job.completed": "completed", "job.failed": "failed"}.get(event, "processing")
    return orjson.dumps(
        {"event": event, "jobId": job_id, "status": status, "timestamp": at, **fields}
    )


def progress(job_id: str, percent: int, at: str) -> bytes:
    return body(
        "job.processing",
        job_id,
        at,
        progress={
            "percent": percent,
            "stage": "rendering",
            "estimatedTimeRemaining": 100 - percent,
        },
    )


def completed(job_id: str, at: str) -> bytes:
    return body(
        "job.completed",
        job_id,
        at,
        output={"url": f"https://cdn.wazza.ai/outputs/{job_id}.mp4", "width": 1920, "height": 1080,
                "duration": 10, "format": "mp4"},
        metadata={"provider": "openai", "model": "sora-2-pro", "creditsUsed": 15},
    )  # fmt: skip


def failed(job_id: str, at: str) -> bytes:
    return body(
        "job.failed",
        job_id,
        at,
        error={"code": "CONTENT_POLICY_VIOLATION", "message": "Content violates safety policy"},
    )


def envelope_of(raw: bytes) -> contract.RawEnvelope:
    """The envelope the ingester would write for this body (event id = SHA-256 of it)."""
    return contract.RawEnvelope(
        event_type=orjson.loads(raw)["event"],
        event_id=hashlib.sha256(raw).hexdigest(),
        received_at_ms=int(time.time() * 1000),
        signature_timestamp=int(time.time()),
        content_type="application/json",
        ingester="test:0",
        scheme="wazza",
    )


async def publish(bootstrap: str, topic: str, bodies: Iterable[bytes]) -> int:
    """Write bodies to the raw topic as the ingester does (key = jobId, contract headers)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    count = 0
    try:
        for raw in bodies:
            job = orjson.loads(raw)["jobId"]
            await producer.send(topic, raw, key=job.encode(), headers=envelope_of(raw).to_headers())
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


async def rows(store: Store, sql: str, *args: Any) -> list[Sequence[Any]]:
    """Query the store."""
    async with store.reader() as tx:
        return await tx.fetchall(sql, *args)


async def job(store: Store, job_id: str) -> dict[str, Any] | None:
    """The job's row as a dict (JSON columns decoded)."""
    found = await rows(
        store,
        "SELECT job_id, status, percent, stage, eta_seconds, output, error, metadata, "
        "terminal_event_id, finished_ms FROM jobs WHERE job_id = ?",
        job_id,
    )
    if not found:
        return None
    r = found[0]
    load = lambda v: None if v is None else orjson.loads(v)  # noqa: E731
    return {
        "job_id": r[0], "status": r[1], "percent": r[2], "stage": r[3], "eta_seconds": r[4],
        "output": load(r[5]), "error": load(r[6]), "metadata": load(r[7]),
        "terminal_event_id": r[8], "finished_ms": r[9],
    }  # fmt: skip


async def history(store: Store, job_id: str) -> list[tuple[str, str, str, str]]:
    """(service, event type, event id, outcome) of the job's history, in a stable order."""
    return [
        (str(a), str(b), str(c), str(d))
        for a, b, c, d in await rows(
            store,
            "SELECT service, event_type, event_id, outcome FROM job_events WHERE job_id = ? "
            "ORDER BY service, event_id",
            job_id,
        )
    ]


def ids(bodies: Sequence[bytes]) -> list[str]:
    """The event ids of bodies."""
    return [hashlib.sha256(b).hexdigest() for b in bodies]


def settings_on(broker: LocalBroker | ApacheKafka, topics: Topics, **more: Any) -> ConsumerSettings:
    """`settings_for` the test broker and a test's topics."""
    return settings_for(broker.bootstrap_servers, topics.raw, topics.dlq, **more)


async def offsets_reach(store: Store, service: str, count: int) -> bool:
    """Whether `service` has committed `count` records in all (its offsets summed)."""
    found = await rows(
        store, "SELECT SUM(next_offset) FROM consumer_offsets WHERE service = ?", service
    )
    return bool(found) and found[0][0] is not None and int(found[0][0]) >= count


def counter(service: str, event_type: str, outcome: str) -> float:
    """The value of the consumers' events counter in this process."""
    return consumer_metrics.EVENTS.labels(service, event_type, outcome)._value.get()  # type: ignore[no-any-return]
