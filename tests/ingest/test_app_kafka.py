"""The ingester over real HTTP against the real broker: what a 2xx puts in Kafka, and what a 4xx
keeps out of it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from ingest.app import build_app
from tests.support.env import SECRET
from tests.support.kafka import Topics, ingest_settings, read_topic
from tests.support.signing import (
    completed_body,
    failed_body,
    processing_body,
    sign_legacy,
    sign_standard,
    sign_wazza,
)
from wazza_hooks import contract
from wazza_tools.dev.localbroker import LocalBroker

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


ServerFactory = Callable[..., Any]


@pytest.fixture
async def serve(broker: LocalBroker, topics: Topics) -> AsyncIterator[ServerFactory]:
    """Start the real application (real Kafka producer) on a loopback port; returns its URL."""
    servers: list[TestServer] = []

    async def start(**overrides: str) -> str:
        settings = ingest_settings(broker.bootstrap_servers, topics, **overrides)
        server = TestServer(build_app(settings), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        base = str(server.make_url("/"))
        async with ClientSession() as http:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                async with http.get(base + "readyz") as resp:
                    if resp.status == 200:
                        return base.rstrip("/")
        raise AssertionError("the ingester never became ready")

    yield start
    for server in servers:
        await server.close()


async def post(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    async with ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def now() -> int:
    return int(time.time())


async def test_a_signed_event_lands_in_kafka_keyed_by_job_with_its_exact_bytes_and_headers(
    serve: ServerFactory, broker: LocalBroker, topics: Topics
) -> None:
    base = await serve()
    body = completed_body("job_abc123")
    ts = now()
    before_ms = int(time.time() * 1000)

    status, answer = await post(base + "/api/webhooks/wazza", body, sign_wazza(SECRET, body, ts))

    assert (status, answer) == (200, {"received": True})
    [record] = await read_topic(broker.bootstrap_servers, topics.raw, expect=1)
    assert record.key == b"job_abc123"
    assert record.value == body
    headers = contract.headers_dict(record.headers)
    assert headers[contract.H_EVENT_TYPE] == b"job.completed"
    assert headers[contract.H_EVENT_ID] == hashlib.sha256(body).hexdigest().encode()
    assert headers[contract.H_SIGNATURE_TIMESTAMP] == str(ts).encode()
    assert headers[contract.H_CONTENT_TYPE] == b"application/json"
    assert before_ms <= int(headers[contract.H_RECEIVED_AT_MS]) <= int(time.time() * 1000)
    assert headers[contract.H_INGESTER]
    envelope = contract.RawEnvelope.from_headers(record.headers)
    assert envelope.scheme == "wazza"


async def test_every_event_type_of_the_spec_and_an_unknown_one_reach_the_raw_topic(
    serve: ServerFactory, broker: LocalBroker, topics: Topics
) -> None:
    base = await serve()
    cancelled = orjson.dumps({"event": "job.cancelled", "jobId": "job_4", "status": "cancelled"})
    bodies = [
        completed_body("job_1"),
        failed_body("job_2"),
        processing_body("job_3", 45),
        cancelled,
    ]
    for body in bodies:
        status, _ = await post(base + "/api/webhooks/wazza", body, sign_wazza(SECRET, body, now()))
        assert status == 200

    records = await read_topic(broker.bootstrap_servers, topics.raw, expect=4)

    by_key = {r.key: contract.RawEnvelope.from_headers(r.headers).event_type for r in records}
    assert by_key == {
        b"job_1": "job.completed",
        b"job_2": "job.failed",
        b"job_3": "job.processing",
        b"job_4": "job.cancelled",
    }


async def test_identical_retries_share_one_event_id(
    serve: ServerFactory, broker: LocalBroker, topics: Topics
) -> None:
    base = await serve()
    body = failed_body("job_retry")
    for delay in (0, 1):  # a retry is re-signed with a fresh timestamp, the body is the same
        status, _ = await post(
            base + "/api/webhooks/wazza", body, sign_wazza(SECRET, body, now() + delay)
        )
        assert status == 200

    records = await read_topic(broker.bootstrap_servers, topics.raw, expect=2)

    ids = {contract.RawEnvelope.from_headers(r.headers).event_id for r in records}
    assert len(records) == 2
    assert ids == {hashlib.sha256(body).hexdigest()}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json at all", "invalid_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b'{"event": "job.completed", "status": "completed"}', "missing_job_id"),
        (b'{"event": "job.completed", "jobId": 42}', "invalid_job_id"),
        (b'{"jobId": "job_q"}', "missing_event_type"),
        # What a consumer could not apply is quarantined here, by the contract both share.
        (
            b'{"event": "job.completed", "jobId": "job_q", "output": '
            + b'{"n": ' * 300
            + b"1"
            + b"}" * 301,
            "too_deep",
        ),
        (
            b'{"event": "job.completed", "jobId": "job_q", '
            b'"timestamp": "0001-01-01T00:00:00+00:01"}',
            "invalid_timestamp",
        ),
        (
            b'{"event": "job.processing", "jobId": "job_q", "progress": {"percent": 150}}',
            "invalid_progress",
        ),
    ],
)
async def test_a_signed_but_unusable_body_is_quarantined_with_its_reason_and_answered_202(
    serve: ServerFactory, broker: LocalBroker, topics: Topics, body: bytes, reason: str
) -> None:
    base = await serve()

    status, answer = await post(base + "/api/webhooks/wazza", body, sign_wazza(SECRET, body, now()))

    assert status == 202
    assert answer == {"received": True, "quarantined": reason}
    [record] = await read_topic(broker.bootstrap_servers, topics.quarantine, expect=1)
    assert record.value == body
    assert contract.headers_dict(record.headers)[contract.H_QUARANTINE_REASON] == reason.encode()
    assert await read_topic(broker.bootstrap_servers, topics.raw, expect=0, timeout=1) == []


async def test_a_completion_with_a_stray_progress_over_100_is_published_not_quarantined(
    serve: ServerFactory, broker: LocalBroker, topics: Topics
) -> None:
    """Checks follow the event type: a completion's `progress` is not its business."""
    base = await serve()
    body = (
        b'{"event": "job.completed", "jobId": "job_stray", "status": "completed", '
        b'"progress": {"percent": 100.5}, "timestamp": "2025-10-22T10:30:00Z"}'
    )

    status, answer = await post(base + "/api/webhooks/wazza", body, sign_wazza(SECRET, body, now()))

    assert (status, answer) == (200, {"received": True})
    [record] = await read_topic(broker.bootstrap_servers, topics.raw, expect=1)
    assert record.value == body


