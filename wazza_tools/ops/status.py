"""`wazza-hooks status`: is everything healthy? One command, one screen (or one JSON document).

It asks every part at once, each bounded by `--timeout`, so that a hung component cannot hang
it: the broker (reachable, its engine, the topics' offsets, the services' consumer groups),
each ingester (`/readyz`, and `/metrics` sampled twice for its rate), each consumer process
given (`/readyz`, and the service it runs from its `/metrics`), and the store (reachable, its
size, its schema version; the services' stored offsets and their newest history row, the dead
letters kept in it). A service's lag is the broker's end offsets minus the offsets in the store
(the consumers' truth), summed over the raw topic's partitions.

Exit codes: 0 healthy (warnings, such as dead letters, allowed unless `--strict`); 1 at least
one problem, each one line on stderr naming what and where; 2 a bad argument or setting. The
report itself goes to stdout; `--json` is the documented stable format (docs/cli.md).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, TypeVar

import aiohttp
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.protocol.api import Request, RequestStruct, Response, ResponseHeader_v0
from aiokafka.protocol.types import CompactArray, CompactString, Int16, Int32, Schema, TaggedFields
from prometheus_client.parser import text_string_to_metric_families

from consumers.history import last_kept_ms
from consumers.log_identity import TopicIdRequest
from consumers.settings import ConsumerSettings
from consumers.store import StoreError, Tx, open_store
from consumers.store.migrations import KNOWN
from wazza_hooks import contract
from wazza_hooks.config import ConfigError, Env, decimal_number, plural, redact_url, whole_number
from wazza_tools.ops.connect import OpsError, offset_bounds, partitions_of
from wazza_tools.ops.migrate import store_version
from wazza_tools.options import add_bootstrap_servers, add_database_url
from wazza_tools.render import iso_time, print_json, printable

_T = TypeVar("_T")

DEFAULT_INGESTER = "http://localhost:8080"
# What the consumers take as DATABASE_URL (consumers/settings.py).
_STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
# A healthy component answers in milliseconds; a loaded one within a second. Past this it is
# reported as not answering, so that `status` stays a quick smoke check after a deploy.
DEFAULT_TIMEOUT_SECONDS = 3.0
# One second between two scrapes of an ingester's counters: long enough for a rate at a few
# requests a second, short enough for a command a person waits on. 0: totals only.
DEFAULT_SAMPLE_SECONDS = 1.0
# Records a service may be behind before it counts as a problem: a few seconds of a busy
# system's traffic (the consumers apply thousands of records a second), far from a stuck one.
DEFAULT_MAX_LAG = 10_000

_EPILOG = """\
examples:
  wazza-hooks status
  wazza-hooks status --consumer http://127.0.0.1:9101 --consumer http://127.0.0.1:9102 \\
      --consumer http://127.0.0.1:9103
  wazza-hooks status --ingester http://10.0.0.5:8080 --ingester http://10.0.0.6:8080 --json
  DATABASE_URL=postgresql://wazza@db/wazza wazza-hooks status --max-lag 50000 --strict

