"""Why a Kafka producer did not start, in words that name the fix.

A broker that is away and a broker that will not take the producer look alike from aiokafka (an
exception from `start()`, retried by every caller here); the second needs a setting or a
permission changed, so it is told apart and said so. An idempotent producer (the default, for
Apache Kafka) first asks the broker for a producer id (InitProducerId): a broker without
idempotence answers it with an error (the local broker, Tansu: UnknownError) or does not offer
the request at all, and a cluster whose ACLs deny the producer's principal IdempotentWrite
answers ClusterAuthorizationFailed. aiokafka retries the answers it deems transient itself; one
it raises is the broker's considered answer.
"""

from __future__ import annotations

import logging

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    IncompatibleBrokerVersion,
    UnknownError,
    UnsupportedVersionError,
)

START_TIMEOUT_SECONDS = 30.0
"""How long a client's start() may take before it is given up and tried again. An idempotent
producer's start retries a broker that does not answer its InitProducerId without end (one whose
advertised address cannot be reached, say), saying nothing; bounded, the caller logs it."""

IDEMPOTENCE_REFUSED = "idempotence_refused"
"""The reason code (/readyz) of a broker that will not give an idempotent producer its id."""

_WITHOUT_IDEMPOTENCE = (UnknownError, UnsupportedVersionError, IncompatibleBrokerVersion)


def refusal(exc: BaseException, idempotent: bool) -> str | None:
    """What to change, when `exc` from an idempotent producer's start() is the broker refusing
    it rather than a broker out of reach; None otherwise."""
    if not idempotent or getattr(exc, "retriable", False):
        return None
    name = type(exc).__name__
    if isinstance(exc, ClusterAuthorizationFailedError):
        return (
            f"the broker refused the idempotent producer ({name}): grant its principal "
            "IdempotentWrite on the cluster, or set KAFKA_ENABLE_IDEMPOTENCE=false"
        )
    if isinstance(exc, _WITHOUT_IDEMPOTENCE):
        return (
            f"the broker did not give the idempotent producer an id ({name}); a broker without "
            "idempotence, such as the local one (wazza-hooks broker), needs "
            "KAFKA_ENABLE_IDEMPOTENCE=false"
        )
    return None


def start_problem(exc: BaseException, bootstrap_servers: str, idempotent: bool) -> str:
    """One line on why the producer did not start."""
    refused = refusal(exc, idempotent)
    if refused is not None:
        return f"{bootstrap_servers}: {refused}"
    if isinstance(exc, TimeoutError):
        return (
            f"broker {bootstrap_servers} unreachable (the client's start took over "
            f"{START_TIMEOUT_SECONDS:g} s; is its advertised address reachable from here?)"
        )
    return f"broker {bootstrap_servers} unreachable ({exc!r})"


def log_start_failure(
    logger: logging.Logger, exc: BaseException, bootstrap_servers: str, idempotent: bool, then: str
) -> str | None:
    """Log why the client did not start, followed by `then` (what happens next): at ERROR for a
    refusal, which needs a change, at WARNING for a broker out of reach. Returns the refusal."""
    refused = refusal(exc, idempotent)
    line = start_problem(exc, bootstrap_servers, idempotent)
    logger.log(logging.ERROR if refused is not None else logging.WARNING, "%s; %s", line, then)
    return refused