@pytest.mark.parametrize(
    "spoil",
    [
        lambda h: h.update({"X-Wazza-Signature": "0" * 64}),
        lambda h: h.pop("X-Wazza-Signature"),
        lambda h: h.pop("X-Wazza-Timestamp"),
        lambda h: h.update({"X-Wazza-Timestamp": "yesterday"}),
    ],
    ids=["wrong-signature", "no-signature", "no-timestamp", "garbled-timestamp"],
)
async def test_a_request_failing_verification_gets_401_and_publishes_nothing(
    serve: ServerFactory,
    broker: LocalBroker,
    topics: Topics,
    spoil: Callable[[dict[str, str]], Any],
) -> None:
    base = await serve()
    body = completed_body("job_forged")
    headers = sign_wazza(SECRET, body, now())
    spoil(headers)

    status, answer = await post(base + "/api/webhooks/wazza", body, headers)

    assert status == 401
    assert isinstance(answer["error"], str)
    assert answer["error"] != ""
    for topic in (topics.raw, topics.quarantine):
        assert await read_topic(broker.bootstrap_servers, topic, expect=0, timeout=1) == []


async def test_a_timestamp_past_the_tolerance_gets_401_stale_timestamp(
    serve: ServerFactory,
) -> None:
    base = await serve(WAZZA_SIGNATURE_TOLERANCE_SECONDS="60")
    body = completed_body("job_old")

    status, answer = await post(
        base + "/api/webhooks/wazza", body, sign_wazza(SECRET, body, now() - 61)
    )

    assert (status, answer["error"]) == (401, "stale_timestamp")