Exit 0 when everything answered and is ready, 1 with one line per problem on stderr (the broker
or the store unreachable, an ingester or consumer not ready, pending migrations, a service with
no running consumer or lagging more than --max-lag); dead letters are a warning, a problem
with --strict. The store and the broker's settings are the consumers' (DATABASE_URL,
KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL, KAFKA_SSL_*, KAFKA_SASL_*, WAZZA_RAW_TOPIC,
WAZZA_DLQ_TOPIC, WAZZA_QUARANTINE_TOPIC, WAZZA_GROUP_PREFIX).
"""


def add_status_parser(sub: Any) -> None:
    """Register the `status` subcommand."""
    parser = sub.add_parser(
        "status",
        help="is everything healthy? the broker, ingesters, consumers, store, lag, dead letters",
        description=(
            "Ask the broker, the ingesters, the consumer services and the store at once, each "
            "within --timeout, and print one screen: what answers, how far each service is "
            "behind, when it last applied an event, the dead letters and quarantined events."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--ingester",
        action="append",
        type=_http_url,
        metavar="URL",
        help=f"an ingester's base URL (repeatable; default {DEFAULT_INGESTER})",
    )
    parser.add_argument(
        "--consumer",
        action="append",
        type=_http_url,
        default=[],
        metavar="URL",
        help="a consumer process's metrics URL (repeatable; `wazza-hooks dev` serves them on "
        "http://127.0.0.1:9101, 9102 and 9103); default: none, readiness then comes from the "
        "consumer groups alone",
    )
    add_database_url(parser)
    add_bootstrap_servers(parser)
    parser.add_argument(
        "--max-lag",
        type=whole_number(0, 10**12),
        default=DEFAULT_MAX_LAG,
        metavar="N",
        help=f"records a service may be behind before it is a problem (default {DEFAULT_MAX_LAG})",
    )
    parser.add_argument(
        "--timeout",
        type=decimal_number(0.1, 60),
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"how long each part may take to answer (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    parser.add_argument(
        "--sample",
        type=decimal_number(0, 60),
        default=DEFAULT_SAMPLE_SECONDS,
        metavar="SECONDS",
        help="time between two scrapes of an ingester's counters, for its rate "
        f"(default {DEFAULT_SAMPLE_SECONDS:g}; 0: totals only)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="warnings (dead letters) are problems too (exit 1)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON in the documented, stable format"
    )


def _http_url(text: str) -> str:
    """An argparse `type`: an http(s) base URL, without a trailing slash."""
    if not text.startswith(("http://", "https://")) or len(text.split("://", 1)[1]) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text.rstrip("/")


def run_status(args: argparse.Namespace) -> int:
    """Run `wazza-hooks status`; returns the exit code."""
    # aiokafka logs each failed connection attempt; the report says it in one line.
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    try:
        settings = ConsumerSettings.from_env()
        quarantine_topic = Env().text("WAZZA_QUARANTINE_TOPIC", contract.QUARANTINE_TOPIC)
    except ConfigError as exc:
        print(f"wazza-hooks: {exc}", file=sys.stderr)
        return 2
    if args.database_url and not args.database_url.startswith(_STORE_SCHEMES):
        print(
            "wazza-hooks: --database-url must start with sqlite:/// or postgresql://",
            file=sys.stderr,
        )
        return 2
    settings = dataclasses.replace(
        settings,
        database_url=args.database_url or settings.database_url,
        bootstrap_servers=args.bootstrap_servers or settings.bootstrap_servers,
    )
    report = asyncio.run(
        _gather(
            settings,
            quarantine_topic,
            args.ingester or [DEFAULT_INGESTER],
            args.consumer,
            args.timeout,
            args.sample,
        )
    )
    document = _document(report, settings, quarantine_topic, args.max_lag, args.strict)
    if args.json:
        print_json(document)
    else:
        sys.stdout.write(_screen(document))
    for problem in document["problems"]:
        print(f"wazza-hooks: {problem}", file=sys.stderr)
    for warning in document["warnings"]:
        print(f"wazza-hooks: warning: {warning}", file=sys.stderr)
    return 0 if document["healthy"] else 1


# --- probing ----------------------------------------------------------------------------------


@dataclass
class _Broker:
    error: str | None = None
    engine: str = "unknown"
    version: str | None = None
    metadata_version: str | None = None
    cluster_id: str | None = None
    brokers: int | None = None
    offsets: dict[str, tuple[dict[int, int], dict[int, int]]] = field(default_factory=dict)
    """topic -> (first offset held, end offset) per partition."""
    missing: list[str] = field(default_factory=list)
    """Topics the broker does not have (the message of each)."""
    groups: dict[str, int] | None = None
    """consumer group -> its members; None when the broker would not say."""


@dataclass
class _Store:
    error: str | None = None
    version: int | None = None
    size_bytes: int | None = None
    facts: _StoreFacts | None = None


@dataclass
class _StoreFacts:
    offsets: dict[str, dict[int, int]]
    """service -> partition -> next offset on the raw topic."""
    last_taken_ms: dict[str, int | None]
    """service -> when it last took an event (its newest history row)."""
    kept_dead_letters: int
    redriven: set[tuple[int, int]]
    """(partition, offset) of the dead-letter records already sent back."""
    database_bytes: int | None
    """PostgreSQL's own size of the database (SQLite's is the file's)."""


@dataclass
class _Http:
    url: str
    error: str | None = None
    status: int | None = None
    body: Any = None
    scrapes: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    """Each scrape of `/metrics`: when (monotonic seconds) and its samples (see `_samples`)."""


