"""Why a Kafka producer did not start, in words that name the fix.

A broker that is away and a broker that refuses the producer look alike from aiokafka (an
exception from `start()`, retried by every caller here); the second needs a setting changed, so
it is told apart and said so. The local broker (Tansu) refuses idempotent producers: a producer
with `KAFKA_ENABLE_IDEMPOTENCE` on (the default, for Apache Kafka) fails at InitProducerId with
an error answer.
"""

from __future__ import annotations

from aiokafka.errors import BrokerResponseError

IDEMPOTENCE_REFUSED = "idempotence_refused"
"""The reason code of a broker that answered the idempotent producer's start with an error."""


def idempotence_refused(exc: BaseException, idempotent: bool) -> bool:
    """True when `exc`, raised by an idempotent producer's start(), is the broker's error answer
    (to InitProducerId, or to the API versions it needs) rather than a broker out of reach."""
    return idempotent and isinstance(exc, BrokerResponseError)


def start_problem(exc: BaseException, bootstrap_servers: str, idempotent: bool) -> str:
    """One line on why the producer did not start."""
    if idempotence_refused(exc, idempotent):
        return (
            f"the broker at {bootstrap_servers} refused an idempotent producer "
            f"({type(exc).__name__}); a broker without idempotence, such as the local one "
            "(wazza-hooks broker), needs KAFKA_ENABLE_IDEMPOTENCE=false"
        )
    return f"broker {bootstrap_servers} unreachable ({exc!r})"
