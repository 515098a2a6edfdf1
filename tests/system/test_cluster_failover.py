"""Fail-over on a three-node Apache Kafka cluster, with every part a real process.

One KRaft cluster on loopback for the module (three JVMs, each broker and controller; topics
with replication factor 3 and min.insync.replicas=2), one `wazza-ingest` with idempotence on
(the production default) and the three `wazza-consumer` services on a SQLite store. While
`wazza-hooks simulate` sends 500 jobs (duplicates, reordering, retries like the real sender), one
node is killed with SIGKILL and started again a few seconds later: first the node that leads the
most raw-topic partitions, then the active controller. Every webhook answered 200 must end in
the store exactly once (`verify`: 0 differences, one history row per distinct event), answers
while leaders move are 200 or 503 (never a 500), and the ingester and the consumers go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

from tests.support.commands import hooks
from tests.support.env import BIN, SECRET, subprocess_env
from tests.support.kafka import unique
from tests.support.processes import Running, running
from wazza_tools.dev.apache_kafka import ApacheKafka, ApacheKafkaCluster, java_and_maven
from wazza_tools.dev.localbroker import free_port
from wazza_tools.dev.topics import ensure_topics

pytestmark = pytest.mark.slow

# The ingester and three consumers import, reach the cluster and join their groups in a few
# seconds; four Python processes starting beside three JVMs on 2 shared cores get ample room.
START_SECONDS = 60.0
# Every partition back to three in-sync replicas: a node just restarted catches up in a second
# or two; a loaded machine gets room. Killing a node while another is still behind would leave
# partitions below min.insync.replicas, which is a two-node outage, not this test's.
REPLICATED_SECONDS = 60.0
# simulate's pace in attempts per second: ~3,300 webhooks then take ~22 s, so the kill, the
# outage and the restart all fall inside the run instead of after it (unpaced, 500 jobs on this
# cluster can be over in about as long as the node takes to be fenced).
RATE = 150
# Some webhooks are acknowledged by the healthy cluster before the kill.
KILL_AFTER_SECONDS = 2.0
# How long the node stays dead (the "wait ~3 s"): as long as its broker session lasts
# (3 s in ApacheKafkaCluster), so the controller fences it and moves its leaders meanwhile.
DOWN_SECONDS = 3.0
# The paced run takes ~22 s; a retried delivery waits up to 1+2+4+8 s of backoff and 3 s per
# attempt for the ingester's 503. A stalled run is reported rather than waited on.
SIMULATE_SECONDS = 120.0
# `verify --wait`: the consumers apply what is left within seconds of simulate's end; this
# bounds a consumer that stalled after the fail-over (the 120 s).
VERIFY_WAIT_SECONDS = 120.0
# A killed node's partitions move once the controller fences it: its broker session (3 s in
# ApacheKafkaCluster) expires, after a new quorum leader is elected (~1-3 s) when it was the
# controller. Past this bound the fail-over itself is broken.
MOVE_SECONDS = 30.0
# The last history rows follow the last state change within a batch or two.
CATCH_UP_SECONDS = 30.0
# Between two looks at the cluster's metadata while waiting for it.
POLL_SECONDS = 0.2
# One admin or DescribeQuorum round trip on loopback takes milliseconds; a node that is down
# makes the client try another, and a loaded machine gets room.
ADMIN_SECONDS = 30.0

SERVICES = ("completion", "failure", "progress")


# --- the cluster --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafkaCluster]:
    """Three Apache Kafka nodes for the module's tests (never skipped: it fails, naming what is
    missing, where Java 17+ or Maven is)."""
    missing = java_and_maven()
    if missing is not None:
        pytest.fail(f"the fail-over tests run on Apache Kafka: {missing}", pytrace=False)
    nodes = ApacheKafkaCluster(tmp_path_factory.mktemp("cluster"))
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@dataclass(frozen=True)
class Topics:
    raw: str
    quarantine: str
    dlq: str


async def make_topics(bootstrap: str) -> Topics:
    """A raw/quarantine/dlq trio of this test's own: 6 partitions, 3 replicas each."""
    topics = Topics(unique("failover.raw"), unique("failover.quarantine"), unique("failover.dlq"))
    await ensure_topics(bootstrap, dict.fromkeys((topics.raw, topics.quarantine, topics.dlq), 6), 3)
    return topics