@dataclass
class _Report:
    broker: _Broker
    store: _Store
    ingesters: list[_Http]
    consumers: list[_Http]


async def _gather(
    settings: ConsumerSettings,
    quarantine_topic: str,
    ingesters: Sequence[str],
    consumers: Sequence[str],
    bound: float,
    sample: float,
) -> _Report:
    """Every probe at once; each ends within its bound whatever the component does."""
    topics = (settings.raw_topic, quarantine_topic, settings.dlq_topic)
    # aiohttp's bound is per request: an ingester's two scrapes take up to 2 x bound + sample.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=bound)) as session:
        broker, store, https = await asyncio.gather(
            _bounded(_probe_broker(settings, topics), bound, _Broker),
            _bounded(_probe_store(settings), bound, _Store),
            asyncio.gather(
                *(_probe_http(session, url, 2 if sample > 0 else 1, sample) for url in ingesters),
                *(_probe_http(session, url, 1, 0) for url in consumers),
            ),
        )
    return _Report(broker, store, https[: len(ingesters)], https[len(ingesters) :])


async def _bounded(work: Awaitable[_T], bound: float, failed: Callable[..., _T]) -> _T:
    """`work`'s result, or `failed(error=...)` when it did not finish within `bound` seconds."""
    try:
        async with asyncio.timeout(bound):
            return await work
    except TimeoutError:
        return failed(error=f"no answer within {bound:g} s")


async def _probe_broker(settings: ConsumerSettings, topics: Sequence[str]) -> _Broker:
    found = _Broker()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **settings.kafka_security.client_options(),
    )
    try:
        await consumer.start()
        client = consumer._client
        found.brokers = len(client.cluster.brokers())
        node = client.get_random_node()
        # Metadata v10 for the cluster id (aiokafka's own Metadata stops before it).
        cluster = await _maybe(client.send(node, TopicIdRequest(settings.raw_topic)))
        found.cluster_id = None if cluster is None else cluster.cluster_id
        versions = await _maybe(client.send(node, _ApiVersions()))
        found.engine, found.version, found.metadata_version = _engine(versions, found.cluster_id)
        for topic in topics:
            try:
                partitions = await partitions_of(consumer, topic)
                found.offsets[topic] = await offset_bounds(consumer, partitions)
            except OpsError as exc:
                found.missing.append(str(exc))
        found.groups = await _groups(settings)
    except (KafkaError, OSError) as exc:
        # aiokafka's own words for it name every address it resolved; one is enough here.
        cause = "no connection" if isinstance(exc, KafkaConnectionError) else str(exc)
        found.error = f"unreachable ({cause})"
    finally:
        await consumer.stop()
    return found


async def _maybe(request: Awaitable[_T]) -> _T | None:
    """The answer, or None from a broker that does not know the request (then: unknown)."""
    try:
        return await request
    except (KafkaError, NotImplementedError, ValueError):
        return None


