"""The ingester's edges against hostile clients, as a real process on a real socket
(ingest/edges.py): what an unauthenticated client can cost is bounded, and the others are
served meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest

from tests.support.env import BIN, SECRET, subprocess_env
from tests.support.kafka import Topics
from tests.support.processes import Running, running
from tests.support.signing import completed_body, sign_wazza
from wazza_tools.dev.localbroker import LocalBroker, free_port, port_in_use

pytestmark = pytest.mark.slow

# An ingester is listening within a few seconds on a loaded 2-core machine.
START_SECONDS = 30.0
# The short deadlines the tests set, so that they are seen to pass in seconds.
HEADERS_SECONDS = 2.0
BODY_SECONDS = 1.0


def ingest(broker: LocalBroker, topics: Topics, port: int, **extra: str) -> Iterator[Running]:
    env = subprocess_env(
        WAZZA_WEBHOOK_SECRETS=SECRET,
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        KAFKA_ENABLE_IDEMPOTENCE="false",
        WAZZA_RAW_TOPIC=topics.raw,
        WAZZA_QUARANTINE_TOPIC=topics.quarantine,
        WAZZA_HEADERS_TIMEOUT_SECONDS=str(HEADERS_SECONDS),
        WAZZA_BODY_TIMEOUT_SECONDS=str(BODY_SECONDS),
        **extra,
    )
    return running([str(BIN / "wazza-ingest"), "--port", str(port)], env)


@contextlib.asynccontextmanager
async def serving(broker: LocalBroker, topics: Topics, **extra: str) -> AsyncIterator[Running]:
    port = free_port()
    with ingest(broker, topics, port, **extra) as proc:
        proc.port = port  # type: ignore[attr-defined]
        deadline = time.monotonic() + START_SECONDS
        while not port_in_use("127.0.0.1", port):
            assert proc.proc.poll() is None, proc.output()
            assert time.monotonic() < deadline, proc.output()
            await asyncio.sleep(0.05)
        # It listens before its producer has connected (a webhook meanwhile is a 503): on
        # Apache Kafka that takes a moment longer than the first requests of a test.
        await proc.wait_for_stdout('"msg":"broker connected"', max(deadline - time.monotonic(), 1))
        yield proc


async def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes; everything the server answers until it closes (or `timeout`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read()
    finally:
        writer.close()


def status_and_json(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body)


def webhook(port: int, body: bytes, **extra: str) -> bytes:
    headers = {**sign_wazza(SECRET, body, int(time.time())), **extra}
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST /api/webhooks/wazza HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{lines}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_gzip_bomb_is_refused_unread_and_costs_no_inflation(
    broker: LocalBroker, topics: Topics
) -> None:
    """A 1 MB gzip body that inflates to 1 GiB: a JSON 415 on its headers alone. Four sent in
    full at once: the ingester's CPU barely moves (nothing is inflated), and a valid webhook
    sent meanwhile gets its 200 at once."""
    bomb = gzip.compress(b"\0" * (1 << 30), compresslevel=9)
    async with serving(broker, topics) as proc:
        port = proc.port  # type: ignore[attr-defined]
        request = webhook(port, bomb, **{"Content-Encoding": "gzip"})
        headers_end = request.index(b"\r\n\r\n") + 4
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request[: headers_end + 65536])
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
        assert status_and_json(answer) == (
            415,
            {
                "error": "unsupported_content_encoding",
                "detail": "Content-Encoding must be identity",
            },
        )

        async def send_whole() -> None:
            # The server closes after its answer, with the bomb still arriving: a reset.
            with contextlib.suppress(ConnectionError):
                await exchange(port, request)

        before = cpu_seconds(proc.pid)
        started = time.monotonic()
        bombs = [asyncio.create_task(send_whole()) for _ in range(4)]
        valid = await exchange(port, webhook(port, completed_body("job_edge")))
        took = time.monotonic() - started
        await asyncio.gather(*bombs)
        spent = cpu_seconds(proc.pid) - before
    assert status_and_json(valid)[0] == 200, valid
    assert took < 2.0, took
    assert spent < 0.5, f"the ingester spent {spent:.2f} s of CPU on four bombs"


async def test_a_bad_deflate_body_is_a_415_not_a_503_and_logs_no_traceback(
    broker: LocalBroker, topics: Topics
) -> None:
    async with serving(broker, topics) as proc:
        port = proc.port  # type: ignore[attr-defined]
        body = b"this is not deflate data" * 10
        request = webhook(port, body, **{"Content-Encoding": "deflate"})
        status, doc = status_and_json(await exchange(port, request))
    assert (status, doc["error"]) == (415, "unsupported_content_encoding")
    assert "Traceback" not in proc.output()


async def test_slow_headers_are_cut_off_at_their_deadline(
    broker: LocalBroker, topics: Topics
) -> None:
    """One header line every half second (slowloris): the connection is closed about
    HEADERS_SECONDS after it opened, not held for as long as the client likes."""
    async with serving(broker, topics) as proc:
        port = proc.port  # type: ignore[attr-defined]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"POST /api/webhooks/wazza HTTP/1.1\r\nHost: x\r\n")
        closed_after = None
        for i in range(40):
            await asyncio.sleep(0.5)
            with contextlib.suppress(ConnectionError):
                writer.write(f"X-Slow-{i}: {'a' * 10}\r\n".encode())
                await writer.drain()
            if reader.at_eof() or writer.is_closing():
                closed_after = time.monotonic() - started
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.01):
                    if await reader.read(1) == b"":
                        closed_after = time.monotonic() - started
                        break
        writer.close()
    assert closed_after is not None, "the slow connection was never closed"
    assert closed_after < HEADERS_SECONDS + 2.0, closed_after


async def test_a_stalled_body_gets_a_408_at_its_deadline_and_its_bytes_back(
    broker: LocalBroker, topics: Topics
) -> None:
    async with serving(broker, topics) as proc:
        port = proc.port  # type: ignore[attr-defined]
        body = completed_body("job_edge")
        request = webhook(port, body)
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request[: len(request) - len(body) + 10])  # headers and 10 body bytes
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
        took = time.monotonic() - started
        writer.close()
    assert status_and_json(answer) == (
        408,
        {"error": "body_timeout", "detail": f"the body did not arrive within {BODY_SECONDS:g} s"},
    )
    assert BODY_SECONDS - 0.2 < took < BODY_SECONDS + 2.0, took


async def test_past_the_connection_cap_a_new_connection_gets_a_json_503_and_the_rest_are_served(
    broker: LocalBroker, topics: Topics
) -> None:
    async with serving(broker, topics, WAZZA_MAX_CONNECTIONS="4") as proc:
        port = proc.port  # type: ignore[attr-defined]
        await asyncio.sleep(0.5)  # the readiness probe's connection is gone
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        await asyncio.sleep(0.2)
        for reader, _ in held:  # all four taken: none was answered and closed
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await reader.read(1)
        # Answered on connect, before any request (one sent first may meet a reset instead:
        # the connection is closed with it unread).
        answer = await exchange(port, b"")
        assert status_and_json(answer) == (
            503,
            {"error": "too_many_connections", "detail": "try again later"},
        ), proc.output()
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.3)
        status, _ = status_and_json(await exchange(port, webhook(port, completed_body("job_edge"))))
        assert status == 200


async def test_past_the_body_budget_a_large_body_gets_a_json_503_and_webhooks_still_pass(
    broker: LocalBroker, topics: Topics
) -> None:
    """Two requests each declaring a 128 KiB body hold the whole 256 KiB budget while their
    bodies trickle: a third large one is refused at once with Retry-After, a webhook of a few
    hundred bytes is served all the same (small bodies are bounded by the connection cap),
    and once the stalled ones hit their deadline the large one is read again."""
    limit = 128 * 1024
    extra = {"WAZZA_MAX_BODY_BYTES": str(limit), "WAZZA_MAX_BODY_BYTES_IN_FLIGHT": str(2 * limit)}
    large = b'{"event":"job.completed","jobId":"job_large","pad":"' + b"x" * 100_000 + b'"}'
    async with serving(broker, topics, **extra) as proc:
        port = proc.port  # type: ignore[attr-defined]
        stalled = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /api/webhooks/wazza HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {limit}\r\n\r\n{{".encode()
            )
            await writer.drain()
            stalled.append((reader, writer))
        await asyncio.sleep(0.3)
        small = await exchange(port, webhook(port, completed_body("job_edge")))
        assert status_and_json(small)[0] == 200, small
        # Answered before the body is read: sent as headers alone, then read.
        request = webhook(port, large)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request[: request.index(b"\r\n\r\n") + 4])
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
        writer.close()
        assert status_and_json(answer) == (
            503,
            {"error": "overloaded", "detail": "too many bodies arriving; retry later"},
        )
        assert b"Retry-After: 5" in answer
        for reader, writer in stalled:  # their deadline answers them and gives the bytes back
            async with asyncio.timeout(10):
                assert status_and_json(await reader.read())[0] == 408
            writer.close()
        status, _ = status_and_json(await exchange(port, webhook(port, large)))
        assert status in (200, 202), status


async def test_malformed_http_gets_a_json_400_that_echoes_nothing_and_few_log_lines(
    broker: LocalBroker, topics: Topics
) -> None:
    garbage = b"POST /api/webhooks/wazza HTTP/1.1\r\nX-Wazza-Signature abcdef0123456789\r\n\r\n"
    async with serving(broker, topics) as proc:
        port = proc.port  # type: ignore[attr-defined]
        answers = [await exchange(port, garbage) for _ in range(30)]
        await asyncio.sleep(0.5)
    for answer in answers:
        assert status_and_json(answer) == (
            400,
            {"error": "bad_request", "detail": "the request is not valid HTTP"},
        )
        assert b"abcdef0123456789" not in answer
    output = proc.output()
    assert "abcdef0123456789" not in output
    assert "Traceback" not in output
    said = [line for line in proc.stdout.splitlines() if "malformed request" in line]
    assert 1 <= len(said) <= 2, said
