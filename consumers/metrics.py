"""The consumer services' Prometheus metrics, labelled by service (Prometheus conventions: base
units, `_total` counters)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from wazza_hooks import contract

EVENTS = Counter(
    "wazza_consumer_events",
    "Events a service took, by event type and outcome.",
    ["service", "event_type", "outcome"],
)
BATCH_RECORDS = Histogram(
    "wazza_consumer_batch_records",
    "Records per batch.",
    ["service"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)
BATCH_SECONDS = Histogram(
    "wazza_consumer_batch_duration_seconds",
    "Time to apply one batch in the store (one transaction).",
    ["service"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
END_TO_END_SECONDS = Histogram(
    "wazza_consumer_end_to_end_seconds",
    "From the ingester receiving a webhook to its event applied in the store.",
    ["service"],
    # Fine around the 250 ms bar, coarse past it (a backlog is minutes, not milliseconds).
    buckets=(
        0.005,
        0.01,
        0.025,
        0.05,
        0.075,
        0.1,
        0.15,
        0.2,
        0.25,
        0.35,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        30.0,
        60.0,
        300.0,
    ),
)
LAG = Gauge(
    "wazza_consumer_lag_records",
    "Records in the partition not yet applied by the service (cleared on revoke).",
    ["service", "partition"],
)
ASSIGNED = Gauge(
    "wazza_consumer_assigned_partitions", "Partitions assigned to this instance.", ["service"]
)
REBALANCES = Counter("wazza_consumer_rebalances", "Partition assignments received.", ["service"])
STORE_ERRORS = Counter(
    "wazza_consumer_store_errors", "Batches that failed on the store and were retried.", ["service"]
)
DEDUP_PRUNED = Counter(
    "wazza_consumer_dedup_keys_pruned",
    "History rows (the dedup keys) deleted after the retention window.",
    ["service"],
)


def observe_all(histogram: Any, amounts: Sequence[float]) -> None:
    """`histogram.observe(a)` for each of `amounts` (a labelled child), with one update per bucket
    touched instead of two locked ones per amount: a service observes every event it applies.

    prometheus_client has no bulk observe; this adds to the child's own bucket and sum values
    (its `_upper_bounds`, `_buckets`, `_sum`, as `observe` does), and falls back to `observe`
    one by one should a version of the library lay them out otherwise."""
    if not amounts:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            histogram.observe(amount)
        return
    counts = [0] * len(bounds)
    for amount in amounts:
        # observe() counts an amount in the first bucket whose bound is >= it (the last is
        # +Inf), and a NaN in none.
        if amount == amount:
            counts[bisect.bisect_left(bounds, amount)] += 1
    total.inc(sum(amounts))
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)


def event_type_label(event_type: str) -> str:
    """A bounded label: the known types, else `other` (the sender may invent new ones)."""
    return event_type if event_type in contract.KNOWN_EVENT_TYPES else "other"


LOG_RESETS = Counter(
    "wazza_consumer_log_resets",
    "Partitions whose stored offsets belonged to another log (a broker that started over, a "
    "topic recreated, a truncated partition), taken again from the new log's first record.",
    ["service"],
)
RECORDS_LOST = Counter(
    "wazza_consumer_records_lost",
    "Records deleted by the broker's retention before the service read them (passed over).",
    ["service"],
)
DEAD_LETTERS_KEPT = Counter(
    "wazza_consumer_dead_letters_kept",
    "Dead letters the dead-letter topic refused (too large, invalid), kept in the store instead.",
    ["service"],
)
LAST_COMMIT = Gauge(
    "wazza_consumer_last_commit_timestamp_seconds",
    "When the service last committed a batch to the store (its start, before the first).",
    ["service"],
)

# The outcomes of EVENTS, each label set made at start so that its first increase is seen.
OUTCOMES = ("applied", "duplicate", "stale", "conflict", "skipped", "dead_lettered")


def start_series(service: str) -> None:
    """Make every labelled series of `service` exist at 0 from the start: a counter that first
    appears at 1 shows no increase to `increase()`, and an alert on it would miss that first
    dead letter, reset or loss."""
    for event_type in (*sorted(contract.KNOWN_EVENT_TYPES), "other"):
        for outcome in OUTCOMES:
            EVENTS.labels(service, event_type, outcome)
    for counter in (
        REBALANCES,
        STORE_ERRORS,
        DEDUP_PRUNED,
        LOG_RESETS,
        RECORDS_LOST,
        DEAD_LETTERS_KEPT,
    ):
        counter.labels(service)