async def _groups(settings: ConsumerSettings) -> dict[str, int] | None:
    """Members of every consumer group named with the services' prefix (a service's group has
    one member per running instance); None when the broker would not say."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, **settings.kafka_security.client_options()
    )
    try:
        await admin.start()
        listed = await admin.list_consumer_groups()
        names = [str(g[0]) for g in listed if str(g[0]).startswith(settings.group_prefix)]
        # One group a request: aiokafka 0.14 misreads Apache Kafka 4.1's answer for several
        # (the connection is dropped on "Buffer underrun decoding string").
        answers = await asyncio.gather(*(admin.describe_consumer_groups([n]) for n in names))
        members = {
            str(group[1]): len(group[5])
            for responses in answers
            for response in responses
            for group in response.groups
        }
        return members
    except (KafkaError, OSError, NotImplementedError):
        return None
    finally:
        await admin.close()


class _ApiVersionsResponseV3(Response):  # type: ignore[misc]
    API_KEY = 18
    API_VERSION = 3
    SCHEMA = Schema(
        ("error_code", Int16),
        (
            "api_keys",
            CompactArray(
                ("api_key", Int16),
                ("min_version", Int16),
                ("max_version", Int16),
                ("tags", TaggedFields),
            ),
        ),
        ("throttle_time_ms", Int32),
        ("tags", TaggedFields),
    )


class _ApiVersionsRequestV3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 18
    API_VERSION = 3
    RESPONSE_TYPE = _ApiVersionsResponseV3
    SCHEMA = Schema(
        ("client_software_name", CompactString("utf-8")),
        ("client_software_version", CompactString("utf-8")),
        ("tags", TaggedFields),
    )

    def parse_response_header(self, read_buffer: BytesIO | bytes) -> ResponseHeader_v0:
        # ApiVersions answers with the old header at every version (KIP-511), so that a client
        # can read it before it knows what the broker speaks.
        return ResponseHeader_v0.decode(read_buffer)


class _ApiVersions(Request[_ApiVersionsRequestV3]):  # type: ignore[misc]
    """ApiVersions v3: the first version whose answer carries the broker's features (tag 0:
    what it supports; `metadata.version` among them on Apache Kafka in KRaft mode). aiokafka's
    own ApiVersions stops at v2, before them."""

    API_KEY = 18

    def build(self, request_struct_class: type[_ApiVersionsRequestV3]) -> _ApiVersionsRequestV3:
        return request_struct_class("wazza-hooks", "status", {})


# A feature's name and its version range, as tagged field 0 of ApiVersions v3+ holds them.
_FEATURES = CompactArray(
    ("name", CompactString("utf-8")),
    ("min_version", Int16),
    ("max_version", Int16),
    ("tags", TaggedFields),
)
# Apache Kafka's metadata.version feature levels (MetadataVersion in kafka-server-common), as
# read from the 4.1.1 jar: the newest production level a broker supports is its release's.
_METADATA_VERSIONS = {
    1: "3.0-IV1", 2: "3.1-IV0", 3: "3.2-IV0", 4: "3.3-IV0", 5: "3.3-IV1", 6: "3.3-IV2",
    7: "3.3-IV3", 8: "3.4-IV0", 9: "3.5-IV0", 10: "3.5-IV1", 11: "3.5-IV2", 12: "3.6-IV0",
    13: "3.6-IV1", 14: "3.6-IV2", 15: "3.7-IV0", 16: "3.7-IV1", 17: "3.7-IV2", 18: "3.7-IV3",
    19: "3.7-IV4", 20: "3.8-IV0", 21: "3.9-IV0", 22: "4.0-IV0", 23: "4.0-IV1", 24: "4.0-IV2",
    25: "4.0-IV3", 26: "4.1-IV0", 27: "4.1-IV1",
}  # fmt: skip
# The cluster id Tansu answers Metadata with unless told another (`--kafka-cluster-id`).
_TANSU_CLUSTER_ID = "tansu_cluster"


def _engine(versions: Any, cluster_id: str | None) -> tuple[str, str | None, str | None]:
    """(engine, release, metadata.version) from the broker's ApiVersions v3 answer and its
    cluster id; "unknown" and None for what they do not tell. A broker does not report its
    release: Apache Kafka's is read from the newest metadata.version it supports."""
    features = {}
    if versions is not None and 0 in versions.tags:
        features = {name: high for name, _, high, _ in _FEATURES.decode(BytesIO(versions.tags[0]))}
    if "metadata.version" in features:
        level = int(features["metadata.version"])
        named = _METADATA_VERSIONS.get(level)
        if named is None:
            return "Apache Kafka", None, f"level {level}"
        return "Apache Kafka", named.split("-")[0], named
    if cluster_id == _TANSU_CLUSTER_ID:
        return "Tansu", None, None
    return "unknown", None, None


async def _probe_store(settings: ConsumerSettings) -> _Store:
    url = settings.database_url
    shown = redact_url(url)
    found = _Store()
    try:
        if url.startswith("sqlite:"):
            from consumers.store.sqlite import sqlite_path

            path = sqlite_path(url)
            if not path.is_file():
                found.error = f"no SQLite file {path.absolute()}"
                return found
            wal = path.with_name(path.name + "-wal")
            found.size_bytes = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        found.version = await store_version(url)
        if found.version != KNOWN:
            return found  # pending or newer migrations: the tables may not be what is read here
        store = await open_store(url, pool_size=1, migrate=False)
        try:
            async with store.reader() as tx:
                found.facts = await _read_store(tx, settings.raw_topic, settings.dlq_topic)
        finally:
            await store.close()
        if found.facts.database_bytes is not None:
            found.size_bytes = found.facts.database_bytes
    except StoreError as exc:
        # The store's own sentences, without the place: the report names it once.
        found.error = str(exc).replace(f" at {shown}", "")
    except (OSError, sqlite3.Error) as exc:
        found.error = f"cannot be read ({exc})"
    except Exception as exc:
        # asyncpg's own errors (a login refused, a server going away): still the store's
        # problem to report in one line. Anything else is a bug: let it show.
        if not type(exc).__module__.startswith("asyncpg"):
            raise
        found.error = f"cannot be read ({exc!r})"
    return found


