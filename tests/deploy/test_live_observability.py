"""The dashboard and the alert rules against the running services, scraped by a real Prometheus.

One test starts what `deploy/compose.yaml` runs, as local processes: `wazza-ingest` and the
three consumer services (on the session's Tansu broker and a PostgreSQL database of the test's
own), and Debian's `prometheus` with a generated scrape config and the real alert rules. It
sends two waves of signed webhooks that produce every outcome the dashboard shows (accepted,
quarantined, invalid signature, stale timestamp; applied, duplicate, stale, conflict,
dead-lettered), then proves that every target is up, that every rule evaluates, that each of
the dashboard's key queries returns data, and that every metric name (and every label value
matched outright) in the dashboard and the rules is exported by a running process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.consumers import publish
from tests.support.deploy import (
    PROMETHEUS_OWN_SERIES,
    RULES,
    Query,
    base_name,
    dashboard_queries,
    label_matchers,
    metric_names,
    plain_values,
    require_tool,
    rule_queries,
)
from tests.support.env import BIN, SECRET, subprocess_env
from tests.support.kafka import Topics, make_topics
from tests.support.processes import Running, running
from tests.support.signing import completed_body, failed_body, sign_wazza
from wazza_tools.dev.localbroker import LocalBroker, free_port

pytestmark = pytest.mark.slow

SERVICES = {"completion": "job.completed", "failure": "job.failed", "progress": "job.processing"}
WEBHOOK_PATH = "/api/webhooks/wazza"
# Fast scrapes and evaluations so that rates have points within seconds of a wave.
SCRAPE_INTERVAL = "1s"
# What the dashboard's Grafana variables stand for in the queries sent here: a window that holds
# both waves and the quiet scrapes before them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m"}
# Imports, binding, the broker and PostgreSQL: seconds; ample room on a loaded CI machine.
START_SECONDS = 30.0
# A consumer group join on Tansu is held ~5 s (its rebalance delay), then each service applies
# a wave in milliseconds; Prometheus sees it at its next 1 s scrape.
WAVE_SECONDS = 60.0
# Dashboard queries that stay empty on a healthy system: their metric appears on a store
# outage or a dedup-key prune, neither of which this test causes. Their names are still
# checked against /metrics like every other.
QUIET_WHEN_HEALTHY = ("wazza_consumer_store_errors_total", "wazza_consumer_dedup_keys_pruned_total")
# Dashboard queries that must return a positive, finite value after the waves: the series an
# operator reads first (a gauge such as lag or in-flight may rightly be 0).
KEY_POSITIVE = (
    "Delivery success rate",
    "Requests by outcome",
    "Ingest latency",
    "Publish latency",
    "Events per service by outcome",
    "Duplicates",
    "Stale and conflicting",
    "Dead letters",
    "End-to-end latency",
)


@dataclass
class Stack:
    """The running processes and where they answer."""

    ingest_port: int
    consumer_ports: dict[str, int]
    prometheus_port: int
    procs: list[Running]
    bootstrap_servers: str
    raw_topic: str

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def scrape_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.ingest_port}/metrics"] + [
            f"http://127.0.0.1:{port}/metrics" for port in self.consumer_ports.values()
        ]

    def output(self) -> str:
        return "\n".join(f"=== {' '.join(p.argv[:2])} ===\n{p.output()}" for p in self.procs)


def prometheus_config(stack_ports: tuple[int, dict[str, int]], prometheus_port: int) -> str:
    """The compose scrape config's jobs, with static targets on loopback, and the real rules."""
    ingest_port, consumer_ports = stack_ports
    return yaml.safe_dump(
        {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "wazza-ingest",
                    "static_configs": [{"targets": [f"127.0.0.1:{ingest_port}"]}],
                },
                {
                    "job_name": "wazza-consumer",
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{p}" for p in consumer_ports.values()]}
                    ],
                },
                {
                    "job_name": "prometheus",
                    "static_configs": [{"targets": [f"127.0.0.1:{prometheus_port}"]}],
                },
            ],
        }
    )