async def test_a_standard_webhooks_request_is_accepted_and_its_webhook_id_is_the_event_id(
    serve: ServerFactory, broker: LocalBroker, topics: Topics
) -> None:
    base = await serve(WAZZA_STANDARD_WEBHOOK_SECRETS=WHSEC)
    body = completed_body("job_std")

    status, _ = await post(
        base + "/api/webhooks/wazza", body, sign_standard(WHSEC, "msg_2Kx9", body, now())
    )

    assert status == 200
    [record] = await read_topic(broker.bootstrap_servers, topics.raw, expect=1)
    envelope = contract.RawEnvelope.from_headers(record.headers)
    assert (envelope.event_id, envelope.scheme) == ("msg_2Kx9", "standard")


async def test_the_legacy_body_only_signature_is_refused_unless_opted_in(
    serve: ServerFactory,
) -> None:
    body = completed_body("job_legacy")
    headers = sign_legacy(SECRET, body)
    strict = await serve()
    lax = await serve(WAZZA_ALLOW_LEGACY_SIGNATURE="true")

    assert (await post(strict + "/api/webhooks/wazza", body, headers))[0] == 401
    assert (await post(lax + "/api/webhooks/wazza", body, headers))[0] == 200


async def test_the_allowlist_believes_forwarded_for_only_from_a_trusted_proxy(
    serve: ServerFactory,
) -> None:
    body = completed_body("job_ip")
    sender_ip = "52.89.214.238"  # one of the sender's published addresses
    behind_proxy = await serve(
        WAZZA_ALLOWED_IPS=f"{sender_ip}/32", WAZZA_TRUSTED_PROXIES="127.0.0.1/32"
    )
    no_proxy = await serve(WAZZA_ALLOWED_IPS=f"{sender_ip}/32")

    def signed(forwarded: str) -> dict[str, str]:
        return {**sign_wazza(SECRET, body, now()), "X-Forwarded-For": forwarded}

    url = "/api/webhooks/wazza"
    assert (await post(behind_proxy + url, body, signed(sender_ip)))[0] == 200
    assert (await post(behind_proxy + url, body, signed("203.0.113.9")))[0] == 403
    # A client cannot smuggle an allowed address in front of its own.
    assert (await post(behind_proxy + url, body, signed(f"{sender_ip}, 203.0.113.9")))[0] == 403
    # Nor in a header line of its own before the one its proxy appends (HAProxy's forwardfor
    # adds a second line rather than extending the client's): every line counts, in order.
    two_lines = CIMultiDict(signed(sender_ip))
    two_lines.add("X-Forwarded-For", "203.0.113.9")
    assert (await post(behind_proxy + url, body, two_lines))[0] == 403
    # Without a trusted proxy the header is ignored: the peer (127.0.0.1) is not allowed.
    assert (await post(no_proxy + url, body, signed(sender_ip)))[0] == 403


async def test_a_body_over_the_limit_gets_413_whether_declared_or_streamed(
    serve: ServerFactory, broker: LocalBroker, topics: Topics
) -> None:
    base = await serve(WAZZA_MAX_BODY_BYTES="2048")
    big = orjson.dumps({"event": "job.completed", "jobId": "job_big", "pad": "x" * 4096})
    headers = sign_wazza(SECRET, big, now())

    declared_status, declared = await post(base + "/api/webhooks/wazza", big, headers)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    async with (
        ClientSession() as http,
        http.post(base + "/api/webhooks/wazza", data=chunks(), headers=headers) as resp,
    ):
        streamed_status, streamed = resp.status, await resp.json()

    assert (declared_status, declared["error"]) == (413, "too_large")
    assert (streamed_status, streamed["error"]) == (413, "too_large")
    assert await read_topic(broker.bootstrap_servers, topics.raw, expect=0, timeout=1) == []