async def _read_store(tx: Tx, raw_topic: str, dlq_topic: str) -> _StoreFacts:
    """Every query `status` makes of the store, kept together so that a schema change has one
    place to adapt: the stored offsets (consumer_offsets), each service's newest history row
    (consumers.history.last_kept_ms), the dead letters kept in the store and
    those already redriven, and PostgreSQL's size of the database."""
    offsets: dict[str, dict[int, int]] = {}
    for service, partition, next_offset in await tx.fetchall(
        "SELECT service, kafka_partition, next_offset FROM consumer_offsets WHERE topic = ?",
        raw_topic,
    ):
        offsets.setdefault(str(service), {})[int(partition)] = int(next_offset)
    last: dict[str, int | None] = {}
    for service in offsets:
        last[service] = await last_kept_ms(tx, service)
    kept = await tx.fetchone("SELECT COUNT(*) FROM dead_letters WHERE topic = ?", raw_topic)
    redriven = await tx.fetchall(
        "SELECT DISTINCT dlq_partition, dlq_offset FROM dlq_redrives "
        "WHERE dlq_topic = ? AND published_ms IS NOT NULL",
        dlq_topic,
    )
    size = None
    if tx.dialect == "postgresql":
        row = await tx.fetchone("SELECT pg_database_size(current_database())")
        size = None if row is None else int(row[0])
    return _StoreFacts(
        offsets,
        last,
        0 if kept is None else int(kept[0]),
        {(int(p), int(o)) for p, o in redriven},
        size,
    )


async def _probe_http(
    session: aiohttp.ClientSession, url: str, scrapes: int, sample: float
) -> _Http:
    """`/readyz` (status and JSON body) and `scrapes` scrapes of `/metrics`, `sample` apart."""
    found = _Http(url)
    try:
        async with session.get(f"{url}/readyz") as response:
            found.status = response.status
            try:
                found.body = await response.json(content_type=None)
            except ValueError:
                found.body = None
        for n in range(scrapes):
            if n:
                await asyncio.sleep(sample)
            async with session.get(f"{url}/metrics") as response:
                if response.status == 200:
                    found.scrapes.append((time.monotonic(), _samples(await response.text())))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        if isinstance(exc, TimeoutError):
            found.error = "no answer in time"
        elif isinstance(exc, aiohttp.ClientConnectorError):
            cause = exc.os_error
            refused = isinstance(cause, ConnectionRefusedError)
            found.error = f"unreachable ({'connection refused' if refused else cause.strerror})"
        else:
            found.error = f"unreachable ({exc})"
    return found


def _samples(text: str) -> dict[str, float]:
    """A Prometheus exposition as `name{label=value,...}` -> value (labels sorted)."""
    found: dict[str, float] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        return found
    for family in families:
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


# --- the report -------------------------------------------------------------------------------


