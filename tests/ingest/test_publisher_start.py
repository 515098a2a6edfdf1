"""The producer's start against a broker whose advertised address leads nowhere: bootstrap
answers, the broker it names never does. An idempotent producer (the default, for Apache Kafka)
then waits for its producer id without end inside aiokafka; the publisher bounds each start and
says so, and webhooks meanwhile get their 503 at once."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import ingest.publisher
import wazza_hooks.producers
from ingest.publisher import KafkaPublisher, PublishError
from tests.support.deadend import broker_advertising_a_dead_end

pytestmark = pytest.mark.slow


async def test_a_start_that_never_ends_is_bounded_logged_and_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ingest.publisher, "START_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(wazza_hooks.producers, "START_TIMEOUT_SECONDS", 1.0)
    caplog.set_level(logging.WARNING, logger="wazza.ingest.publisher")
    with broker_advertising_a_dead_end() as bootstrap:
        pub = KafkaPublisher(
            bootstrap, client_id="start-test", enable_idempotence=True, linger_ms=0
        )
        async with pub:
            deadline = time.monotonic() + 15
            while sum("took over 1 s" in r.getMessage() for r in caplog.records) < 2:
                assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
                await asyncio.sleep(0.1)
            started = time.monotonic()
            with pytest.raises(PublishError, match="not connected"):
                await pub.publish("t.raw", b"job_1", b"{}", [], 3.0)
            assert time.monotonic() - started < 0.5
            assert not pub.connected
    said = next(r for r in caplog.records if "took over 1 s" in r.getMessage())
    assert said.levelno == logging.WARNING
    assert f"broker {bootstrap} unreachable" in said.getMessage()
    assert "advertised address" in said.getMessage()
