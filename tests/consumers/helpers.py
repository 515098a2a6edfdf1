"""Building raw-topic records the way the ingester writes them, and reading the store back."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from consumers.store import Store
from wazza_hooks import contract


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
