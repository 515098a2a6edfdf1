"""Properties of the HTTP handler over real HTTP: arbitrary requests never give a 500 and never
publish anything unverified; any signed body is either published or quarantined, byte for byte."""

from __future__ import annotations

import asyncio
import http.client
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.app import build_app
from ingest.edges import EdgeLimits, start_runner
from tests.support.env import SECRET
from tests.support.kafka import Topics, ingest_settings
from tests.support.signing import sign_wazza

HEADER_NAMES = [
    "X-Wazza-Signature",
    "X-Wazza-Timestamp",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "Content-Type",
    "X-Forwarded-For",
    "Content-Encoding",
    "X-Anything",
]
# Header values http.client will send: visible ASCII and spaces, no line breaks.
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


@dataclass
class RecordingPublisher:
    """A publisher that acknowledges at once and remembers what it was given."""

    published: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)

    async def publish(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        ack_timeout: float,
    ) -> None:
        self.published.append((topic, key, value))

    async def ready(self) -> bool:
        return True

    problem = None

    def __repr__(self) -> str:  # Hypothesis prints the fixture: not megabytes of bodies
        return f"RecordingPublisher({len(self.published)} records)"


@dataclass
class Running:
    port: int
    publisher: RecordingPublisher


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    """The real application on a loopback port, served from a thread of its own."""
    publisher = RecordingPublisher()
    topics = Topics("prop.raw", "prop.quarantine", "prop.dlq")
    settings = ingest_settings(
        "127.0.0.1:1", topics, WAZZA_STANDARD_WEBHOOK_SECRETS="whsec_c2VjcmV0"
    )
    app = build_app(settings, publisher=publisher)
    loop = asyncio.new_event_loop()
    # The server as wazza-ingest runs it: no decompression, the edges' limits.
    runner = loop.run_until_complete(start_runner(app, EdgeLimits.of(settings)))
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield Running(port, publisher)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def request(port: int, method: str, headers: dict[str, str], body: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, "/api/webhooks/wazza", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=6),
    body=st.binary(max_size=2048),
    method=st.sampled_from(["POST", "POST", "POST", "PUT", "GET"]),
)
def test_arbitrary_requests_never_get_a_500_and_never_publish(
    running: Running, headers: dict[str, str], body: bytes, method: str
) -> None:
    before = len(running.publisher.published)

    status = request(running.port, method, headers, body)

    assert 400 <= status < 500
    assert len(running.publisher.published) == before


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=2048))
def test_any_signed_body_is_published_or_quarantined_byte_for_byte(
    running: Running, body: bytes
) -> None:
    before = len(running.publisher.published)

    status = request(running.port, "POST", sign_wazza(SECRET, body, int(time.time())), body)

    assert status in (200, 202)
    [(topic, _, value)] = running.publisher.published[before:]
    assert value == body
    assert topic == ("prop.raw" if status == 200 else "prop.quarantine")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    encoding=st.sampled_from(["gzip", "deflate", "br", "identity", "x-unknown", ""]),
    size=st.integers(min_value=0, max_value=900_000),
    signed=st.booleans(),
)
def test_bodies_of_any_size_and_encoding_get_no_5xx_but_503_no_unverified_2xx_bounded_memory(
    running: Running, encoding: str, size: int, signed: bool
) -> None:
    """Large bodies, compressed or claiming to be, signed or not: the answer is a 2xx only for
    a verified body, never a 5xx (the test publisher always acknowledges), and the server's
    memory stays within a few times the largest body (nothing is inflated or kept)."""
    body = (b"\x1f\x8b" + bytes(range(256)) * (size // 256 + 1))[:size]
    headers = {"Content-Type": "application/json"}
    if signed:
        headers.update(sign_wazza(SECRET, body, int(time.time())))
    if encoding:
        headers["Content-Encoding"] = encoding
    published = len(running.publisher.published)
    before = rss_bytes()

    try:
        status = request(running.port, "POST", headers, body)
    except (BrokenPipeError, ConnectionResetError):
        # Answered (415) and closed before the body was read, while it was still being sent:
        # only a request refused for its encoding is.
        status = 415
        assert encoding not in ("", "identity")

    del running.publisher.published[published:]  # the test double's copy, not the server's
    assert status < 500
    if status < 300:
        assert signed, status
        assert encoding in ("", "identity"), (status, encoding)
    assert rss_bytes() - before < 64 * 1024 * 1024