@contextlib.contextmanager
def started_stack(
    broker: LocalBroker, topics: Topics, database_url: str, workdir: Path
) -> Iterator[Stack]:
    """The ingester, the three consumer services and Prometheus, killed on the way out."""
    ingest_port = free_port()
    consumer_ports = {name: free_port() for name in SERVICES}
    prometheus_port = free_port()
    common = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "WAZZA_RAW_TOPIC": topics.raw,
    }
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_config((ingest_port, consumer_ports), prometheus_port))
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                running(
                    [str(BIN / "wazza-ingest"), "--port", str(ingest_port)],
                    subprocess_env(
                        **common,
                        WAZZA_WEBHOOK_SECRETS=SECRET,
                        WAZZA_QUARANTINE_TOPIC=topics.quarantine,
                        WAZZA_LOG_REQUESTS="false",
                    ),
                )
            )
        ]
        prefix = f"test-deploy-{uuid.uuid4().hex[:8]}-"
        for name, port in consumer_ports.items():
            argv = [str(BIN / "wazza-consumer"), name, "--metrics-port", str(port)]
            env = subprocess_env(
                **common,
                DATABASE_URL=database_url,
                WAZZA_DLQ_TOPIC=topics.dlq,
                WAZZA_GROUP_PREFIX=prefix,
            )
            procs.append(stack.enter_context(running(argv, env)))
        prometheus = [
            require_tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
            "--log.level=warn",
        ]
        procs.append(stack.enter_context(running(prometheus)))
        yield Stack(
            ingest_port,
            consumer_ports,
            prometheus_port,
            procs,
            broker.bootstrap_servers,
            topics.raw,
        )


# --- talking to the processes -----------------------------------------------------------------


async def eventually(check: Callable[[], Any], stack: Stack, timeout: float, what: str) -> None:
    """Poll an async check until it returns true; fail with every process's output when a
    process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            if await check():
                return
        exited = [p for p in stack.procs if p.proc.poll() is not None]
        if exited:
            pytest.fail(f"{exited[0].argv[0]} exited before {what}\n{stack.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{stack.output()}")
        await asyncio.sleep(0.2)


async def query(session: aiohttp.ClientSession, stack: Stack, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector; fails the test when Prometheus refuses the query."""
    async with session.get(f"{stack.prometheus}/api/v1/query", params={"query": expr}) as resp:
        doc = await resp.json()
    assert doc["status"] == "success", f"{expr!r}: {doc}"
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


async def total(session: aiohttp.ClientSession, stack: Stack, expr: str) -> float:
    result = await query(session, stack, expr)
    return float(result[0]["value"][1]) if result else 0.0


@dataclass
class Wave:
    """The webhooks of one wave and what they lead to."""

    requests: list[tuple[bytes, dict[str, str]]]
    records: int
    """How many of them reach the raw topic (each service reads every one)."""
    direct: list[bytes]
    """Bodies written straight to the raw topic: what the ingester would quarantine, so that a
    service has something to dead-letter."""


def processing(job_id: str, percent: int, timestamp: str) -> bytes:
    return orjson.dumps(
        {
            "event": "job.processing",
            "jobId": job_id,
            "status": "processing",
            "progress": {"percent": percent, "stage": "rendering", "estimatedTimeRemaining": 60},
            "timestamp": timestamp,
        }
    )


def completed_at(job_id: str, timestamp: str) -> bytes:
    doc = orjson.loads(completed_body(job_id))
    doc["timestamp"] = timestamp
    return orjson.dumps(doc)


