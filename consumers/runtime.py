"""The consumer loop every service runs on (built-in or a user's).

One consumer group per service, manual offsets, batches from `getmany`, each applied in one
store transaction (`batch.apply_batch`); then the same offsets are committed to Kafka, best
effort, for lag monitors. The store, not Kafka, is the source of truth: on assignment each
partition is sought to the offset the store holds. A batch in flight is finished before its
partitions are given up (revocation waits for it) and before a stop.

An operator may move a service's stored offsets back (`wazza-hooks replay`) while it runs: a
busy partition sees it at its next batch (the offset guard), an idle one at the next
comparison of the store's offsets with the positions (`_reconcile`, every second). Either way
the records are re-read, and their dedup keys make them duplicates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IncompatibleBrokerVersion, KafkaConnectionError, KafkaError

from wazza_hooks import contract
from wazza_hooks.producers import IDEMPOTENCE_REFUSED, START_TIMEOUT_SECONDS, log_start_failure

from . import metrics
from .batch import (
    APPLIED,
    SKIPPED,
    BatchResult,
    Record,
    apply_batch,
    event_type_header,
    keep_dead_letter,
    reset_offsets,
    stored_offsets,
)
from .history import prune_history
from .log_identity import LogReset, Stored, TopicIdRequest, find_resets, topic_id_of
from .service import Service
from .settings import ConsumerSettings
from .start_from import chosen_offsets, record_first_offsets
from .store import Store, StoreError, StoreUnavailable, Tx, open_store

log = logging.getLogger("wazza.consumers.runtime")

T = TypeVar("T")

# A store (or, at start, a broker) that is down is retried with these waits (then the last one,
# forever): soon enough to resume within seconds of its return, slow enough not to hammer it.
_STORE_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
# The history (the dedup keys) is pruned this often; the retention window (days) makes precision
# pointless.
_PRUNE_EVERY_SECONDS = 600.0
# A dead letter must be acknowledged before the batch moves on; past this the batch is retried.
_DLQ_TIMEOUT_SECONDS = 10.0
# What a dead letter adds to a body: the contract headers and the dead-letter headers (the error
# message is cut at 2 KiB), with ample room for the record batch's own framing.
_DLQ_HEADER_ROOM_BYTES = 64 * 1024
# getmany's wait when nothing is there: the latency of noticing a stop on an idle topic.
_POLL_MS = 500
# How long the broker may hold a fetch waiting for data. Kafka's default (500 ms) is latency
# added to every event of a quiet partition; measured end to end at 2,000 events/s, p50 went
# from about 250 ms to under 100 ms. 50 ms costs an idle consumer 20 small fetches a second.
_FETCH_WAIT_MS = 50
# How often the consumer refreshes its metadata. A raw topic deleted and recreated leaves it with
# no partitions until the next refresh (aiokafka's default: 5 minutes, nothing applied
# meanwhile); a metadata request every few seconds costs the broker nothing noticeable.
_METADATA_MAX_AGE_MS = 5_000
# How often the stored offsets are compared with the consumer's positions, so that a replay
# reaches partitions that receive nothing: one small query a second, and a replay starts within
# about a second.
_RECONCILE_SECONDS = 1.0
# How often the partitions are checked against the log they are read from (the topic's id and
# each partition's end; consumers/log_identity.py), so that a topic recreated or a broker that
# started over is noticed even where no batch's offset guard would (a new log that grew past
# the stored offsets): two small requests, and a reset within seconds.
_IDENTITY_SECONDS = 5.0
# On stop, the last offsets committed to Kafka (for lag monitors) are waited for this long.
_COMMIT_WAIT_SECONDS = 2.0
# A busy service says what it did once a minute (one line: a person reading the log sees it is
# alive and what it applies, without a line per event).
_SUMMARY_SECONDS = 60.0
# A topic id or end offsets unknown within this long are left unchecked until the next time.
_IDENTITY_TIMEOUT_SECONDS = 5.0


def _retry_delay(attempt: int) -> float:
    """The wait before retry number `attempt` (0-based): the schedule, then its last step."""
    return _STORE_RETRY_DELAYS[min(attempt, len(_STORE_RETRY_DELAYS) - 1)]


async def retrying_store(
    operation: Callable[[], Awaitable[T]],
    service: str,
    stop: asyncio.Event,
    what: Callable[[], str],
    on_unavailable: Callable[[StoreUnavailable], None] = lambda exc: None,
) -> T | None:
    """`operation()`, tried again on the store-retry schedule while it raises StoreUnavailable
    (each failure counted in the store-errors metric and logged as `what()`); None when `stop`
    is set while it waits. Any other error is raised."""
    attempt = 0
    while True:
        try:
            return await operation()
        except StoreUnavailable as exc:
            metrics.STORE_ERRORS.labels(service).inc()
            on_unavailable(exc)
            delay = _retry_delay(attempt)
            attempt += 1
            log.warning("%s (%s); retrying in %.1f s", what(), exc, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                continue
            return None


async def open_store_when_available(
    url: str,
    service: str,
    stop: asyncio.Event,
    on_unavailable: Callable[[StoreUnavailable], None] = lambda exc: None,
    *,
    pool_size: int = 4,
    migrate: bool = True,
) -> Store | None:
    """The store, opened as soon as it can be (`pool_size`, `migrate`: see `open_store`);
    None when `stop` is set first.

    A store that is down, refusing connections or locked (StoreUnavailable) is waited out on the
    batches' retry schedule, so a consumer started before its database (a compose stack, a pod
    scheduled first) begins when the database does; any other StoreError (a failed migration)
    is raised."""
    if stop.is_set():
        return None
    return await retrying_store(
        lambda: open_store(url, pool_size=pool_size, migrate=migrate),
        service,
        stop,
        lambda: "store unavailable at start",
        on_unavailable,
    )


class DeadLetterUnavailable(StoreUnavailable):
    """The dead-letter topic did not acknowledge: the batch is retried, nothing is skipped."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runtime: ConsumerRuntime) -> None:
        self._runtime = runtime

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._runtime.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._runtime.on_assigned(assigned)


