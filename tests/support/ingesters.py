"""A real ingester (its application and Kafka producer) on a loopback port, and posting signed
webhooks to it, for the tests of the tools that read back what it published."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from ingest.app import build_app
from tests.support.env import SECRET
from tests.support.kafka import Topics, ingest_settings
from tests.support.signing import completed_body, sign_wazza

WEBHOOK_PATH = "/api/webhooks/wazza"
# The ingester's producer connects within a second or two; a loaded machine gets room.
READY_SECONDS = 30.0


@asynccontextmanager
async def serving(bootstrap: str, topics: Topics, **overrides: str) -> AsyncIterator[str]:
    """The ingester on the test broker and topics, ready; yields its webhook URL."""
    server = TestServer(
        build_app(ingest_settings(bootstrap, topics, **overrides)), host="127.0.0.1"
    )
    await server.start_server()
    try:
        base = str(server.make_url("/")).rstrip("/")
        async with ClientSession() as http:
            deadline = time.monotonic() + READY_SECONDS
            while True:
                async with http.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise AssertionError("the ingester never became ready")
        yield base + WEBHOOK_PATH
    finally:
        await server.close()


async def warm_up(url: str) -> None:
    """Deliver one event to each topic, as Wazza would (again after a 503): a topic just
    created may have no leader yet, and the ingester's first publish to it waits for one.
    Their job is `job_warm_up`; a 503 may still have landed, so it may have copies."""
    for body, accepted in ((completed_body("job_warm_up"), 200), (b"not JSON", 202)):
        deadline = time.monotonic() + READY_SECONDS
        while (status := (await deliver(url, body))[0]) != accepted:
            assert status == 503, status
            assert time.monotonic() < deadline, "the ingester never published"


async def deliver(url: str, body: bytes) -> tuple[int, object]:
    """POST `body` signed with the tests' secret; (status, JSON answer)."""
    headers = sign_wazza(SECRET, body, int(time.time()))
    async with ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())