async def test_a_body_that_is_not_json_by_content_type_gets_415(serve: ServerFactory) -> None:
    base = await serve()
    body = completed_body("job_form")
    headers = {**sign_wazza(SECRET, body, now()), "Content-Type": "text/plain"}

    status, answer = await post(base + "/api/webhooks/wazza", body, headers)

    assert (status, answer["error"]) == (415, "unsupported_media_type")


async def test_other_methods_get_405_with_allow_and_other_paths_a_json_404(
    serve: ServerFactory,
) -> None:
    base = await serve()
    async with ClientSession() as http:
        async with http.get(base + "/api/webhooks/wazza") as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "POST"
            assert (await resp.json())["error"] == "method_not_allowed"
        async with http.post(base + "/elsewhere", data=b"{}") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "not_found"


async def test_health_readiness_and_metrics_answer(serve: ServerFactory) -> None:
    base = await serve()
    body = completed_body("job_metrics")
    await post(base + "/api/webhooks/wazza", body, sign_wazza(SECRET, body, now()))

    async with ClientSession() as http:
        async with http.get(base + "/healthz") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "ok"})
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 200
        async with http.get(base + "/metrics") as resp:
            text = await resp.text()

    assert 'wazza_ingest_requests_total{outcome="accepted"}' in text
    assert "wazza_ingest_broker_up 1.0" in text
    assert "wazza_ingest_publish_duration_seconds_bucket" in text
    assert "wazza_ingest_requests_in_flight" in text


@pytest.mark.slow  # starts a broker of its own
async def test_an_ingester_started_before_its_broker_answers_503_then_serves_once_it_is_up(
    tmp_path: Any,
) -> None:
    offline = LocalBroker(log_path=tmp_path / "late.log")  # its port is free: nothing listens
    topics = Topics("late.raw", "late.quarantine", "late.dlq")
    settings = ingest_settings(offline.bootstrap_servers, topics, WAZZA_PUBLISH_TIMEOUT_SECONDS="1")
    server = TestServer(build_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("/api/webhooks/wazza"))
        body = completed_body("job_late")
        async with ClientSession() as http:
            async with http.get(server.make_url("/readyz")) as resp:
                assert resp.status == 503
            status, answer = await post(url, body, sign_wazza(SECRET, body, now()))
            assert status == 503
            assert answer["error"] == "broker_unavailable"

            offline.start()
            from wazza_tools.dev.topics import ensure_topics

            await ensure_topics(offline.bootstrap_servers, {"late.raw": 2, "late.quarantine": 2})
            deadline = time.monotonic() + 20
            while True:
                status, _ = await post(url, body, sign_wazza(SECRET, body, now()))
                if status == 200 or time.monotonic() > deadline:
                    break
        assert status == 200
        records = await read_topic(offline.bootstrap_servers, "late.raw", expect=1)
        assert [r.key for r in records] == [b"job_late"]
    finally:
        await server.close()
        offline.stop()


def test_build_app_answers_503_not_500_when_the_handler_breaks() -> None:
    """An unexpected error inside the handler is answered 503 (the sender retries), never 500."""
    from ingest.publisher import PublishError

    class Exploding:
        async def publish(self, *args: object) -> None:
            raise RuntimeError("a bug")

        async def ready(self) -> bool:
            return True

        problem = None

    import asyncio

    async def scenario() -> tuple[int, str]:
        topics = Topics("x.raw", "x.q", "x.d")
        app = build_app(ingest_settings("127.0.0.1:1", topics), publisher=Exploding())
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            body = completed_body("job_bug")
            status, answer = await post(
                str(server.make_url("/api/webhooks/wazza")), body, sign_wazza(SECRET, body, now())
            )
            return status, answer["error"]
        finally:
            await server.close()

    assert PublishError.retriable
    assert asyncio.run(scenario()) == (503, "internal_error")