def _document(
    report: _Report,
    settings: ConsumerSettings,
    quarantine_topic: str,
    max_lag: int,
    strict: bool,
) -> dict[str, Any]:
    """The report as the documented JSON object, with its problems and warnings."""
    problems: list[str] = []
    warnings: list[str] = []
    broker, store = report.broker, report.store
    bootstrap = settings.bootstrap_servers
    shown = redact_url(settings.database_url)

    if broker.error is not None:
        problems.append(f"broker at {bootstrap}: {broker.error}")
    problems += [f"broker at {bootstrap}: {missing}" for missing in broker.missing]

    ingesters = [_ingester_json(i) for i in report.ingesters]
    for doc in ingesters:
        if doc["error"] is not None:
            problems.append(f"ingester at {doc['url']}: {doc['error']}")
        elif not doc["ready"]:
            problems.append(f"ingester at {doc['url']}: not ready ({_reason(doc['reason'])})")

    consumers = [_consumer_json(c) for c in report.consumers]
    for doc in consumers:
        who = f"consumer {doc['service']}" if doc["service"] else "consumer"
        if doc["error"] is not None:
            problems.append(f"{who} at {doc['url']}: {doc['error']}")
        elif not doc["ready"]:
            problems.append(f"{who} at {doc['url']}: not ready ({_reason(doc['reason'])})")

    if store.error is not None:
        problems.append(f"store at {shown}: {store.error}")
    elif store.version is not None and store.version < KNOWN:
        pending = ", ".join(str(n) for n in range(store.version + 1, KNOWN + 1))
        problems.append(
            f"store at {shown}: schema version {store.version}, migration(s) {pending} pending "
            "(run `wazza-hooks migrate`, or start a consumer that migrates)"
        )
    elif store.version is not None and store.version > KNOWN:
        problems.append(
            f"store at {shown}: schema version {store.version}, newer than this release's "
            f"{KNOWN} (upgrade wazza-hooks)"
        )

    services = _services_json(report, settings, consumers)
    for doc in services:
        if doc["lag"] is not None and doc["lag"] > max_lag:
            problems.append(
                f"service {doc['service']}: lag {doc['lag']} records on {settings.raw_topic}, "
                f"above --max-lag {max_lag}"
            )
        if doc["members"] == 0:
            problems.append(
                f"service {doc['service']}: no consumer running (group {doc['group']} has no "
                "members)"
            )
    if broker.error is None and store.facts is not None and not services:
        warnings.append(f"no consumer service has taken records from {settings.raw_topic} yet")

    dead = _dead_letters_json(report, settings)
    if dead["waiting"]:
        warnings.append(
            f"{plural(dead['waiting'], 'dead letter')} in {settings.dlq_topic} not redriven "
            "(wazza-hooks dlq list)"
        )
    if dead["keptInStore"]:
        warnings.append(
            f"{plural(dead['keptInStore'], 'dead letter')} kept in the store at {shown} "
            "(the dead-letter topic refused them; wazza-hooks dlq list)"
        )
    if strict:
        problems += warnings
        warnings = []

    return {
        "healthy": not problems,
        "problems": problems,
        "warnings": warnings,
        "broker": {
            "bootstrapServers": bootstrap,
            "reachable": broker.error is None,
            "engine": broker.engine,
            "version": broker.version,
            "metadataVersion": broker.metadata_version,
            "clusterId": broker.cluster_id,
            "brokers": broker.brokers,
            "error": broker.error,
        },
        "ingesters": ingesters,
        "consumers": consumers,
        "store": {
            "url": shown,
            "reachable": store.error is None,
            "sizeBytes": store.size_bytes,
            "schemaVersion": store.version,
            "knownSchemaVersion": KNOWN,
            "error": store.error,
        },
        "services": services,
        "deadLetters": dead,
        "quarantine": {
            "topic": quarantine_topic,
            "records": _depth(broker, quarantine_topic),
        },
    }


def _reason(body: Any) -> str:
    """Why an endpoint said not ready, from its JSON body (the whole body when it has no
    `reason`)."""
    if isinstance(body, dict):
        reason = body.get("reason") or body.get("broker")
        if reason is not None:
            detail = body.get("detail")
            return f"{reason}: {detail}" if detail else str(reason)
    return printable(body) if body is not None else "no reason given"


def _ready(probe: _Http) -> tuple[bool, Any]:
    """(ready, the reason it gave when not): `/readyz` answered 200."""
    ready = probe.error is None and probe.status == 200
    reason = None if ready else probe.body if probe.body is not None else f"HTTP {probe.status}"
    return ready, reason


def _counter(scrape: dict[str, float], name: str, **labels: str) -> float:
    """The sum of a metric's samples carrying these labels."""
    wanted = [f"{k}={v}" for k, v in labels.items()]
    return sum(
        value
        for key, value in scrape.items()
        if key.startswith(name + "{")
        and all(w in key[len(name) + 1 : -1].split(",") for w in wanted)
    )


_REQUESTS = "wazza_ingest_requests_total"
_OUTCOME_LABEL = f"{_REQUESTS}{{outcome="