def make_wave() -> Wave:
    """One of every outcome the dashboard shows, each certain to happen (one job's events share
    a partition and are sent one after another; the services are separate groups)."""
    tag = uuid.uuid4().hex[:10]
    now = int(time.time())

    def good(body: bytes) -> tuple[bytes, dict[str, str]]:
        return body, sign_wazza(SECRET, body, now)

    a, b, c, d, e = (f"job_{tag}_{x}" for x in "abcde")
    raw = [
        # Job e never ends: its progress is applied whichever service reads first. Job a's
        # progress races the completion service (another group): applied or, once a is
        # completed, stale; its 40 % is stale either way.
        good(processing(e, 30, "2025-10-22T10:00:00Z")),  # applied
        good(processing(a, 25, "2025-10-22T10:00:00Z")),  # applied (or stale)
        good(processing(a, 50, "2025-10-22T10:01:00Z")),  # applied (or stale)
        good(processing(a, 40, "2025-10-22T10:02:00Z")),  # stale: behind 50 %, or a completed
        good(completed_at(a, "2025-10-22T10:05:00Z")),  # applied
        good(completed_at(a, "2025-10-22T10:05:00Z")),  # the same bytes again: duplicate
        good(completed_at(b, "2025-10-22T10:05:00Z")),  # applied
        good(completed_at(b, "2025-10-22T10:04:00Z")),  # earlier terminal event: conflict
        good(failed_body(c)),  # applied
    ]
    not_json = b'{"event": "job.completed", "jobId": '
    unusable = processing(d, 150, "2025-10-22T10:00:00Z")
    refused = [
        (not_json, sign_wazza(SECRET, not_json, now)),  # 202, quarantined
        good(unusable),  # 202, quarantined: no service could apply a percent of 150
        (completed_body(a), sign_wazza("not-the-secret", completed_body(a), now)),  # 401
        (completed_body(a), sign_wazza("not-the-secret", completed_body(a), now)),  # 401
        (completed_body(a), sign_wazza(SECRET, completed_body(a), now - 3600)),  # 401 stale
    ]
    # Written straight to the raw topic, the same body is dead-lettered by the progress service.
    return Wave(raw + refused, records=len(raw), direct=[unusable])


async def send(session: aiohttp.ClientSession, stack: Stack, wave: Wave) -> list[int]:
    statuses = []
    for body, headers in wave.requests:
        async with session.post(
            f"http://127.0.0.1:{stack.ingest_port}{WEBHOOK_PATH}", data=body, headers=headers
        ) as resp:
            await resp.read()
            statuses.append(resp.status)
    return statuses


