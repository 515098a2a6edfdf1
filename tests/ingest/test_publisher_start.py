"""The producer's start against a broker whose advertised address leads nowhere: bootstrap
answers, the broker it names never does. An idempotent producer (the default, for Apache Kafka)
then waits for its producer id without end inside aiokafka; the publisher bounds each start and
says so, and webhooks meanwhile get their 503 at once."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import ingest.publisher
import wazza_hooks.producers
from ingest.publisher import KafkaPublisher, PublishError
from wazza_hooks.localbroker import broker_binary, free_port, port_in_use

pytestmark = pytest.mark.slow


@contextmanager
def broker_advertising_a_dead_end() -> Iterator[str]:
    """Tansu listening on one port and advertising another, where a socket takes connections
    into its backlog and never answers; yields the bootstrap address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as dead_end:
        dead_end.bind(("127.0.0.1", 0))
        dead_end.listen(64)
        port = free_port()
        proc = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{dead_end.getsockname()[1]}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while not port_in_use("127.0.0.1", port):
                assert proc.poll() is None, "the broker exited at start"
                assert time.monotonic() < deadline, "the broker did not listen"
                time.sleep(0.05)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


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