async def describe_topics(bootstrap: str, topics: list[str] | None = None) -> list[dict[str, Any]]:
    """Metadata of `topics` (None: every topic, the internal ones included)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    async with asyncio.timeout(ADMIN_SECONDS):
        await admin.start()
        try:
            described: list[dict[str, Any]] = await admin.describe_topics(topics)
            return described
        finally:
            await admin.close()


async def leader_counts(bootstrap: str, topic: str) -> Counter[int]:
    """Node id -> how many partitions of `topic` it leads."""
    [described] = await describe_topics(bootstrap, [topic])
    return Counter(p["leader"] for p in described["partitions"])


async def wait_fully_replicated(cluster: ApacheKafkaCluster) -> None:
    """Until every partition of every topic has all three nodes in sync (fails otherwise)."""
    deadline = time.monotonic() + REPLICATED_SECONDS
    behind: list[tuple[str, int, list[int]]] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            described = await describe_topics(cluster.bootstrap_servers)
            behind = [
                (t["topic"], p["partition"], p["isr"])
                for t in described
                for p in t["partitions"]
                if len(p["isr"]) < ApacheKafkaCluster.SIZE
            ]
            if described and not behind:
                return
        await asyncio.sleep(POLL_SECONDS)
    pytest.fail(f"partitions not back to 3 in-sync replicas in {REPLICATED_SECONDS} s: {behind}")


# DescribeQuorum (API key 55), which aiokafka does not have: its answer names the quorum's leader,
# the active controller. A broker forwards it to the controller. (Metadata's `controller_id` will
# not do: a KRaft broker puts a random live broker there, since clients never reach controllers.)


class _DescribeQuorumResponse_v0(Response):
    API_KEY = 55
    API_VERSION = 0
    _REPLICA = (("replica_id", Int32), ("log_end_offset", Int64), ("tags", TaggedFields))
    SCHEMA = Schema(
        ("error_code", Int16),
        (
            "topics",
            CompactArray(
                ("topic_name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("error_code", Int16),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("high_watermark", Int64),
                        ("current_voters", CompactArray(*_REPLICA)),
                        ("observers", CompactArray(*_REPLICA)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _DescribeQuorumRequest_v0(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 55
    API_VERSION = 0
    RESPONSE_TYPE = _DescribeQuorumResponse_v0
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("topic_name", CompactString("utf-8")),
                ("partitions", CompactArray(("partition_index", Int32), ("tags", TaggedFields))),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _DescribeQuorum(Request[_DescribeQuorumRequest_v0]):
    """DescribeQuorum of the metadata log, `__cluster_metadata` partition 0."""

    API_KEY = 55

    def build(
        self, request_struct_class: type[_DescribeQuorumRequest_v0]
    ) -> _DescribeQuorumRequest_v0:
        return request_struct_class([("__cluster_metadata", [(0, {})], {})], {})


async def active_controller(bootstrap: str) -> int:
    """The node id of the quorum's leader (the active controller)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    async with asyncio.timeout(ADMIN_SECONDS):
        await client.bootstrap()
        try:
            node = next(iter(client.cluster.brokers())).nodeId
            response: Any = await client.send(node, _DescribeQuorum())
        finally:
            await client.close()
    answer = response.to_object()
    assert answer["error_code"] == 0, answer
    [topic] = answer["topics"]
    [partition] = topic["partitions"]
    assert partition["error_code"] == 0, answer
    leader = partition["leader_id"]
    assert isinstance(leader, int)
    assert leader > 0, answer
    return leader


