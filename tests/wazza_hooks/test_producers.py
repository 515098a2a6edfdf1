"""Telling a broker that refuses an idempotent producer from one out of reach."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    IncompatibleBrokerVersion,
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    UnknownError,
    UnsupportedVersionError,
)

from wazza_hooks.producers import refusal, start_problem


@pytest.mark.parametrize(
    "exc", [UnknownError(), UnsupportedVersionError(), IncompatibleBrokerVersion("no API 22")]
)
def test_a_broker_without_idempotence_is_told_to_the_setting(exc: Exception) -> None:
    said = refusal(exc, idempotent=True)
    assert said is not None
    assert "KAFKA_ENABLE_IDEMPOTENCE=false" in said
    assert type(exc).__name__ in said


def test_a_cluster_denying_idempotent_writes_is_told_to_its_acls_first() -> None:
    said = refusal(ClusterAuthorizationFailedError(), idempotent=True)
    assert said is not None
    assert said.index("IdempotentWrite") < said.index("KAFKA_ENABLE_IDEMPOTENCE=false")


@pytest.mark.parametrize(
    "exc",
    [
        KafkaConnectionError("refused"),
        NodeNotReadyError(),
        RequestTimedOutError(),  # a transient answer: aiokafka raises it, we retry
        KafkaTimeoutError(),
        OSError("unreachable"),
    ],
)
def test_a_broker_out_of_reach_or_slow_is_not_a_refusal(exc: Exception) -> None:
    assert refusal(exc, idempotent=True) is None
    assert start_problem(exc, "kafka:9092", idempotent=True).startswith(
        "broker kafka:9092 unreachable"
    )


def test_a_producer_that_is_not_idempotent_is_never_told_to_turn_idempotence_off() -> None:
    assert refusal(UnknownError(), idempotent=False) is None
    assert refusal(ClusterAuthorizationFailedError(), idempotent=False) is None
