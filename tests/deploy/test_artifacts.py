"""The dashboard and the alert rules read as intended: the PromQL reader finds the metric names
the way Prometheus would, and the dashboard is one Grafana can load against the provisioned
data source."""

from __future__ import annotations

import yaml

from tests.support.deploy import (
    DEPLOY,
    base_name,
    dashboard,
    dashboard_panels,
    dashboard_queries,
    label_matchers,
    metric_names,
    plain_values,
    rule_queries,
)


def test_metric_names_skip_functions_keywords_labels_and_grafana_variables() -> None:
    expr = (
        'sum by (outcome) (rate(wazza_ingest_requests_total{outcome=~"accepted|x"}'
        "[$__rate_interval]))"
        " / ignoring(le) group_left sum(increase(wazza_consumer_events_total[5m] offset 1m)) > 0.05"
        ' and on(job) up{job="wazza-ingest"} == bool 1e-3'
    )
    assert metric_names(expr) == {
        "wazza_ingest_requests_total",
        "wazza_consumer_events_total",
        "up",
    }


def test_metric_names_read_histogram_quantiles() -> None:
    expr = "histogram_quantile(0.99, sum by (le, service) (rate(x_seconds_bucket[1m])))"
    assert metric_names(expr) == {"x_seconds_bucket"}
    assert base_name("x_seconds_bucket") == "x_seconds"
    assert base_name("wazza_consumer_events_total") == "wazza_consumer_events"


def test_label_matchers_name_plain_values_and_leave_patterns_alone() -> None:
    matchers = label_matchers('rate(m_total{outcome=~"stale|conflict", job=~"wazza-.*"}[1m])')
    assert matchers == [
        ("m_total", "outcome", "=~", "stale|conflict"),
        ("m_total", "job", "=~", "wazza-.*"),
    ]
    assert plain_values("=~", "stale|conflict") == ["stale", "conflict"]
    assert plain_values("=~", "wazza-.*") == []
    assert plain_values("!=", "x") == []


def test_every_dashboard_panel_and_alert_has_a_query_on_a_wazza_metric() -> None:
    queries = dashboard_queries() + rule_queries()
    for query in queries:
        names = metric_names(query.expr)
        assert names, f"{query.origin}: no metric found in {query.expr!r}"
    data_panels = [p for p in dashboard_panels() if p["type"] != "row"]
    assert all(p.get("targets") for p in data_panels)
    alerts = {q.origin.removeprefix("rule: ") for q in rule_queries()}
    assert {
        "WazzaIngestUnavailable",
        "WazzaInvalidSignatureSpike",
        "WazzaStaleTimestampSpike",
        "WazzaConsumerLagGrowing",
        "WazzaDeadLetters",
        "WazzaNoWebhooksReceived",
        "WazzaTargetDown",
        "WazzaConsumerStalled",
        "WazzaConsumerRecordsLost",
        "WazzaConsumerLogReset",
        "WazzaQuarantinedWebhooks",
    } <= alerts


def test_dashboard_panels_use_the_provisioned_data_source_and_fit_the_grid() -> None:
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uid = provisioned["datasources"][0]["uid"]
    doc = dashboard()
    assert doc["uid"]
    assert doc["title"]
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard_panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]


def test_the_dashboard_covers_what_operators_watch() -> None:
    titles = " | ".join(p["title"].lower() for p in dashboard_panels())
    for topic in (
        "success rate",
        "by outcome",
        "ingest latency",
        "publish latency",
        "events per service",
        "duplicates",
        "stale and conflicting",
        "lag",
        "dead letters",
        "end-to-end",
        "log resets",
        "records lost",
        "since last commit",
        "quarantined",
    ):
        assert topic in titles, f"no panel about {topic!r}"