async def scrape(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as resp:
        assert resp.status == 200, url
        return await resp.text()


def exported(expositions: list[str]) -> tuple[set[str], dict[str, set[tuple[str, str]]]]:
    """Base names of every metric family in the expositions, and per base name the
    (label, value) pairs its samples carry."""
    names: set[str] = set()
    labels: dict[str, set[tuple[str, str]]] = {}
    for text in expositions:
        for family in text_string_to_metric_families(text):
            names.add(base_name(family.name))
            pairs = labels.setdefault(base_name(family.name), set())
            for sample in family.samples:
                pairs.update(sample.labels.items())
    return names, labels


def instant(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


# --- the test ---------------------------------------------------------------------------------


@pytest.fixture
async def stack(broker: LocalBroker, postgres_dsn: str, tmp_path: Path) -> AsyncIterator[Stack]:
    topics = await make_topics(broker.bootstrap_servers, partitions=3)
    with started_stack(broker, topics, postgres_dsn, tmp_path) as running_stack:
        yield running_stack


async def test_prometheus_scrapes_every_service_and_the_dashboard_and_alerts_have_data(
    stack: Stack,
) -> None:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def all_targets_up() -> bool:
            up = await query(session, stack, "up")
            return len(up) == 5 and all(r["value"][1] == "1" for r in up)

        await eventually(all_targets_up, stack, START_SECONDS, "every target up")

        async def assigned() -> bool:
            result = await query(
                session, stack, "sum by (service) (wazza_consumer_assigned_partitions)"
            )
            return {r["metric"]["service"]: r["value"][1] for r in result} == dict.fromkeys(
                SERVICES, "3"
            )

        await eventually(assigned, stack, WAVE_SECONDS, "each service assigned 3 partitions")

        # Two waves: the first makes the consumers' labelled series exist, the second moves
        # them between scrapes, so their rates are positive, not merely present.
        expected = 0
        for _ in range(2):
            wave = make_wave()
            statuses = await send(session, stack, wave)
            assert statuses == [200] * wave.records + [202, 202, 401, 401, 401], stack.output()
            await publish(stack.bootstrap_servers, stack.raw_topic, wave.direct)
            expected += (wave.records + len(wave.direct)) * len(SERVICES)
            target = expected

            async def consumed(target: int = target) -> bool:
                return await total(session, stack, "sum(wazza_consumer_events_total)") >= target

            await eventually(consumed, stack, WAVE_SECONDS, f"{target} events counted")
            await asyncio.sleep(2.5)  # two more scrapes after the last change

        # Every outcome the dashboard shows happened, as the services count them.
        outcomes = await query(
            session, stack, "sum by (service, outcome) (wazza_consumer_events_total)"
        )
        seen = {(r["metric"]["service"], r["metric"]["outcome"]) for r in outcomes}
        for pair in [
            ("progress", "applied"),
            ("progress", "stale"),
            ("progress", "dead_lettered"),
            ("completion", "applied"),
            ("completion", "duplicate"),
            ("completion", "conflict"),
            ("failure", "applied"),
            ("failure", "skipped"),
        ]:
            assert pair in seen, f"{pair} not counted; seen {sorted(seen)}"

        # The dashboard's queries: every one is valid, and returns data unless its metric only
        # moves on trouble; the key ones a positive, finite value.
        for q in dashboard_queries():
            result = await query(session, stack, instant(q.expr))
            if any(name in q.expr for name in QUIET_WHEN_HEALTHY):
                continue
            assert result, f"{q.origin}: no data for {instant(q.expr)!r}"
            if any(key in q.origin for key in KEY_POSITIVE):
                values = [float(r["value"][1]) for r in result]
                assert any(math.isfinite(v) and v > 0 for v in values), (
                    f"{q.origin}: {instant(q.expr)!r} -> {values}"
                )

        # Every alert rule was loaded from the real file and evaluates without error.
        async def rules_evaluated() -> bool:
            async with session.get(f"{stack.prometheus}/api/v1/rules") as resp:
                groups = (await resp.json())["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return len(rules) == len(rule_queries()) and all(r["health"] == "ok" for r in rules)

        await eventually(rules_evaluated, stack, 20.0, "every rule evaluated without error")
        # The dead letters of the waves are what WazzaDeadLetters is for: it fires (no `for`).
        async with session.get(f"{stack.prometheus}/api/v1/alerts") as resp:
            alerts = {a["labels"]["alertname"] for a in (await resp.json())["data"]["alerts"]}
        assert "WazzaDeadLetters" in alerts
        assert "WazzaTargetDown" not in alerts

        # Every metric name in the dashboard and the rules is exported by a running process,
        # and every label value they match outright is one a process exports.
        expositions = [await scrape(session, url) for url in stack.scrape_urls()]
    names, labels = exported(expositions)
    queries: list[Query] = dashboard_queries() + rule_queries()
    for q in queries:
        for name in metric_names(q.expr):
            if name in PROMETHEUS_OWN_SERIES:
                continue
            assert base_name(name) in names, f"{q.origin}: {name} is exported by no process"
        for metric, label, op, value in label_matchers(q.expr):
            if metric in PROMETHEUS_OWN_SERIES:
                continue
            for wanted in plain_values(op, value):
                assert (label, wanted) in labels[base_name(metric)], (
                    f"{q.origin}: no {metric} sample has {label}={wanted!r}"
                )