async def wait_moved_away(bootstrap: str, topic: str, node: int) -> tuple[Counter[int], int]:
    """Until `node` (killed) leads no partition of `topic` and is not the active controller:
    the leader counts and the active controller then. Fails when that takes too long."""
    deadline = time.monotonic() + MOVE_SECONDS
    leaders: Counter[int] = Counter()
    controller = node
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            leaders = await leader_counts(bootstrap, topic)
            controller = await active_controller(bootstrap)
            if node not in leaders and -1 not in leaders and controller != node:
                return leaders, controller
        await asyncio.sleep(POLL_SECONDS)
    pytest.fail(f"node {node} still leads {leaders} (controller {controller}) {MOVE_SECONDS} s on")


# --- the services -------------------------------------------------------------------------------


async def wait_http_ok(proc: Running, url: str, timeout: float) -> None:
    """Until GET `url` answers 200; fails when the process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            if proc.proc.poll() is not None:
                await proc.wait_exit(5)
                code = proc.proc.returncode
                pytest.fail(f"exited with {code} before {url} was 200\n{proc.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{url} not 200 within {timeout} s\n{proc.output()}")
            await asyncio.sleep(0.1)


@dataclass
class Stack:
    """The ingester and the consumers of one test, as processes."""

    url: str
    ingester: Running
    consumers: dict[str, Running]
    store: Path

    def all_running(self) -> dict[str, int | None]:
        """Each process's exit code, None while it runs."""
        procs = {"ingester": self.ingester, **self.consumers}
        return {name: proc.proc.poll() for name, proc in procs.items()}


@contextlib.asynccontextmanager
async def stack(cluster: ApacheKafkaCluster, topics: Topics, folder: Path) -> AsyncIterator[Stack]:
    """`wazza-ingest` and the three `wazza-consumer` services on this test's topics, ready."""
    store = folder / "wazza.db"
    kafka = {
        "KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap_servers,
        "KAFKA_ENABLE_IDEMPOTENCE": "true",
    }
    ingest_port = free_port()
    ingest_env = subprocess_env(
        WAZZA_WEBHOOK_SECRETS=SECRET,
        WAZZA_RAW_TOPIC=topics.raw,
        WAZZA_QUARANTINE_TOPIC=topics.quarantine,
        **kafka,
    )
    consumer_env = subprocess_env(
        DATABASE_URL=f"sqlite:///{store}",
        WAZZA_RAW_TOPIC=topics.raw,
        WAZZA_DLQ_TOPIC=topics.dlq,
        WAZZA_GROUP_PREFIX=unique("failover") + "-",
        **kafka,
    )
    metrics = {service: free_port() for service in SERVICES}
    with contextlib.ExitStack() as procs:
        ingester = procs.enter_context(
            running([str(BIN / "wazza-ingest"), "--port", str(ingest_port)], ingest_env)
        )
        consumers = {
            service: procs.enter_context(
                running(
                    [str(BIN / "wazza-consumer"), service, "--metrics-port", str(port)],
                    consumer_env,
                )
            )
            for service, port in metrics.items()
        }
        await wait_http_ok(ingester, f"http://127.0.0.1:{ingest_port}/readyz", START_SECONDS)
        for service, port in metrics.items():
            await wait_http_ok(consumers[service], f"http://127.0.0.1:{port}/readyz", START_SECONDS)
        yield Stack(
            f"http://127.0.0.1:{ingest_port}/api/webhooks/wazza", ingester, consumers, store
        )


def webhook_lines(ingester: Running) -> list[dict[str, Any]]:
    """The ingester's request log: one JSON line per webhook answered."""
    lines = []
    for line in ingester.stdout.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(line)
            if isinstance(doc, dict) and doc.get("msg") == "webhook":
                lines.append(doc)
    return lines


def log_problems(proc: Running) -> list[str]:
    """Its log lines at warning level or above (JSON lines on stdout), shortened."""
    found = []
    for line in proc.stdout.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(line)
            if isinstance(doc, dict) and doc.get("level") in ("warning", "error", "critical"):
                exc = str(doc.get("exc", "")).strip().splitlines()
                found.append(f"{doc['level']} {doc.get('msg')!r}" + (f" {exc[-1]}" if exc else ""))
    return found


