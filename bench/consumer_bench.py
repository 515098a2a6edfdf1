"""Consumer benchmark (`make bench`): the services against raw consumption, in one run.

`--engine both` (the default): the same records published to Apache Kafka and read back raw,
then the same on Tansu, for comparison; everything below (floor, services, end to end) runs on
Apache Kafka, whose raw consumption is the baseline. `--engine kafka|tansu`: all on that one.

Baseline: an aiokafka consumer reading the raw topic and doing nothing with it. Then each
service (completion, failure, progress) alone, and the three together, applying the same topic
to SQLite and to PostgreSQL: about 200k records, 5 progress events per job then a completion
(80 %) or a failure, plus 10 % duplicate deliveries. Records/s counts every record a service
reads (those it skips by header included), as the baseline does.
Bars: SQLite >= 0.5 x baseline, PostgreSQL >= 0.3 x baseline (per service).

Also the three services as three processes on one store (as `make run` runs them): records/s
until all three have read the topic, events applied per second together, and the store's size per
million records read.

Then end-to-end latency: the ingester (`wazza-ingest`) takes signed webhooks at a steady
2,000 requests/s while the three services run on SQLite; p99 from the ingester's receive time to
the event applied must stay under 250 ms.

`--stores`, `--services` and `--skip-e2e` run a part only (the bar is then judged on what ran);
`--profile` writes each in-process run's cProfile top to `bench/results/` beside the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import hashlib
import io
import json
import os
import pstats
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest_bench import rss_mib  # noqa: E402 - the script's own folder: bench/

from consumers import metrics as consumer_metrics  # noqa: E402
from consumers.history import HISTORY_COLUMNS  # noqa: E402
from consumers.runtime import ConsumerRuntime  # noqa: E402
from consumers.service import BUILTIN  # noqa: E402
from consumers.settings import ConsumerSettings  # noqa: E402
from consumers.store import open_store  # noqa: E402
from wazza_hooks import contract  # noqa: E402
from wazza_tools.dev.apache_kafka import ApacheKafka, java_and_maven  # noqa: E402
from wazza_tools.dev.localbroker import LocalBroker, free_port, port_in_use  # noqa: E402
from wazza_tools.dev.topics import ensure_topics  # noqa: E402
from wazza_tools.send.webhooks import sign  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SECRET = "bench-secret-not-for-production"
SERVICES = ("completion", "failure", "progress")
"""The runs of one service alone, which the bars judge."""
BARS = {
    "sqlite": {"completion": 0.5, "failure": 0.5, "progress": 0.2},
    "postgresql": {"completion": 0.3, "failure": 0.3, "progress": 0.3},
}
"""Each service's bar alone on each store, as a ratio to raw consumption (issue #18)."""
BAR_E2E_P99_S = 0.25


