"""The consumers' metrics helpers."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Histogram

from consumers.metrics import observe_all

BOUNDS = (0.005, 0.01, 0.25, 1.0, 60.0)


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in histogram.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_observe_all_counts_as_observe_one_by_one_does() -> None:
    # Bounds exactly, between them, below the first, past the last, zero, NaN (in no bucket).
    amounts = [0.0, 0.005, 0.0051, 0.01, 0.2, 0.25, 0.9999, 1.0, 59.0, 60.0, 61.0, 1e9, math.nan]
    one_by_one = Histogram("one", "d", ["service"], buckets=BOUNDS, registry=CollectorRegistry())
    at_once = Histogram("one", "d", ["service"], buckets=BOUNDS, registry=CollectorRegistry())
    for amount in amounts:
        one_by_one.labels("s").observe(amount)
    observe_all(at_once.labels("s"), amounts)
    observe_all(at_once.labels("s"), [])

    expected = _samples(one_by_one)
    got = _samples(at_once)
    assert math.isnan(expected.pop(("one_sum", "")))
    assert math.isnan(got.pop(("one_sum", "")))
    assert got == expected
    assert got[("one_bucket", "+Inf")] == len(amounts) - 1  # the NaN is in no bucket


def test_observe_all_sums_what_it_counts() -> None:
    histogram = Histogram("two", "d", ["service"], buckets=BOUNDS, registry=CollectorRegistry())
    observe_all(histogram.labels("s"), [0.001, 0.3, 2.0])
    samples = _samples(histogram)
    assert samples[("two_sum", "")] == 2.301
    assert samples[("two_count", "")] == 3
    assert samples[("two_bucket", "0.005")] == 1
    assert samples[("two_bucket", "1.0")] == 2


def test_observe_all_falls_back_to_observe_on_an_unknown_layout() -> None:
    seen: list[float] = []

    class Other:
        def observe(self, amount: float) -> None:
            seen.append(amount)

    observe_all(Other(), [1.0, 2.0])
    assert seen == [1.0, 2.0]