def history_rows(store: Path) -> dict[str, int]:
    """Service -> history rows (one per distinct event it took)."""
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        doubled = conn.execute(
            "SELECT service, event_id, COUNT(*) FROM job_events GROUP BY 1, 2 HAVING COUNT(*) > 1"
        ).fetchall()
        assert doubled == [], doubled
        outcomes = dict(conn.execute("SELECT outcome, COUNT(*) FROM job_events GROUP BY 1"))
        assert "dead_lettered" not in outcomes, outcomes
        return dict(conn.execute("SELECT service, COUNT(*) FROM job_events GROUP BY 1"))
    finally:
        conn.close()


# --- the scenario -------------------------------------------------------------------------------


async def simulate_through_a_kill(
    cluster: ApacheKafkaCluster,
    tmp_path: Path,
    choose: str,
) -> None:
    """The scenario of both tests; `choose` names the node killed: `leader` (of the most
    raw-topic partitions) or `controller` (the active one)."""
    began = time.monotonic()
    for node in cluster.nodes:  # a test that failed before its restart leaves one down
        if not node.running:
            await asyncio.to_thread(node.start)
    bootstrap = cluster.bootstrap_servers
    topics = await make_topics(bootstrap)
    await wait_fully_replicated(cluster)
    expect_file = tmp_path / "expect.json"

    async with stack(cluster, topics, tmp_path) as services:
        controller = await active_controller(bootstrap)
        leaders = await leader_counts(bootstrap, topics.raw)
        if choose == "controller":
            victim_id = controller
        else:
            # The most partitions led; of nodes tied, one that is not the active controller, so
            # that this test moves partition leaders only and the other moves the quorum's.
            most = max(leaders.values())
            tied = sorted(n for n, c in leaders.items() if c == most)
            victim_id = next((n for n in tied if n != controller), tied[0])
        victim: ApacheKafka = cluster.nodes[victim_id - 1]
        assert victim.node_id == victim_id

        argv = [
            str(BIN / "wazza-hooks"), "simulate", "--jobs", "500", "--duplicates", "0.1",
            "--reorder", "0.1", "--url", services.url, "--secret", SECRET,
            "--expect", str(expect_file), "--concurrency", "16", "--rate", str(RATE),
        ]  # fmt: skip
        with running(argv) as sim:
            await asyncio.sleep(KILL_AFTER_SECONDS)
            assert sim.proc.poll() is None, f"simulate ended before the kill\n{sim.output()}"
            killed_at = time.time()
            await asyncio.to_thread(victim.kill)
            moved, new_controller = await wait_moved_away(bootstrap, topics.raw, victim_id)
            moved_seconds = time.time() - killed_at
            # The run spans the outage: deliveries went on while the leaders moved.
            assert sim.proc.poll() is None, f"simulate ended during the outage\n{sim.output()}"
            await asyncio.sleep(max(0.0, DOWN_SECONDS - moved_seconds))
            restart_started = time.monotonic()
            await asyncio.to_thread(victim.start)
            restart_seconds = time.monotonic() - restart_started
            restarted_at = time.time()
            # Not asserted: a JVM restart with log recovery takes 3-30 s on a loaded machine.
            outlasted = sim.proc.poll() is None
            code = await sim.wait_exit(SIMULATE_SECONDS)
        summary = sim.stdout
        assert code == 0, sim.output()
        assert "given up    0" in summary, sim.output()
        answers_line = next(line for line in summary.splitlines() if "answers" in line)
        answers = {k: int(v) for k, v in re.findall(r"(\w+): (\d+)", answers_line)}
        # 200 for each delivery, 503 while leaders moved; nothing else (no 500, no timeout).
        assert set(answers) <= {"200", "503"}, summary

        expect = orjson.loads(expect_file.read_bytes())
        assert expect["summary"] == {"jobs": 500, "definite": 500, "undetermined": 0}, summary

        checked = await hooks(
            "verify", "--expect", expect_file, "--wait", VERIFY_WAIT_SECONDS,
            env=subprocess_env(DATABASE_URL=f"sqlite:///{services.store}"),
            seconds=VERIFY_WAIT_SECONDS + 30,
        )  # fmt: skip
        assert checked.code == 0, checked
        assert "verify: 500 jobs, 500 match, 0 differ (0 differences)" in checked.out, checked

        # Exactly once: one history row per distinct event, per service, none doubled.
        counted = re.search(r"\((\d+) events,", summary)
        assert counted is not None, summary
        events = int(counted.group(1))
        statuses = Counter(job["expect"]["status"] for job in expect["jobs"].values())
        expected_rows = {
            "completion": statuses["completed"],
            "failure": statuses["failed"],
            "progress": events - 500,
        }
        # A late stale progress event changes no state, so verify can match before its row is
        # written: wait for the rows, then require exactly the expected count.
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while (rows := history_rows(services.store)) != expected_rows:
            if time.monotonic() > deadline or any(
                rows.get(k, 0) > n for k, n in expected_rows.items()
            ):
                break
            await asyncio.sleep(POLL_SECONDS)
        assert rows == expected_rows, (rows, expected_rows)

        # The ingester answered every webhook 200 or 503 (logged: no defect hidden as a 503).
        lines = webhook_lines(services.ingester)
        by_status = Counter(line["status"] for line in lines)
        assert set(by_status) <= {200, 503}, by_status
        unavailable = [line for line in lines if line["status"] == 503]
        reasons = Counter(line.get("reason") for line in unavailable)
        assert "internal_error" not in reasons, reasons
        # The ingester's log and simulate's count agree: every answer was received as given.
        assert by_status == {int(k): n for k, n in answers.items()}, (by_status, answers)

        # The cluster has all three nodes again, and every service is still up.
        assert all(node.running for node in cluster.nodes)
        assert set(services.all_running().values()) == {None}, services.all_running()
        for proc in (services.ingester, *services.consumers.values()):
            assert "Traceback" not in proc.stderr, proc.output()
        problems = {
            name: log_problems(proc)
            for name, proc in {"ingester": services.ingester, **services.consumers}.items()
        }
        # The ingester logs at error level only on a defect (an unexpected exception answered
        # 503, a produce request that failed other than with a KafkaError).
        assert not [p for p in problems["ingester"] if not p.startswith("warning")], problems

    window = "none"
    if unavailable:
        first, last = (f(x["ts"] for x in unavailable) - killed_at for f in (min, max))
        window = f"{len(unavailable)} from {first:+.1f} s to {last:+.1f} s after the kill"
    print(
        f"\n[{choose}] killed node {victim_id} (leaders before {dict(leaders)}, after "
        f"{dict(moved)} {moved_seconds:.1f} s after the kill; controller {controller} -> "
        f"{new_controller}); restart took "
        f"{restart_seconds:.1f} s; answers {answers}; 503 reasons {dict(reasons)}; "
        f"503s: {window} "
        f"(restart done at "
        f"{restarted_at - killed_at:+.1f} s, simulate still running: {outlasted}); 503 ms "
        f"{sorted(x['ms'] for x in unavailable)}; slowest 200 "
        f"{max(x['ms'] for x in lines if x['status'] == 200):.0f} ms; test "
        f"{time.monotonic() - began:.1f} s"
    )
    for name, found in problems.items():
        for line in found:
            print(f"  {name}: {line}")


async def test_killing_the_leader_of_most_raw_partitions_loses_no_acknowledged_webhook(
    cluster: ApacheKafkaCluster, tmp_path: Path
) -> None:
    await simulate_through_a_kill(cluster, tmp_path, "leader")


async def test_killing_the_active_controller_loses_no_acknowledged_webhook(
    cluster: ApacheKafkaCluster, tmp_path: Path
) -> None:
    await simulate_through_a_kill(cluster, tmp_path, "controller")
