"""The per-request tallies reach the Prometheus exposition exactly: bucket bounds (`le`), sums,
outcomes and the in-flight gauge, after a fold. The folds use prometheus-client's histogram
internals; these tests are what notices if an upgrade moves them."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import REGISTRY

from ingest import metrics


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(REGISTRY).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def delta(
    before: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    after: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    name: str,
    **labels: str,
) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_request_durations_land_in_their_le_buckets_with_their_sum() -> None:
    hot = metrics.HotPath()
    before = scrape()
    for seconds in (0.0004, 0.001, 0.0011, 7.0):  # 0.001 is a bound: it counts as <= 0.001
        hot.request_seconds.observe(seconds)
    assert delta(before, scrape(), "wazza_ingest_request_duration_seconds_count") == 0
    hot.fold(in_flight=0)
    after = scrape()
    name = "wazza_ingest_request_duration_seconds_bucket"
    assert delta(before, after, name, le="0.0005") == 1
    assert delta(before, after, name, le="0.001") == 2
    assert delta(before, after, name, le="0.002") == 3
    assert delta(before, after, name, le="5.0") == 3
    assert delta(before, after, name, le="+Inf") == 4
    assert delta(before, after, "wazza_ingest_request_duration_seconds_count") == 4
    total = delta(before, after, "wazza_ingest_request_duration_seconds_sum")
    assert abs(total - 7.0025) < 1e-9


def test_outcomes_publish_latency_batches_and_in_flight_after_a_fold() -> None:
    hot = metrics.HotPath()
    before = scrape()
    hot.outcomes["accepted"] += 3
    hot.outcomes["unavailable"] += 1
    hot.publish_raw_ok.observe(0.002)
    hot.publish_quarantine_failed.observe(3.0)
    hot.batch_records.observe(40)
    hot.fold(in_flight=7)
    after = scrape()
    assert delta(before, after, "wazza_ingest_requests_total", outcome="accepted") == 3
    assert delta(before, after, "wazza_ingest_requests_total", outcome="unavailable") == 1
    assert delta(before, after, "wazza_ingest_requests_total", outcome="forbidden") == 0
    publish = "wazza_ingest_publish_duration_seconds_count"
    assert delta(before, after, publish, topic_role="raw", result="ok") == 1
    assert delta(before, after, publish, topic_role="quarantine", result="failed") == 1
    assert delta(before, after, "wazza_ingest_batch_records_bucket", le="64.0") == 1
    assert delta(before, after, "wazza_ingest_batch_records_bucket", le="32.0") == 0
    assert after[("wazza_ingest_requests_in_flight", ())] == 7

    hot.fold(in_flight=0)  # nothing new: nothing added twice
    again = scrape()
    assert delta(after, again, "wazza_ingest_requests_total", outcome="accepted") == 0
    assert delta(after, again, publish, topic_role="raw", result="ok") == 0
    assert again[("wazza_ingest_requests_in_flight", ())] == 0