def _ingester_json(probe: _Http) -> dict[str, Any]:
    ready, reason = _ready(probe)
    requests: dict[str, int] | None = None
    rate: dict[str, float] | None = None
    broker_up: bool | None = None
    if probe.scrapes:
        _, last = probe.scrapes[-1]
        requests = {
            key[len(_OUTCOME_LABEL) : -1]: int(value)
            for key, value in last.items()
            if key.startswith(_OUTCOME_LABEL)
        }
        up = last.get("wazza_ingest_broker_up{}")
        broker_up = None if up is None else up >= 1
    if len(probe.scrapes) == 2:
        (began, first), (ended, last) = probe.scrapes

        def per_second(*outcomes: str) -> float:
            keys = [k for k in last if k.startswith(_OUTCOME_LABEL)]
            if outcomes:
                keys = [k for k in keys if k[len(_OUTCOME_LABEL) : -1] in outcomes]
            delta = sum(last[k] - first.get(k, 0.0) for k in keys)
            return round(delta / max(ended - began, 1e-3), 1)

        rate = {"requests": per_second(), "accepted": per_second("accepted")}
    return {
        "url": probe.url,
        "ready": ready,
        "reason": reason,
        "brokerUp": broker_up,
        "requests": requests,
        "ratePerSecond": rate,
        "error": probe.error,
    }


_ASSIGNED = "wazza_consumer_assigned_partitions{service="


def _consumer_json(probe: _Http) -> dict[str, Any]:
    ready, reason = _ready(probe)
    service: str | None = None
    assigned: int | None = None
    if probe.scrapes:
        _, last = probe.scrapes[-1]
        for key, value in last.items():
            if key.startswith(_ASSIGNED):
                service, assigned = key[len(_ASSIGNED) : -1], int(value)
    return {
        "url": probe.url,
        "service": service,
        "ready": ready,
        "reason": reason,
        "assignedPartitions": assigned,
        "error": probe.error,
    }


