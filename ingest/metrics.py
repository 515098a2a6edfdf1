"""The ingester's Prometheus metrics : base units, `_total` counters, no jobId label.

With several worker processes, prometheus-client's multiprocess mode must be switched on (the
PROMETHEUS_MULTIPROC_DIR variable) before this module is first imported; `server.py` does that.
"""

from __future__ import annotations

import os
from bisect import bisect_left

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
    "overloaded",
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

# Bound once, so that every outcome is exposed (at 0) from the start.
_OUTCOME = {outcome: REQUESTS.labels(outcome) for outcome in OUTCOMES}

# How often the per-request tallies reach the Prometheus metrics (and before every scrape).
FOLD_SECONDS = 0.5


class _Tally:
    """A histogram's observations in plain numbers until folded into prometheus-client's."""

    __slots__ = ("_bounds", "_counts", "_sum", "_target")

    def __init__(self, target: Histogram) -> None:
        self._target = target
        # Upper bounds, +Inf last (prometheus-client's own list), one count each, not cumulative.
        self._bounds: list[float] = list(target._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (`le` buckets: the first bound not below the value)."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def fold(self) -> None:
        """Add what was counted since the last fold to the Prometheus histogram."""
        if not self._sum and not any(self._counts):
            return
        buckets = self._target._buckets
        for i, count in enumerate(self._counts):
            if count:
                buckets[i].inc(count)
                self._counts[i] = 0
        self._target._sum.inc(self._sum)
        self._sum = 0.0


class HotPath:
    """The ingester's per-request metrics, counted in plain numbers and folded into the
    Prometheus metrics every FOLD_SECONDS and before each scrape.

    prometheus-client takes a lock per update and walks a histogram's buckets in Python: at five
    updates a request that was about 7 us of the ~95 us a request costs (`make bench`). Here a
    request costs a dict increment and two bisects. A scrape of one process sees its numbers
    exact; in multiprocess mode, another worker's are at most FOLD_SECONDS old. The folds use
    prometheus-client's histogram internals (`_upper_bounds`, `_buckets`, `_sum`), the same in
    single- and multiprocess mode; tests/ingest/test_metrics.py holds them to the exposition.
    """

    def __init__(self) -> None:
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        """Requests answered, by outcome."""
        self.request_seconds = _Tally(REQUEST_SECONDS)
        self.publish_raw_ok = _Tally(PUBLISH_SECONDS.labels("raw", "ok"))
        self.publish_raw_failed = _Tally(PUBLISH_SECONDS.labels("raw", "failed"))
        self.publish_quarantine_ok = _Tally(PUBLISH_SECONDS.labels("quarantine", "ok"))
        self.publish_quarantine_failed = _Tally(PUBLISH_SECONDS.labels("quarantine", "failed"))
        self.batch_records = _Tally(BATCH_RECORDS)
        self._tallies = (
            self.request_seconds,
            self.publish_raw_ok,
            self.publish_raw_failed,
            self.publish_quarantine_ok,
            self.publish_quarantine_failed,
            self.batch_records,
        )

    def fold(self, in_flight: int) -> None:
        """Move everything counted so far into the Prometheus metrics."""
        for outcome, count in self.outcomes.items():
            if count:
                _OUTCOME[outcome].inc(count)
                self.outcomes[outcome] = 0
        for tally in self._tallies:
            tally.fold()
        IN_FLIGHT.set(in_flight)


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