def workload(records: int, seed: int = 7) -> list[bytes]:
    """Bodies: per job 5 progress events then completed or failed; 10 % duplicates on top."""
    rnd = random.Random(seed)
    per_job = 6
    jobs = int(records / 1.1 / per_job)
    streams: list[list[bytes]] = []
    for j in range(jobs):
        job = f"job_{j:07d}"
        events = []
        for k, percent in enumerate((10, 30, 50, 70, 90)):
            events.append(
                {
                    "event": "job.processing",
                    "jobId": job,
                    "status": "processing",
                    "progress": {"percent": percent, "stage": "rendering",
                                 "estimatedTimeRemaining": 300 - 60 * k},
                    "timestamp": f"2025-10-22T10:{k:02d}:00Z",
                }
            )  # fmt: skip
        if rnd.random() < 0.8:
            events.append(
                {"event": "job.completed", "jobId": job, "status": "completed",
                 "output": {"url": f"https://cdn.wazza.ai/outputs/{job}.mp4", "width": 1920,
                            "height": 1080, "duration": 10, "format": "mp4"},
                 "metadata": {"provider": "openai", "model": "sora-2-pro", "creditsUsed": 15},
                 "timestamp": "2025-10-22T10:30:00Z"}
            )  # fmt: skip
        else:
            events.append(
                {"event": "job.failed", "jobId": job, "status": "failed",
                 "error": {"code": "CONTENT_POLICY_VIOLATION", "message": "no"},
                 "timestamp": "2025-10-22T10:30:00Z"}
            )  # fmt: skip
        streams.append([orjson.dumps(e) for e in events])
    out: list[bytes] = []
    # Interleave jobs as concurrent generations do: a window of active jobs, one event each turn.
    active: list[list[bytes]] = []
    pending = iter(streams)
    while True:
        while len(active) < 500:
            nxt = next(pending, None)
            if nxt is None:
                break
            active.append(list(nxt))
        if not active:
            break
        i = rnd.randrange(len(active))
        out.append(active[i].pop(0))
        if not active[i]:
            active.pop(i)
    dups = [out[rnd.randrange(len(out))] for _ in range(len(out) // 10)]
    for d in dups:
        out.insert(rnd.randrange(len(out)), d)
    return out


async def publish(bootstrap: str, topic: str, bodies: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        now = int(time.time() * 1000)
        for raw in bodies:
            doc = orjson.loads(raw)
            env = contract.RawEnvelope(
                doc["event"], hashlib.sha256(raw).hexdigest(), now, now // 1000,
                "application/json", "bench:0", "wazza",
            )  # fmt: skip
            await producer.send(topic, raw, key=doc["jobId"].encode(), headers=env.to_headers())
        await producer.flush()
    finally:
        await producer.stop()


async def raw_baseline(bootstrap: str, topic: str, total: int, batch: int) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch,
    )
    await consumer.start()
    try:
        seen = 0
        started = None
        while seen < total:
            data = await consumer.getmany(timeout_ms=500, max_records=batch)
            for records in data.values():
                if records and started is None:
                    started = time.perf_counter()
                seen += len(records)
        elapsed = time.perf_counter() - (started or time.perf_counter())
    finally:
        await consumer.stop()
    return {"records": seen, "seconds": round(elapsed, 3), "records_per_s": round(seen / elapsed)}


async def store_floor(records: int, batch: int) -> dict[str, Any]:
    """The least a service's store work can cost: only the history row of every record (which
    is its dedup key: a random event id, jobs of 6 events as in the workload), in batch
    transactions, into a fresh SQLite file. A service that keys a share f of the records cannot
    go faster than 1 / (1/raw + f/floor) records/s, whatever the rest of its code does."""
    url = f"sqlite:///{tempfile.mkdtemp(prefix='wazza-floor-')}/floor.db"
    store = await open_store(url)
    keys = [hashlib.sha256(b"%d" % i).digest() for i in range(records)]
    started = time.perf_counter()
    try:
        for start in range(0, records, batch):
            async with store.transaction() as tx:
                rows = [
                    (f"job_{(start + i) // 6:07d}", "floor", k, None, contract.JOB_PROCESSING,
                     0, 0, 0, "applied", "t", 0, start + i)
                    for i, k in enumerate(keys[start : start + batch])
                ]  # fmt: skip
                await tx.insert_rows("event_history", HISTORY_COLUMNS, rows)
        elapsed = time.perf_counter() - started
    finally:
        await store.close()
    return {"rows": records, "seconds": round(elapsed, 3), "rows_per_s": round(records / elapsed)}


def buckets(hist: Any, service: str) -> dict[float, float]:
    """Cumulative bucket counts (le -> count) of a labelled histogram's child, +Inf included."""
    return {
        float(sample.labels["le"]): sample.value
        for metric in hist.collect()
        for sample in metric.samples
        if sample.name.endswith("_bucket") and sample.labels.get("service") == service
    }


def percentile_le(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The smallest bucket bound holding a fraction q of the observations made between."""
    delta = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    count = delta.get(float("inf"), 0.0)
    for le in sorted(delta):
        if count and delta[le] / count >= q:
            return le
    return float("inf")


async def run_services(
    store_url: str,
    bootstrap: str,
    topic: str,
    names: list[str],
    total: int,
    batch: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    """The services of `names` in this process, from the topic's start to its end; with
    `profile`, the run's cProfile top (by own time, then by cumulative time) written there."""
    profiler = cProfile.Profile() if profile is not None else None
    store = await open_store(store_url)
    settings = ConsumerSettings(
        database_url=store_url,
        bootstrap_servers=bootstrap,
        enable_idempotence=False,
        raw_topic=topic,
        dlq_topic=topic + ".dlq",
        batch_size=batch,
        group_prefix=f"bench-{uuid.uuid4().hex[:6]}-",
    )
    stop = asyncio.Event()
    runtimes = [ConsumerRuntime(BUILTIN[n], settings, store) for n in names]
    before = {n: buckets(consumer_metrics.BATCH_SECONDS, n) for n in names}
    tasks = [asyncio.create_task(r.run(stop)) for r in runtimes]
    # Timed from the moment every service has its partitions: group joins are not throughput.
    await asyncio.wait_for(asyncio.gather(*(r.assigned.wait() for r in runtimes)), 60)
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    done: dict[str, float] = {}
    try:
        while len(done) < len(names):
            for n in names:
                if n in done:
                    continue
                async with store.reader() as tx:
                    row = await tx.fetchone(
                        "SELECT SUM(next_offset) FROM consumer_offsets WHERE service = ? "
                        "AND topic = ?",
                        n,
                        topic,
                    )
                if row and row[0] is not None and int(row[0]) >= total:
                    done[n] = time.perf_counter() - started
            if len(done) < len(names):
                await asyncio.sleep(0.05)
            for t in tasks:
                if t.done() and t.exception():
                    raise t.exception()  # type: ignore[misc]
    finally:
        if profiler is not None:
            profiler.disable()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
    if profiler is not None and profile is not None:
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(30)
        await asyncio.to_thread(profile.write_text, text.getvalue())
    out: dict[str, Any] = {}
    for n in names:
        after = buckets(consumer_metrics.BATCH_SECONDS, n)
        batches = after[float("inf")] - before[n].get(float("inf"), 0.0)
        out[n] = {
            "seconds": round(done[n], 3),
            "records_per_s": round(total / done[n]),
            "batches": batches,
            "mean_batch_records": round(total / batches, 1) if batches else None,
            "p99_batch_seconds_le": percentile_le(before[n], after, 0.99),
        }
    return out


async def run_processes(
    store_url: str, bootstrap: str, topic: str, total: int, batch: int
) -> dict[str, Any]:
    """The three built-in services as three processes on one store, as `make run` runs them:
    the time until all three have read the whole topic, the events they took (history rows)
    per second together, and the store's size per million records read."""
    names = ["completion", "failure", "progress"]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": store_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "WAZZA_RAW_TOPIC": topic,
        "WAZZA_DLQ_TOPIC": topic + ".dlq",
        "WAZZA_CONSUMER_BATCH_SIZE": str(batch),
        "WAZZA_GROUP_PREFIX": f"bench-proc-{uuid.uuid4().hex[:6]}-",
    }
    store = await open_store(store_url)  # migrated before the processes race to it
    procs = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, before the measured part
            [sys.executable, "-m", "consumers.cli", n, "--metrics-port", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in names
    ]
    try:
        started: float | None = None
        while True:
            async with store.reader() as tx:
                found = await tx.fetchall(
                    "SELECT service, SUM(next_offset) FROM consumer_offsets WHERE topic = ? "
                    "GROUP BY service",
                    topic,
                )
            read = {str(s): int(o) for s, o in found if o is not None}
            # Timed from the first batch stored: process starts and group joins are not
            # throughput.
            if started is None and read:
                started = time.perf_counter()
            if len(read) == len(names) and min(read.values()) >= total:
                break
            if any(p.poll() is not None for p in procs):
                raise SystemExit("bench: a consumer process exited")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - (started or time.perf_counter())
        async with store.reader() as tx:
            row = await tx.fetchone("SELECT COUNT(*) FROM event_history")
        events = int(row[0]) if row else 0
    finally:
        stop_all(procs)
    size = await store_bytes(store, store_url)
    await store.close()
    return {
        "seconds": round(elapsed, 3),
        "records_per_s": round(total / elapsed),
        "events_taken": events,
        "events_per_s": round(events / elapsed),
        "store_bytes": size,
        "store_mb_per_million_records": round(size / total, 1),
        "store_bytes_per_event": round(size / events, 1) if events else None,
    }


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every process at once, then wait for each (SIGKILL past 20 s)."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def store_bytes(store: Any, store_url: str) -> int:
    """The store's size on disk: the SQLite file once its WAL is checkpointed into it (the WAL's
    own size depends on when readers let it be reset), or the PostgreSQL database."""
    if store_url.startswith("sqlite:"):
        async with store.reader() as tx:
            await tx.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        path = Path(store_url[len("sqlite:///") :])
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    async with store.reader() as tx:
        row = await tx.fetchone("SELECT pg_database_size(current_database())")
    return int(row[0]) if row else 0


async def scrape(http: Any, port: int) -> dict[tuple[str, str], float]:
    """(sample name, le or service) -> value of a consumer's /metrics, the parts used here."""
    from prometheus_client.parser import text_string_to_metric_families

    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "wazza_consumer_end_to_end_seconds_bucket":
                out[("e2e", sample.labels["le"])] = sample.value
            elif sample.name == "wazza_consumer_assigned_partitions":
                out[("assigned", "")] = sample.value
    return out


async def e2e_latency(
    bootstrap: str, topic: str, seconds: int, rate: int, idempotence: bool = False
) -> dict[str, Any]:
    """The ingester at a steady rate, the three services (processes) on SQLite: receive ->
    applied, read from each service's own end-to-end histogram."""
    import aiohttp

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="wazza-e2e-")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WAZZA_WEBHOOK_SECRETS": SECRET,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        # Apache Kafka keeps the production default (on); Tansu refuses idempotent producers.
        "KAFKA_ENABLE_IDEMPOTENCE": "true" if idempotence else "false",
        "WAZZA_RAW_TOPIC": topic,
        "WAZZA_DLQ_TOPIC": topic + ".dlq",
        "WAZZA_LOG_REQUESTS": "false",
        "DATABASE_URL": f"sqlite:///{tmp}/e2e.db",
        "WAZZA_GROUP_PREFIX": f"bench-e2e-{uuid.uuid4().hex[:6]}-",
    }
    names = ["progress", "completion", "failure"]
    metrics_ports = {n: free_port() for n in names}
    procs = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, before the measured part
            [sys.executable, "-m", "ingest.server", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    for n in names:
        procs.append(
            subprocess.Popen(  # noqa: ASYNC220 - started once, before the measured part
                [sys.executable, "-m", "consumers.cli", n, "--metrics-port", str(metrics_ports[n])],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    out: dict[str, Any] = {"target_rate": rate}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
            deadline = time.monotonic() + 60
            while True:
                if time.monotonic() > deadline:
                    raise SystemExit("bench: the stack did not start")
                await asyncio.sleep(0.25)
                if not port_in_use("127.0.0.1", port):
                    continue
                try:
                    states = [await scrape(http, metrics_ports[n]) for n in names]
                except aiohttp.ClientError:
                    continue
                if all(st.get(("assigned", ""), 0) > 0 for st in states):
                    break
            url = f"http://127.0.0.1:{port}/api/webhooks/wazza"
            bodies = workload(seconds * rate, seed=11)[: seconds * rate]
            statuses: dict[int, int] = {}

            async def send(raw: bytes) -> None:
                headers = sign(SECRET.encode(), raw, int(time.time()))
                async with http.post(url, data=raw, headers=headers) as resp:
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    await resp.read()

            started = time.monotonic()
            pending: set[asyncio.Task[None]] = set()
            for i, raw in enumerate(bodies):
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(send(raw))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
            out["achieved_rate"] = round(len(bodies) / (time.monotonic() - started))
            out["statuses"] = statuses
            await asyncio.sleep(3)  # the tail drains
            worst = 0.0
            for n in names:
                scraped = await scrape(http, metrics_ports[n])
                bucket = {float(le): v for (kind, le), v in scraped.items() if kind == "e2e"}
                p99 = percentile_le({}, bucket, 0.99)
                out[n] = {
                    "applied": bucket.get(float("inf"), 0.0),
                    "p50_le_s": percentile_le({}, bucket, 0.5),
                    "p99_le_s": p99,
                }
                worst = max(worst, p99)
            out["p99_le_s"] = worst
    finally:
        stop_all(procs)
    return out


async def bench_services(
    args: argparse.Namespace,
    report: dict[str, Any],
    broker: ApacheKafka | LocalBroker,
    engine: str,
    topic: str,
    total: int,
    server_dsn: str,
    create_database: Any,
    drop_database: Any,
) -> None:
    """The floor, each service against raw consumption on SQLite and PostgreSQL, and end to
    end, all on `broker` (the topic published already)."""
    base = report["baseline"]
    floor = await store_floor(total, args.batch)
    # Progress keys the processing events it is given (5 of each job's 6, plus their
    # duplicates that reach the store in a later batch): about 3/4 of all records.
    keyed = 0.75
    best = 1 / (1 / base["records_per_s"] + keyed / floor["rows_per_s"])
    floor["progress_ratio_ceiling"] = round(best / base["records_per_s"], 3)
    report["sqlite_floor"] = floor
    print(
        f"SQLite floor: history rows alone {floor['rows_per_s']} rows/s; progress "
        f"(~{keyed:.0%} of records keyed) cannot exceed x{best / base['records_per_s']:.2f}"
        " of raw",
        flush=True,
    )
    for kind in () if args.only_e2e else args.stores:
        results: dict[str, Any] = {}
        for key in args.services:

            @contextlib.asynccontextmanager
            async def fresh_store(kind: str = kind) -> Any:
                if kind == "sqlite":
                    yield f"sqlite:///{tempfile.mkdtemp(prefix='wazza-bench-')}/bench.db"
                    return
                db = f"wazza_bench_{uuid.uuid4().hex[:8]}"
                try:
                    yield await create_database(server_dsn, db)
                finally:
                    await drop_database(server_dsn, db)

            if key == "processes":
                beside = await raw_baseline(broker.bootstrap_servers, topic, total, args.batch)
                async with fresh_store() as url:
                    together = await run_processes(
                        url, broker.bootstrap_servers, topic, total, args.batch
                    )
                together["raw_records_per_s_beside"] = beside["records_per_s"]
                together["ratio"] = round(together["records_per_s"] / beside["records_per_s"], 3)
                results[key] = together
                print(
                    f"{engine:>5} {kind:>10} three processes: {together['records_per_s']:>7} "
                    f"records/s each (x{together['ratio']:.2f} of raw {beside['records_per_s']}"
                    f" just before; {together['events_per_s']} events taken/s together), "
                    f"store {together['store_mb_per_million_records']} MB per million records",
                    flush=True,
                )
                continue
            names = key.split("+")
            profile = (
                RESULTS / f"consumers-{args.stamp}-{engine}-{kind}-{key}.prof.txt"
                if args.profile
                else None
            )
            # Raw consumption again right before the run: on a shared machine the load changes
            # within minutes, and the ratio compares the two under the same load.
            beside = await raw_baseline(broker.bootstrap_servers, topic, total, args.batch)
            async with fresh_store() as url:
                res = await run_services(
                    url, broker.bootstrap_servers, topic, names, total, args.batch, profile
                )
            results[key] = res
            for n, r in res.items():
                ratio = r["records_per_s"] / beside["records_per_s"]
                r["raw_records_per_s_beside"] = beside["records_per_s"]
                r["ratio"] = round(ratio, 3)
                r["ratio_to_first_raw"] = round(r["records_per_s"] / base["records_per_s"], 3)
                print(
                    f"{engine:>5} {kind:>10} {key:>28} {n:>10}: {r['records_per_s']:>7} "
                    f"records/s (x{ratio:.2f} of raw {beside['records_per_s']} just before)  "
                    f"mean batch {r['mean_batch_records']}  "
                    f"p99 batch <= {r['p99_batch_seconds_le']} s",
                    flush=True,
                )
        report[kind] = results
    if args.skip_e2e:
        return
    e2e_topic = f"bench.e2e.{uuid.uuid4().hex[:6]}"
    await ensure_topics(broker.bootstrap_servers, {e2e_topic: 12, e2e_topic + ".dlq": 12})
    e2e = await e2e_latency(
        broker.bootstrap_servers,
        e2e_topic,
        args.e2e_seconds,
        args.rate,
        idempotence=not broker.memory_only,
    )
    report["end_to_end"] = e2e
    print(
        f"{engine}: end to end at {e2e['achieved_rate']}/s ({e2e['statuses']}): "
        f"p99 <= {e2e['p99_le_s']} s",
        flush=True,
    )


def start_broker(
    engine: str, folder: Path, overrides: dict[str, str] | None = None
) -> ApacheKafka | LocalBroker:
    if engine == "tansu":
        return LocalBroker(log_path=folder / "tansu.log")
    missing = java_and_maven()
    if missing is not None:
        raise SystemExit(f"bench: Apache Kafka cannot run here: {missing} (--engine tansu)")
    return ApacheKafka(folder / "kafka", log_path=folder / "kafka.log", overrides=overrides)


async def amain(args: argparse.Namespace) -> int:
    from tests.support.postgres import create_database, drop_database, postgres_server_dsn

    RESULTS.mkdir(parents=True, exist_ok=True)
    engines = ["kafka", "tansu"] if args.engine == "both" else [args.engine]
    # The services, the floor and end to end run on the first engine (Apache Kafka when it is
    # measured); the other one gets raw consumption only, for comparison.
    main_engine = engines[0]
    overrides = dict(item.split("=", 1) for item in args.kafka_set)
    report: dict[str, Any] = {
        "benchmark": "consumers",
        "records": args.records,
        "engines": engines,
        "services_engine": main_engine,
        "raw": {},
        "kafka_overrides": dict(item.split("=", 1) for item in args.kafka_set),
        "loadavg_at_start": list(os.getloadavg()),
    }
    server_dsn, pg_cleanup = postgres_server_dsn()
    folder = Path(tempfile.mkdtemp(prefix="wazza-consumer-bench-"))
    bodies = workload(args.records)
    # Out of the collector's sight from here: every full collection would otherwise walk the
    # workload's list of 200k bodies (~20 ms each, several a second), in the raw baseline and
    # the services alike, a cost no consumer process has. It made raw consumption ~25 % and the
    # services 5-10 % slower than they are (bench/results/notes-20261206e.md).
    gc.freeze()
    total = len(bodies)
    report["records"] = total
    try:
        for engine in engines:
            with start_broker(engine, folder, overrides) as broker:
                topic = f"bench.raw.{uuid.uuid4().hex[:6]}"
                await ensure_topics(broker.bootstrap_servers, {topic: 12, topic + ".dlq": 12})
                print(f"{engine}: publishing {len(bodies)} records...", flush=True)
                await publish(broker.bootstrap_servers, topic, bodies)
                base = await raw_baseline(broker.bootstrap_servers, topic, total, args.batch)
                base["broker_rss_mib"] = rss_mib(broker.pid)
                report["raw"][engine] = base
                print(
                    f"{engine}: raw consumption {base['records_per_s']} records/s "
                    f"(broker RSS {base['broker_rss_mib']} MiB)",
                    flush=True,
                )
                if engine != main_engine:
                    continue
                report["baseline"] = base
                await bench_services(
                    args, report, broker, engine, topic, total, server_dsn,
                    create_database, drop_database,
                )  # fmt: skip
    finally:
        pg_cleanup()
        shutil.rmtree(folder, ignore_errors=True)

    # Each service run alone, against its own bar (a part not run is not judged).
    judged = [
        (kind, name, report[kind][name][name]["ratio"], bar)
        for kind, bars in BARS.items()
        for name, bar in bars.items()
        if name in report.get(kind, {})
    ]
    missed = [(kind, name, ratio, bar) for kind, name, ratio, bar in judged if ratio < bar]
    passed = not missed and (
        "end_to_end" not in report or report["end_to_end"]["p99_le_s"] <= BAR_E2E_P99_S
    )
    report["bar"] = {**BARS, "e2e_p99_s": BAR_E2E_P99_S, "passed": passed}
    report["loadavg_at_end"] = list(os.getloadavg())
    out = RESULTS / f"consumers-{args.stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        "each service alone: "
        + (", ".join(f"{k} {n} x{r:.2f} (bar {b})" for k, n, r, b in judged) or "none run")
        + f"; e2e p99 <= {report.get('end_to_end', {}).get('p99_le_s')} s (bar {BAR_E2E_P99_S})"
        + f": {'PASS' if passed else 'FAIL'}"
        + (" (missed: " + ", ".join(f"{k} {n}" for k, n, _, _ in missed) + ")" if missed else "")
    )
    print(
        "raw consumption: "
        + ", ".join(f"{e} {r['records_per_s']} records/s" for e, r in report["raw"].items())
    )
    print(f"written: {out.relative_to(ROOT)}")
    return 0 if passed else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--e2e-seconds", type=int, default=20)
    parser.add_argument("--only-e2e", action="store_true", help="skip the throughput part")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end part")
    parser.add_argument(
        "--stores",
        type=lambda text: text.split(","),
        default=["sqlite", "postgresql"],
        help="comma-separated: sqlite, postgresql (default both)",
    )
    parser.add_argument(
        "--services",
        type=lambda text: text.split(","),
        default=[*SERVICES, "completion+failure+progress", "processes"],
        help="comma-separated runs: completion, failure, progress (each alone), "
        "completion+failure+progress (together in one process), processes (the three as "
        "processes on one store); default all",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="write each in-process run's cProfile top to bench/results/ (slows the run)",
    )
    parser.add_argument(
        "--kafka-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a server property of the Apache Kafka node, over server_properties() (repeatable;"
        " for experiments: the reference runs set none)",
    )
    parser.add_argument(
        "--engine",
        choices=("kafka", "tansu", "both"),
        default="both",
        help="both (default): raw consumption on Apache Kafka and on Tansu, the services and "
        "end to end on Kafka; kafka or tansu: everything on that one",
    )
    args = parser.parse_args()
    # One name for the run's files: its JSON and its profiles.
    args.stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
