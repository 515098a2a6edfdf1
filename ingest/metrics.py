"""The ingester's Prometheus metrics (DESIGN.md, "Metrics"): base units, no jobId label.

With several worker processes, prometheus-client's multiprocess mode must be switched on (the
PROMETHEUS_MULTIPROC_DIR variable) before this module is first imported; `server.py` does that.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import REGISTRY

OUTCOMES = (
    "accepted",
    "quarantined",
    "invalid_signature",
    "stale_timestamp",
    "forbidden",
    "too_large",
    "unsupported_media_type",
    "method_not_allowed",
    "bad_request",
    "unavailable",
)

# From a sub-millisecond verify-and-ack to the 3 s publish deadline and the sender's 5 s.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0, 5.0,
)  # fmt: skip

REQUESTS = Counter(
    "wazza_ingest_requests",
    "Webhook requests answered, by outcome.",
    ["outcome"],
)
REQUEST_SECONDS = Histogram(
    "wazza_ingest_request_duration_seconds",
    "Time from reading a webhook request to answering it.",
    buckets=_LATENCY_BUCKETS,
)
PUBLISH_SECONDS = Histogram(
    "wazza_ingest_publish_duration_seconds",
    "Time from handing a record to the producer to the broker's ack (or the deadline).",
    ["topic_role", "result"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_RECORDS = Histogram(
    "wazza_ingest_batch_records",
    "Records per batch handed to the producer: how well requests share broker round trips.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
IN_FLIGHT = Gauge(
    "wazza_ingest_requests_in_flight",
    "Webhook requests being handled now.",
    multiprocess_mode="livesum",
)
BROKER_UP = Gauge(
    "wazza_ingest_broker_up",
    "1 when the producer is connected to the broker, else 0 (the minimum across workers).",
    multiprocess_mode="livemin",
)

# Bound children once: a label lookup per request costs more than the increment itself.
OUTCOME = {outcome: REQUESTS.labels(outcome) for outcome in OUTCOMES}
PUBLISH_RAW_OK = PUBLISH_SECONDS.labels("raw", "ok")
PUBLISH_RAW_FAILED = PUBLISH_SECONDS.labels("raw", "failed")
PUBLISH_QUARANTINE_OK = PUBLISH_SECONDS.labels("quarantine", "ok")
PUBLISH_QUARANTINE_FAILED = PUBLISH_SECONDS.labels("quarantine", "failed")
BROKER_UP.set(0)


def set_broker_up(up: bool) -> None:
    """Record the broker connection state."""
    BROKER_UP.set(1 if up else 0)


def exposition() -> bytes:
    """The text exposition of every metric: aggregated over all workers in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