def _services_json(
    report: _Report, settings: ConsumerSettings, consumers: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One entry per service the store holds offsets for or the broker has a group of."""
    broker, facts = report.broker, report.store.facts
    prefix = settings.group_prefix
    names = set(facts.offsets) if facts is not None else set()
    if broker.groups is not None:
        names |= {group[len(prefix) :] for group in broker.groups if group.startswith(prefix)}
    bounds = broker.offsets.get(settings.raw_topic)
    services = []
    for name in sorted(names):
        partitions: list[dict[str, Any]] | None = None
        if bounds is not None and facts is not None:
            starts, ends = bounds
            held = facts.offsets.get(name, {})
            partitions = []
            for partition, end in sorted(ends.items()):
                # Nothing stored yet: the service starts at the log's first record. Stored below
                # it: retention deleted those records (counted as lost), not waiting for it.
                stored = held.get(partition)
                taken_from = max(stored if stored is not None else 0, starts[partition])
                partitions.append(
                    {
                        "partition": partition,
                        "stored": stored,
                        "end": end,
                        "lag": max(0, end - taken_from),
                    }
                )
        members = None if broker.groups is None else broker.groups.get(prefix + name, 0)
        probed = [c for c in consumers if c["service"] == name]
        services.append(
            {
                "service": name,
                "group": prefix + name,
                "members": members,
                "ready": None if not probed else all(c["ready"] for c in probed),
                "lag": None if partitions is None else sum(p["lag"] for p in partitions),
                "partitions": partitions,
                "lastAppliedAt": None if facts is None else iso_time(facts.last_taken_ms.get(name)),
            }
        )
    return services


def _depth(broker: _Broker, topic: str) -> int | None:
    """Records the broker holds in `topic` (end minus first offset, summed), None unknown."""
    if topic not in broker.offsets:
        return None
    starts, ends = broker.offsets[topic]
    return sum(max(0, end - starts[p]) for p, end in ends.items())


def _dead_letters_json(report: _Report, settings: ConsumerSettings) -> dict[str, Any]:
    broker, facts = report.broker, report.store.facts
    records = _depth(broker, settings.dlq_topic)
    waiting = None
    if records is not None and facts is not None:
        starts, ends = broker.offsets[settings.dlq_topic]
        sent_back = sum(1 for p, o in facts.redriven if p in ends and starts[p] <= o < ends[p])
        waiting = records - sent_back
    return {
        "topic": settings.dlq_topic,
        "records": records,
        "waiting": waiting,
        "keptInStore": None if facts is None else facts.kept_dead_letters,
    }


# --- the screen -------------------------------------------------------------------------------


def _screen(doc: dict[str, Any]) -> str:
    """The report for a terminal: one line per part, then the verdict."""
    lines = [_broker_line(doc["broker"])]
    for ingester in doc["ingesters"]:
        lines.append(_ingester_line(ingester))
    for consumer in doc["consumers"]:
        lines.append(_consumer_line(consumer))
    lines.append(_store_line(doc["store"]))
    for service in doc["services"]:
        lines.append(_service_line(service))
    dead, quarantine = doc["deadLetters"], doc["quarantine"]
    kept = dead["keptInStore"]
    lines.append(
        f"{'dead letters':<13}{dead['topic']}: {_count(dead['records'], 'record')}"
        + ("" if dead["waiting"] is None else f", {dead['waiting']} not redriven")
        + ("" if kept is None else f"; {kept} kept in the store")
    )
    lines.append(
        f"{'quarantine':<13}{quarantine['topic']}: {_count(quarantine['records'], 'record')}"
    )
    problems, warnings = len(doc["problems"]), len(doc["warnings"])
    verdict = f"NOT HEALTHY: {plural(problems, 'problem')}" if problems else "healthy"
    if warnings:
        verdict += f", {plural(warnings, 'warning')}"
    lines.append(verdict + (" (on stderr)" if problems or warnings else ""))
    return "\n".join(lines) + "\n"


def _count(value: int | None, noun: str) -> str:
    return "unknown" if value is None else plural(value, noun)


def _broker_line(broker: dict[str, Any]) -> str:
    head = f"{'broker':<13}{broker['bootstrapServers']}: "
    if not broker["reachable"]:
        return head + str(broker["error"])
    engine = broker["engine"]
    if broker["version"] is not None:
        engine += f" {broker['version']} (metadata.version {broker['metadataVersion']})"
    elif broker["metadataVersion"] is not None:
        engine += f" (metadata.version {broker['metadataVersion']})"
    elif engine == "unknown":
        engine = "engine unknown"
    brokers = _count(broker["brokers"], "broker")
    return head + f"up, {engine}, {brokers}, cluster {broker['clusterId'] or 'id unknown'}"


def _ingester_line(ingester: dict[str, Any]) -> str:
    head = f"{'ingester':<13}{ingester['url']}: "
    if ingester["error"] is not None:
        return head + str(ingester["error"])
    state = "ready" if ingester["ready"] else f"NOT READY ({_reason(ingester['reason'])})"
    requests = ingester["requests"]
    if requests is not None:
        total = sum(requests.values())
        state += f"; {plural(total, 'request')} ({requests.get('accepted', 0)} accepted"
        state += f", {requests.get('quarantined', 0)} quarantined)"
    rate = ingester["ratePerSecond"]
    if rate is not None:
        state += f", now {rate['requests']:g}/s ({rate['accepted']:g}/s accepted)"
    return head + state


def _consumer_line(consumer: dict[str, Any]) -> str:
    head = f"{'consumer':<13}{consumer['url']}: "
    if consumer["error"] is not None:
        return head + str(consumer["error"])
    state = f"{consumer['service'] or 'service unknown'} "
    state += "ready" if consumer["ready"] else f"NOT READY ({_reason(consumer['reason'])})"
    if consumer["assignedPartitions"] is not None:
        state += f", {plural(consumer['assignedPartitions'], 'partition')} assigned"
    return head + state


def _store_line(store: dict[str, Any]) -> str:
    head = f"{'store':<13}{store['url']}: "
    if not store["reachable"]:
        return head + str(store["error"])
    version, known = store["schemaVersion"], store["knownSchemaVersion"]
    if version == known:
        schema = f"schema version {version} (current)"
    elif version < known:
        schema = f"schema version {version} (MIGRATIONS PENDING: this release has {known})"
    else:
        schema = f"schema version {version} (NEWER than this release's {known})"
    size = store["sizeBytes"]
    shown_size = "size unknown" if size is None else f"{size / (1024 * 1024):.1f} MiB"
    return head + f"up, {schema}, {shown_size}"


def _service_line(service: dict[str, Any]) -> str:
    parts = [f"lag {_count(service['lag'], 'record')}"]
    members = service["members"]
    if members is not None:
        parts.append("NO CONSUMER RUNNING" if members == 0 else plural(members, "consumer"))
    if service["ready"] is not None:
        parts.append("ready" if service["ready"] else "NOT READY")
    parts.append(f"last applied {service['lastAppliedAt'] or 'never'}")
    return f"{'service':<13}{service['service']}: " + ", ".join(parts)