class ConsumerRuntime:
    """Runs one service until `stop` is set."""

    def __init__(
        self,
        service: Service,
        settings: ConsumerSettings,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.settings = settings
        self.store = store
        self._clock = clock
        self._topic = settings.raw_topic
        self._lock = asyncio.Lock()
        self._gaps: set[int] = set()
        # partition -> the offset of the next record this runtime will take (as sought or
        # stored by it); compared with the store's to notice a replay.
        self._positions: dict[int, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._topic_id: str | None = None
        """The raw topic's id as last reported by the broker (None: not known)."""
        self._uncommitted: dict[TopicPartition, int] = {}
        """Offsets stored in the store and not yet committed to Kafka."""
        self._committing: asyncio.Task[None] | None = None
        self._done: collections.Counter[str] = collections.Counter()
        """Outcomes counted since the last summary line."""
        self._beyond_end: dict[int, int] = {}
        """Partitions whose stored offset lay beyond their log's end at the last check, with
        that offset: a second sighting resets them (`_reset_other_logs`)."""
        self._stop = asyncio.Event()
        self.assigned: asyncio.Event = asyncio.Event()
        """Set once partitions were assigned and sought (tests and readiness wait on it)."""
        self._joined = False
        self._store_failing = False
        self._refused = False
        """The broker answered the dead-letter producer's start with a refusal of idempotence."""

    def not_ready(self) -> str | None:
        """Why this instance is not ready (`/readyz` answers 503 with it), or None when it is:
        its clients started and joined the group, and its last batch reached the store."""
        if not self._joined:
            return IDEMPOTENCE_REFUSED if self._refused else "not_joined"
        if self._store_failing:
            return "store_unavailable"
        return None

    @property
    def group_id(self) -> str:
        """The service's consumer group."""
        return f"{self.settings.group_prefix}{self.service.name}"

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; then finish the batch, commit and leave the group."""
        self._stop = stop
        metrics.start_series(self.service.name)
        metrics.LAST_COMMIT.labels(self.service.name).set(self._clock())
        if not await self._ensure_schema():
            return  # stopped while the store was unavailable
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            acks="all",
            enable_idempotence=self.settings.enable_idempotence,
            client_id=f"{self.group_id}-dlq",
            # Every body the ingester accepts, plus its contract and dead-letter headers.
            max_request_size=self.settings.max_body_bytes + _DLQ_HEADER_ROOM_BYTES,
            **self.settings.kafka_security.client_options(),
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=self.group_id,
            client_id=f"{self.group_id}-{self.settings.instance_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.batch_size,
            fetch_max_wait_ms=_FETCH_WAIT_MS,
            metadata_max_age_ms=_METADATA_MAX_AGE_MS,
            **self.settings.kafka_security.client_options(),
        )
        self._consumer.subscribe([self._topic], listener=_Listener(self))
        log.info(
            "%s: starting on %s, group %s, brokers %s, store %s",
            self.service.name,
            self._topic,
            self.group_id,
            self.settings.bootstrap_servers,
            self.store.url,
        )
        try:
            if await self._start(self._producer) and await self._start(self._consumer):
                self._joined = True
                await self._loop()
        finally:
            if self._committing is not None:  # the last batch's offsets, for the lag monitors
                with contextlib.suppress(TimeoutError):  # wait_for cancels it then
                    await asyncio.wait_for(self._committing, _COMMIT_WAIT_SECONDS)
            # Leaves the group, so its partitions move at once; also closes a client that never
            # started (stopped while the broker was unreachable).
            try:
                await self._consumer.stop()
            except asyncio.CancelledError:
                # aiokafka's fetcher, closing, awaits a fetch it cancelled; one that was backing
                # off after a broker error raises that cancellation out of stop() (the broker
                # went away first). Not ours: go on closing, unless this task is cancelled.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                log.info("the consumer closed while its broker was unreachable")
            await self._producer.stop()
            self._joined = False
            metrics.ASSIGNED.labels(self.service.name).set(0)
            self._summarise()
            log.info("%s: stopped, group %s left", self.service.name, self.group_id)

    async def _start(self, client: AIOKafkaConsumer | AIOKafkaProducer) -> bool:
        """Start a client, retrying while the broker is unreachable; False when stopped first."""
        attempt = 0
        while not self._stop.is_set():
            try:
                async with asyncio.timeout(START_TIMEOUT_SECONDS):
                    if not await self._unless_stopped(client.start()):
                        return False
                self._refused = False
                return True
            except (KafkaError, OSError, TimeoutError) as exc:
                delay = _retry_delay(attempt)
                attempt += 1
                idempotent = isinstance(client, AIOKafkaProducer) and (
                    self.settings.enable_idempotence
                )
                refused = log_start_failure(
                    log,
                    exc,
                    self.settings.bootstrap_servers,
                    idempotent,
                    f"retrying in {delay:.1f} s",
                )
                self._refused = refused is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        return False

    async def _unless_stopped(self, starting: Awaitable[None]) -> bool:
        """Await a client's start, unless `stop` is set first (then it is cancelled): a group
        join may take many seconds, and a SIGTERM meanwhile must not wait for it. True when it
        started."""
        start = asyncio.ensure_future(starting)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not start.done():
                start.cancel()
                with contextlib.suppress(asyncio.CancelledError, KafkaError, OSError):
                    await start
        if start.cancelled():
            return False
        start.result()  # its error, if it failed
        return True

    async def _ensure_schema(self) -> bool:
        """The service's own tables, waiting out an unavailable store (another process's
        write lock, a database restarting); False when stopped first."""
        if not self.service.schema:
            return True
        if self._stop.is_set():
            return False

        async def apply() -> bool:
            async with self.store.transaction() as tx:
                for statement in self.service.schema:
                    await tx.execute(statement)
            return True

        return await self._retrying(apply, lambda: "service schema not applied") is not None

    async def _retrying(
        self, operation: Callable[[], Awaitable[T]], what: Callable[[], str]
    ) -> T | None:
        """retrying_store for this service, keeping readiness's store flag current."""

        def failing(exc: StoreUnavailable) -> None:
            self._store_failing = True

        result = await retrying_store(operation, self.service.name, self._stop, what, failing)
        if result is not None:
            self._store_failing = False
        return result

    async def _loop(self) -> None:
        assert self._consumer is not None  # noqa: S101
        consumer = self._consumer
        next_prune = time.monotonic()
        next_reconcile = time.monotonic() + _RECONCILE_SECONDS
        next_identity = time.monotonic() + _IDENTITY_SECONDS
        next_summary = time.monotonic() + _SUMMARY_SECONDS
        while not self._stop.is_set():
            data = await consumer.getmany(timeout_ms=_POLL_MS, max_records=self.settings.batch_size)
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + _PRUNE_EVERY_SECONDS
                await self._prune()
            if time.monotonic() >= next_reconcile:
                next_reconcile = time.monotonic() + _RECONCILE_SECONDS
                await self._reconcile()
            if time.monotonic() >= next_identity:
                next_identity = time.monotonic() + _IDENTITY_SECONDS
                await self._recheck_log()
            if time.monotonic() >= next_summary:
                next_summary = time.monotonic() + _SUMMARY_SECONDS
                self._summarise()
            if not data:
                continue
            partitions, spans, skipped = self._split(data)
            started = time.perf_counter()
            async with self._lock:
                assignment = consumer.assignment()
                partitions = {
                    p: r
                    for p, r in partitions.items()
                    if TopicPartition(self._topic, p) in assignment
                }
                if not partitions:
                    continue
                result = await self._apply_until_done(partitions, spans)
                if result is None:
                    return  # stopping during a store outage: nothing stored, nothing lost
                if result.seek and not await self._seek_back(result.seek, spans):
                    return  # stopping during a store outage
                for partition, offset in result.next_offsets.items():
                    self._gaps.discard(partition)
                    self._positions[partition] = offset
            size = sum(spans[p][1] - spans[p][0] for p in partitions)
            self._observe(result, size, started, skipped)
            self._commit_to_kafka(result)

    def _split(
        self, data: dict[TopicPartition, list[Any]]
    ) -> tuple[dict[int, list[Record]], dict[int, tuple[int, int]], dict[int, dict[bytes, int]]]:
        """Per partition: the records this service takes, the batch's (first offset, last + 1),
        and how many it skips by their type header, by type. Most records of a service are
        other services' events; they are counted, never parsed, and no Record is made of them."""
        wanted = self.service.event_type_headers
        partitions: dict[int, list[Record]] = {}
        spans: dict[int, tuple[int, int]] = {}
        skipped: dict[int, dict[bytes, int]] = {}
        for tp, messages in data.items():
            if not messages:
                continue
            taken: list[Record] = []
            left: dict[bytes, int] = {}
            for m in messages:
                headers = m.headers
                raw_type = event_type_header(headers)
                if raw_type is not None and raw_type not in wanted:
                    left[raw_type] = left.get(raw_type, 0) + 1
                    continue
                taken.append(Record(m.topic, m.partition, m.offset, m.key, m.value or b"", headers))
            partitions[tp.partition] = taken
            spans[tp.partition] = (messages[0].offset, messages[-1].offset + 1)
            skipped[tp.partition] = left
        return partitions, spans, skipped

    async def _seek_back(self, seek: dict[int, int], spans: dict[int, tuple[int, int]]) -> bool:
        """Seek the partitions whose stored offset did not match their batch to that offset,
        unless it belongs to another log (then to the new log's start); False when stopping
        during a store outage."""
        assert self._consumer is not None  # noqa: S101
        stored = await self._retrying(
            lambda: stored_offsets(self.store, self.service.name, self._topic),
            lambda: "stored offsets unreadable",
        )
        if stored is None:
            return False
        # A stored offset past the batch's start is a replay, a zombie owner, or another log.
        ahead = [p for p, offset in seek.items() if offset > spans[p][0]]
        checked = await self._reset_other_logs(ahead, stored, with_ends=True)
        if checked is None:
            return False
        for partition, held in seek.items():
            offset = checked[partition].next_offset if partition in checked else held
            tp = TopicPartition(self._topic, partition)
            log.warning(
                "%s[%d]: store holds offset %d, batch began at %d: seeking",
                self._topic,
                partition,
                offset,
                spans[partition][0],
            )
            self._consumer.seek(tp, offset)
            self._positions[partition] = offset
            if offset < spans[partition][0] and await self._below_log_start(tp, offset):
                self._gaps.add(partition)
        return True

    async def _below_log_start(self, tp: TopicPartition, offset: int) -> bool:
        """True when the records from `offset` are gone from Kafka (retention): the next batch
        then starts later, and that gap is accepted, counted and said. Only then: a partition
        sought to records that exist must start there, or a replay landing meanwhile would be
        overwritten."""
        assert self._consumer is not None  # noqa: S101
        try:
            beginnings = await self._consumer.beginning_offsets([tp])
        except KafkaError as exc:
            # Not known to be gone: the next batch that starts later is sought back again and
            # asks again, rather than storing over a replay that may have landed meanwhile.
            log.info("%s[%d]: log start unknown (%r): no gap accepted", tp.topic, tp.partition, exc)
            return False
        start: int = beginnings.get(tp, 0)
        if offset >= start or tp.partition in self._gaps:
            return offset < start
        metrics.RECORDS_LOST.labels(self.service.name).inc(start - offset)
        log.error(
            "%s[%d]: records %d to %d were deleted by the broker's retention before this "
            "service read them: %d records lost, going on from %d",
            tp.topic,
            tp.partition,
            offset,
            start - 1,
            start - offset,
            start,
        )
        return True

    async def _current_topic_id(self) -> str | None:
        """The raw topic's id as the broker reports it now; None when it does not (a broker
        older than topic ids, no answer in time, the topic missing)."""
        assert self._consumer is not None  # noqa: S101
        client = self._consumer._client
        try:
            async with asyncio.timeout(_IDENTITY_TIMEOUT_SECONDS):
                response = await client.send(client.get_random_node(), TopicIdRequest(self._topic))
        except (NotImplementedError, IncompatibleBrokerVersion):
            return None  # a broker older than topic ids: the log's end alone tells
        except (KafkaError, OSError, TimeoutError) as exc:
            log.info("%s: topic id unknown (%r)", self._topic, exc)
            return None
        topic_id = topic_id_of(response, self._topic)
        if topic_id is not None:
            self._topic_id = topic_id
        return topic_id

    def _fetched_ends(self, partitions: list[int]) -> dict[int, int]:
        """The high watermark of each partition's last fetch, where there was one. Not
        ListOffsets(latest): the local broker (Tansu) answers it short of the end for a
        partition whose last record batch holds several records."""
        assert self._consumer is not None  # noqa: S101
        ends: dict[int, int] = {}
        for partition in partitions:
            high = self._consumer.highwater(TopicPartition(self._topic, partition))
            if high is not None:
                ends[partition] = int(high)
        return ends

    async def _reset_other_logs(
        self,
        partitions: list[int],
        stored: dict[int, Stored],
        *,
        with_ends: bool = False,
        confirm: bool = False,
    ) -> dict[int, Stored] | None:
        """`stored`, with each of `partitions` whose stored offset belongs to another log moved
        to the new log's start, in the store too (logged once at ERROR and counted); None when
        stopping during a store outage.

        A changed topic id tells at once. The log's end (the high watermark of the last fetch)
        is asked only `with_ends`; with `confirm`, a stored offset beyond it must be seen so at
        two checks in a row: right after a leader moved, the new leader's high watermark may
        trail the old one's for a moment."""
        # Asked even when nothing is stored yet: the first batches store it beside their
        # offsets, so that the topic recreated later is told apart.
        topic_id = await self._current_topic_id()
        held = {p: stored[p] for p in partitions if p in stored}
        if not held:
            return stored
        resets = find_resets(held, topic_id, {})
        if with_ends:
            suspects: dict[int, int] = {}
            by_id = {r.partition for r in resets}
            for reset in find_resets(held, None, self._fetched_ends(sorted(held))):
                if reset.partition in by_id:
                    continue
                if confirm and self._beyond_end.get(reset.partition) != reset.stored_offset:
                    suspects[reset.partition] = reset.stored_offset
                    continue
                resets.append(reset)
            if confirm:
                self._beyond_end = suspects
        if not resets:
            return stored
        done = await self._retrying(
            lambda: reset_offsets(self.store, self.service.name, self._topic, resets, topic_id),
            lambda: "log reset not stored",
        )
        if done is None:
            return None
        updated = dict(stored)
        for reset in done:
            self._report_reset(reset)
            updated[reset.partition] = Stored(reset.new_offset, topic_id)
        return updated

    def _report_reset(self, reset: LogReset) -> None:
        metrics.LOG_RESETS.labels(self.service.name).inc()
        self._gaps.discard(reset.partition)
        log.error(
            "%s[%d]: the stored offsets belong to another log (%s): taking the partition again "
            "from offset %d (was %d); the dedup keys keep what was applied from being applied "
            "twice",
            self._topic,
            reset.partition,
            reset.reason,
            reset.new_offset,
            reset.stored_offset,
        )

    async def _recheck_log(self) -> None:
        """Check the assigned partitions against the log they are read from; seek those on
        another log to its start."""
        assert self._consumer is not None  # noqa: S101
        async with self._lock:
            try:
                stored = await stored_offsets(self.store, self.service.name, self._topic)
            except StoreError as exc:  # the next check will do
                log.info("log identity not checked: %s", exc)
                return
            assigned = sorted(tp.partition for tp in self._consumer.assignment())
            checked = await self._reset_other_logs(assigned, stored, with_ends=True, confirm=True)
            for partition in assigned:
                if checked is None or partition not in checked:
                    continue
                offset = checked[partition].next_offset
                if checked[partition] is not stored.get(partition):
                    self._consumer.seek(TopicPartition(self._topic, partition), offset)
                    self._positions[partition] = offset

    async def _reconcile(self) -> None:
        """Seek every assigned partition whose stored offset went back below the position
        (a replay): idle partitions have no batch whose offset guard would notice it."""
        assert self._consumer is not None  # noqa: S101
        async with self._lock:
            try:
                offsets = await stored_offsets(self.store, self.service.name, self._topic)
            except StoreError as exc:  # the next comparison, or the next batch, will do
                log.info("stored offsets not compared: %s", exc)
                return
            for tp in self._consumer.assignment():
                held = offsets.get(tp.partition)
                stored = None if held is None else held.next_offset
                position = self._positions.get(tp.partition)
                if stored is None or position is None or stored >= position:
                    continue
                log.warning(
                    "%s[%d]: store moved back from %d to %d (a replay): seeking",
                    tp.topic,
                    tp.partition,
                    position,
                    stored,
                )
                self._consumer.seek(tp, stored)
                self._positions[tp.partition] = stored
                self._gaps.discard(tp.partition)  # a gap accepted before is not this one
        self._measure_lag()

    def _measure_lag(self) -> None:
        """Lag per assigned partition from the last high watermark the broker reported: every
        second, not only after a commit, so that records waiting on a stalled service show."""
        assert self._consumer is not None  # noqa: S101
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            position = self._positions.get(tp.partition)
            if high is not None and position is not None:
                lag = max(0, high - position)
                metrics.LAG.labels(self.service.name, str(tp.partition)).set(lag)

    async def _apply_until_done(
        self, partitions: dict[int, list[Record]], spans: dict[int, tuple[int, int]]
    ) -> BatchResult | None:
        """The batch applied, however long the store is unavailable; None when stopping
        during an outage (nothing stored, nothing lost)."""

        def what() -> str:
            first = min(spans[p][0] for p in partitions)
            return f"{self._topic}: batch from offset {first} not applied"

        async def apply() -> BatchResult:
            def attempt(isolate: bool) -> Awaitable[BatchResult]:
                return apply_batch(
                    self.store,
                    self.service,
                    self._topic,
                    partitions,
                    self._dead_letter,
                    frozenset(self._gaps),
                    spans,
                    self._topic_id,
                    isolate,
                )

            try:
                return await attempt(False)
            except StoreUnavailable:
                raise
            except Exception as exc:  # one record's doing, not an outage: find it
                log.warning("%s; applying it record by record (%r)", what(), exc)
            try:
                return await attempt(True)
            except StoreUnavailable:
                raise
            except Exception as exc:
                # Not one record's (each was tried alone): a store that refuses the batch's
                # own writes. Waited out like an outage, never skipped, and counted.
                log.exception("%s, even record by record", what())
                raise StoreUnavailable(f"the batch failed record by record: {exc!r}") from exc

        return await self._retrying(apply, what)

    async def _dead_letter(self, tx: Tx, record: Record, error: BaseException) -> None:
        assert self._producer is not None  # noqa: S101
        letter = contract.DeadLetter(
            group=self.group_id,
            error_class=type(error).__name__,
            error_message=str(error),
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        log.error(
            "%s[%d]@%d: dead-lettered after %s: %s",
            record.topic,
            record.partition,
            record.offset,
            type(error).__name__,
            error,
        )
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(
                    self.settings.dlq_topic,
                    record.value,
                    key=record.key,
                    headers=letter.to_headers(record.headers),
                ),
                _DLQ_TIMEOUT_SECONDS,
            )
        except KafkaError as exc:
            if exc.retriable or isinstance(exc, KafkaConnectionError):
                raise DeadLetterUnavailable(f"dead-letter topic unavailable: {exc!r}") from exc
            # The broker refused this record itself (too large, invalid): waiting will not change
            # that. Kept in the store instead, in the batch's transaction, where `dlq list` shows
            # it: never retried forever, never skipped.
            await keep_dead_letter(tx, self.service.name, record, letter, repr(exc))
            metrics.DEAD_LETTERS_KEPT.labels(self.service.name).inc()
            log.error(
                "%s[%d]@%d: the dead-letter topic refused it (%r): kept in the store",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
        except TimeoutError as exc:
            raise DeadLetterUnavailable(f"dead-letter topic did not acknowledge: {exc!r}") from exc

    def _observe(
        self,
        result: BatchResult,
        size: int,
        started: float,
        skipped: dict[int, dict[bytes, int]],
    ) -> None:
        name = self.service.name
        metrics.LAST_COMMIT.labels(name).set(self._clock())
        metrics.BATCH_RECORDS.labels(name).observe(size)
        metrics.BATCH_SECONDS.labels(name).observe(time.perf_counter() - started)
        now_ms = self._clock() * 1000
        e2e = metrics.END_TO_END_SECONDS.labels(name)
        # Counted per (type, outcome) first: a labelled child's lookup per record costs more
        # than the rest of a skipped record's handling.
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        latencies: list[float] = []
        for event_type, outcome, received in result.outcomes:
            counts[event_type, outcome] += 1
            if outcome == APPLIED and received is not None:
                latencies.append(max(0.0, (now_ms - received) / 1000))
        metrics.observe_all(e2e, latencies)
        for partition in result.next_offsets:  # the partitions applied (not sought back)
            for raw_type, count in skipped.get(partition, {}).items():
                counts[raw_type.decode(errors="replace"), SKIPPED] += count
        for (event_type, outcome), count in counts.items():
            metrics.EVENTS.labels(name, metrics.event_type_label(event_type), outcome).inc(count)
            self._done[outcome] += count
        assert self._consumer is not None  # noqa: S101
        for partition, next_offset in result.next_offsets.items():
            high = self._consumer.highwater(TopicPartition(self._topic, partition))
            if high is not None:
                metrics.LAG.labels(name, str(partition)).set(max(0, high - next_offset))

    def _summarise(self) -> None:
        """One line of what the service did since the last one (nothing when it did nothing)."""
        if not self._done:
            return
        done, self._done = self._done, collections.Counter()
        lag = 0
        if self._consumer is not None:
            for tp in self._consumer.assignment():
                high = self._consumer.highwater(tp)
                position = self._positions.get(tp.partition)
                if high is not None and position is not None:
                    lag += max(0, high - position)
        log.info(
            "%s: %s; lag %d",
            self.service.name,
            # Every outcome, 0 included: each line carries the same counts (applied, duplicate,
            # stale, conflict...), as a reader and a log search expect.
            ", ".join(f"{done[outcome]} {outcome}" for outcome in metrics.OUTCOMES),
            lag,
        )

    def _commit_to_kafka(self, result: BatchResult) -> None:
        """Commit the batch's offsets to Kafka in the background, after the store's commit.

        Only lag monitors read them (the store has the truth), so the next batch does not wait
        for them: an OffsetCommit to Apache Kafka 4 takes 8 ms (its group coordinator lingers
        5 ms before writing), which halved a service's rate when awaited per batch. One commit
        is in flight at a time; offsets that come meanwhile are folded into the next."""
        if not result.next_offsets or self._consumer is None:
            return
        self._uncommitted.update(
            {TopicPartition(self._topic, p): o for p, o in result.next_offsets.items()}
        )
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_uncommitted(self._consumer))

    async def _commit_uncommitted(self, consumer: AIOKafkaConsumer) -> None:
        while self._uncommitted:
            offsets, self._uncommitted = self._uncommitted, {}
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:  # only lag monitors read these; the store has the truth
                log.info("kafka offset commit skipped: %r", exc)

    async def _prune(self) -> None:
        try:
            pruned = await prune_history(
                self.store, self.service.name, self.settings.history_retention_seconds
            )
        except StoreError as exc:
            log.warning("history (dedup keys) not pruned: %s", exc)
            return
        if pruned:
            metrics.DEDUP_PRUNED.labels(self.service.name).inc(pruned)

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Wait for the batch in flight, then let the partitions go."""
        if revoked:
            log.info(
                "%s: partitions %s given up",
                self.service.name,
                ",".join(str(tp.partition) for tp in sorted(revoked)),
            )
        async with self._lock:
            for tp in revoked:
                self._gaps.discard(tp.partition)
                self._positions.pop(tp.partition, None)
                with contextlib.suppress(KeyError):  # never measured: nothing to clear
                    metrics.LAG.remove(self.service.name, str(tp.partition))
        self.assigned.clear()

    async def _first_start(self) -> dict[int, Stored] | None:
        """The service's first start (no offsets stored): the offsets `start_from` chooses for
        every partition of the topic, recorded in the store at once; None when stopped first."""
        assert self._consumer is not None  # noqa: S101
        start_from = self.settings.start_from
        attempt = 0
        while True:
            try:
                chosen = await chosen_offsets(self._consumer, self._topic, start_from)
                break
            except KafkaError as exc:
                if self._stop.is_set():
                    return None
                delay = _retry_delay(attempt)
                attempt += 1
                log.warning("starting offsets unknown (%r); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
        stored = await self._retrying(
            lambda: record_first_offsets(
                self.store, self.service.name, self._topic, chosen, self._topic_id
            ),
            lambda: "starting offsets not stored",
        )
        if stored is not None:
            log.info(
                "%s: first start, from %s: %s recorded as the starting offsets; later starts "
                "continue from the stored offsets",
                self.service.name,
                start_from.text,
                ", ".join(f"{self._topic}[{p}] {o.next_offset}" for p, o in sorted(stored.items())),
            )
        return stored

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Seek every assigned partition to the offset the store holds."""
        assert self._consumer is not None  # noqa: S101
        metrics.REBALANCES.labels(self.service.name).inc()
        metrics.ASSIGNED.labels(self.service.name).set(len(assigned))
        # The fetcher reads on from Kafka's own position while the starting offsets are chosen:
        # with a start other than the beginning, no record of it may reach a batch before the
        # chosen offsets are stored (the batch's offset guard needs them), so fetch nothing yet.
        choosing = not self.settings.start_from.beginning
        if choosing:
            self._consumer.pause(*assigned)
        attempt = 0
        while True:
            try:
                offsets = await stored_offsets(self.store, self.service.name, self._topic)
                checked = await self._reset_other_logs([tp.partition for tp in assigned], offsets)
                break
            except StoreUnavailable as exc:
                metrics.STORE_ERRORS.labels(self.service.name).inc()
                delay = _retry_delay(attempt)
                attempt += 1
                log.warning("stored offsets unreadable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
        if checked is None:  # stopping during a store outage: the next owner checks again
            return
        if choosing and not offsets and assigned:
            checked = await self._first_start()
            if checked is None:  # stopped meanwhile: nothing recorded, the next start chooses
                return
        # A partition the store has never seen starts at offset 0, whatever Kafka's own
        # committed offset says (the store may be new). An exact seek, not seek_to_beginning():
        # that one is applied lazily, after a fetch may already have begun elsewhere. And 0, not
        # the broker's log start: the local broker (Tansu) was seen to answer ListOffsets
        # (earliest) with 7 for a partition holding records 0-19, after two producers wrote to
        # it, which skipped records 0-6. A broker whose log starts later (retention) answers
        # the fetch at 0 with OffsetOutOfRange, and the consumer moves to its first record
        # (auto_offset_reset="earliest"); the store takes a fresh partition's first batch
        # wherever it begins.
        starts: dict[int, int] = {}
        for tp in assigned:
            held = checked.get(tp.partition)
            offset = 0 if held is None else held.next_offset
            starts[tp.partition] = offset
            self._consumer.seek(tp, offset)
            self._positions[tp.partition] = offset
        if choosing:
            self._consumer.resume(*assigned)
        log.info(
            "%s: joined group %s: %s",
            self.service.name,
            self.group_id,
            ", ".join(f"{self._topic}[{p}] from {o}" for p, o in sorted(starts.items()))
            or "no partitions (more members than partitions, or no topic yet)",
        )
        self.assigned.set()
