"""Publishing records to Kafka with a deadline: an ack within it, or a retriable error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, for_code
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import TopicPartition

from wazza_hooks.contract import KafkaHeaders
from wazza_hooks.kafka_client import PLAINTEXT, KafkaSecurity
from wazza_hooks.producers import START_TIMEOUT_SECONDS, log_start_failure

log = logging.getLogger("wazza.ingest.publisher")

# Between two attempts to reach a broker that was down when we started: short enough that the
# ingester is ready soon after the broker is, long enough not to spin on a dead address.
_CONNECT_RETRY_SECONDS = 1.0
# How often an idle ingester checks the broker, so the connection gauge and /readyz stay true
# even when no webhooks flow.
_PROBE_INTERVAL_SECONDS = 5.0
# A readiness probe answers a load balancer, which times out in a few seconds.
_PROBE_TIMEOUT_SECONDS = 1.0
# Records that could not be delivered are dropped by the producer after this long; the sender has
# had its 503 long before, and retries. It bounds the memory held while the broker is away.
_DELIVERY_TIMEOUT_MS = 10_000
# Flushing on shutdown waits this long for outstanding acks (SIGTERM grace is usually 30 s).
_FLUSH_TIMEOUT_SECONDS = 10.0
# After a round in which the broker could not take some records (no leader known, a leader
# moving, the connection down), the next round waits this long: they are tried again until
# their deadline, without spinning on a broker that is away.
_RETRY_BACKOFF_SECONDS = 0.1


# Keys seen recently keep their partition here: murmur2 in pure Python costs more than the rest
# of a publish. A job sends a handful of events, so a modest cache catches their repeats.
_KEY_CACHE_SIZE = 65_536

# A partition's batch holds what arrives for it during one round trip; aiokafka's default
# (16 KiB, some fifty webhooks) would split a busy round in two. Well under the broker's
# per-batch limit (message.max.bytes, 1 MiB by default); a record larger than this still goes,
# alone in its batch.
_MAX_BATCH_BYTES = 256 * 1024


class PublishError(Exception):
    """The record was not acknowledged by the broker; nothing about it is durable."""

    retriable = True
    """The sender should try again later (a 503 with Retry-After)."""


class _Batch:
    """Records bound for one partition, and the requests waiting for their ack."""

    __slots__ = (
        "builder",
        "built",
        "count",
        "deadline",
        "holds_slot",
        "records",
        "retry_at",
        "settled",
        "slot",
        "timer",
        "waiters",
    )

    def __init__(
        self, builder: BatchBuilder | None, slot: tuple[str, int], deadline: float
    ) -> None:
        self.builder = builder
        """Delivery through the producer's sender: its batch, which it numbers and sends."""
        self.records: DefaultRecordBatchBuilder | None = None
        """Direct delivery: the record batch itself (aiokafka's C builder, without the
        producer's wrapper around it), built into `built` when first sent."""
        if builder is None:
            self.records = DefaultRecordBatchBuilder(
                2,  # magic: the v2 record batch, with headers
                0,  # no compression: webhook bodies are small, and compressing them costs CPU
                is_transactional=0,
                producer_id=-1,
                producer_epoch=-1,
                base_sequence=0,
                batch_size=_MAX_BATCH_BYTES,
            )
        self.built: bytes | None = None
        self.count = 0
        self.slot = slot
        self.deadline = deadline
        self.settled = False
        self.holds_slot = False
        """True while it counts as its partition's batch in flight (from hand-over to ack or
        deadline, whichever comes first)."""
        self.timer: asyncio.TimerHandle | None = None
        self.waiters: list[asyncio.Future[None]] = []
        self.retry_at = 0.0
        """Direct delivery: not sent again before this loop time (0: never sent back)."""

    def add(self, key: bytes | None, value: bytes, headers: KafkaHeaders) -> bool:
        """Append one record; False when the batch is full (a first record always fits)."""
        records = self.records
        if records is None:
            assert self.builder is not None  # noqa: S101
            added = self.builder.append(timestamp=None, key=key, value=value, headers=headers)
            return added is not None
        if records.append(self.count, None, key=key, value=value, headers=headers) is None:
            return False
        self.count += 1
        return True

    def payload(self) -> bytes:
        """Direct delivery: the encoded record batch (built once; a retry sends it again)."""
        if self.built is None:
            assert self.records is not None  # noqa: S101
            self.built = self.records.build()
            self.records = None
        return self.built

    def succeed(self) -> None:
        self._settle()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)

    def fail(self, reason: str) -> None:
        self._settle()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(PublishError(reason))  # one each: tracebacks attach to it

    def _settle(self) -> None:
        self.settled = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


Slot = tuple[str, int]
"""(topic, partition)."""


class _Unplaced(NamedTuple):
    """A record waiting for its topic's partitions to be known."""

    key: bytes | None
    value: bytes
    headers: KafkaHeaders
    deadline: float
    """Loop time by which it must be acknowledged."""
    waiter: asyncio.Future[None]


class Publisher(Protocol):
    """What the ingester needs from a broker client."""

    async def publish(
        self, topic: str, key: bytes | None, value: bytes, headers: KafkaHeaders, ack_timeout: float
    ) -> None:
        """Return once the broker acknowledged the record (within `ack_timeout` seconds); raise
        PublishError otherwise."""

    async def ready(self) -> bool:
        """True when the broker can be reached now."""

    @property
    def problem(self) -> str | None:
        """What to change when the broker answers but refuses this client; None otherwise."""


class KafkaPublisher:
    """An aiokafka producer with `acks=all`, started in the background and kept connected.

    The ingester serves from the first second even if the broker is away: until the producer has
    connected, every publish fails fast with PublishError (a 503), and a background task keeps
    trying. A broker that goes away later is reconnected by aiokafka itself.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str,
        enable_idempotence: bool,
        linger_ms: int,
        on_connection_change: Callable[[bool], None] = lambda up: None,
        on_batch: Callable[[int], None] = lambda records: None,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._security = security
        self._client_id = client_id
        self._idempotence = enable_idempotence
        self._linger = linger_ms / 1000
        self._on_change = on_connection_change
        self._on_batch = on_batch
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._up = False
        self._loop: asyncio.AbstractEventLoop  # the running loop, bound in __aenter__
        self._open: dict[tuple[str, int], _Batch] = {}
        self._sealed: list[_Batch] = []
        self._busy: dict[tuple[str, int], int] = {}
        self._flush_scheduled = False
        self._deliveries: set[asyncio.Task[None]] = set()
        self._partitions: dict[str, list[int]] = {}
        self._key_partitions: dict[bytes, tuple[list[int], int]] = {}
        self._round_robin = 0
        self._direct = not enable_idempotence
        self._queued: dict[Slot, deque[_Batch]] = defaultdict(deque)
        """Direct delivery: batches sealed (full) or sent back for a retry, oldest first."""
        self._sending: set[int] = set()
        """Direct delivery: the brokers with a produce request on its way."""
        self._in_flight: set[Slot] = set()
        """Direct delivery: the partitions with a batch on its way."""
        self._backoff: asyncio.TimerHandle | None = None
        self._dispatch_scheduled = False
        self._refused: str | None = None
        self._unplaced: dict[str, list[_Unplaced]] = {}
        """Records for a topic whose partitions are being loaded, in the order they came."""
        self._loaders: set[asyncio.Task[None]] = set()

    @property
    def problem(self) -> str | None:
        """What to change when the broker answers but will not take this producer (see
        wazza_hooks.producers); None otherwise."""
        return self._refused

    async def __aenter__(self) -> KafkaPublisher:
        self._loop = asyncio.get_running_loop()
        self._tasks.append(asyncio.create_task(self._connect_forever(), name="kafka-connect"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                async with asyncio.timeout(_FLUSH_TIMEOUT_SECONDS):
                    # Records still waiting for their topic's partitions are not in a batch
                    # yet: place them first, or the flush below would stop the producer
                    # under them.
                    if self._loaders:
                        await asyncio.wait(self._loaders)
                    if self._direct:
                        # Until every batch is acknowledged, refused or past its deadline.
                        while self._open or self._queued or self._deliveries:
                            self._kick(producer)
                            if self._deliveries:
                                await asyncio.wait(self._deliveries)
                            else:
                                await asyncio.sleep(_RETRY_BACKOFF_SECONDS)
                    elif self._open or self._sealed:
                        self._flush(producer, everything=True)
                    if self._deliveries:
                        await asyncio.wait(self._deliveries)
                    await producer.flush()
            except (TimeoutError, KafkaError) as exc:
                log.warning("producer flush incomplete at shutdown: %r", exc)
            for loader in self._loaders:
                loader.cancel()  # its records are failed (a 503) rather than left waiting
            if self._loaders:
                await asyncio.wait(self._loaders)
            await producer.stop()

    @property
    def connected(self) -> bool:
        """The last known state of the broker connection."""
        return self._up

    def _set_up(self, up: bool) -> None:
        if up != self._up:
            self._up = up
            self._on_change(up)
            log.info("broker %s", "connected" if up else "unreachable")

    async def publish(
        self, topic: str, key: bytes | None, value: bytes, headers: KafkaHeaders, ack_timeout: float
    ) -> None:
        """Send and wait for the ack, at most `ack_timeout` seconds; raises PublishError.

        The record joins the open batch of its partition, and a request costs one append and
        one future rather than aiokafka's per-message bookkeeping. How batches travel depends
        on idempotence:

        - Off (direct delivery, `_dispatch`): one produce request per broker at a time,
          built here from every batch that is ready, sent on aiokafka's connection; while it is
          on its way the next batches fill, and the ack answers all of its requests in one
          event-loop turn. Each batch is as large as the traffic of one round trip, and no
          aiokafka future, task or sender wake-up stands between an ack and the answers
          (measured with `make bench`: about 8.7k -> 10k requests/s on 2 cores).
        - On: the producer's own sender, which numbers the batches for the broker's
          de-duplication; a partition has at most one batch with it at a time (plus any that
          filled up), the next goes the moment its ack comes back.
        """
        producer = self._producer
        if producer is None:
            raise PublishError("not connected to the broker yet")
        waiter: asyncio.Future[None] = self._loop.create_future()
        partitions = self._partitions.get(topic)
        if partitions is None:
            # The topic's partitions are not known yet: the record waits in line with the
            # others of its topic, and one loader places them all, in this order, in one go.
            # Each publish awaiting the metadata on its own resumed in no set order (a record
            # published after the cache filled overtook those still waking up: a key's records
            # landed as [7, 0, 1, ...] on Apache Kafka, whose first Metadata answer to a new
            # producer names no topics), and the shutdown flush did not see them at all.
            line = self._unplaced.get(topic)
            if line is None:
                line = self._unplaced[topic] = []
                loader = self._loop.create_task(self._place_when_known(producer, topic, line))
                self._loaders.add(loader)
                loader.add_done_callback(self._loaders.discard)
            deadline = self._loop.time() + ack_timeout
            line.append(_Unplaced(key, value, headers, deadline, waiter))
        else:
            self._place(
                producer,
                (topic, self._partition_of(key, partitions)),
                key,
                value,
                headers,
                ack_timeout,
                waiter,
            )
        await waiter

    def _place(
        self,
        producer: AIOKafkaProducer,
        slot: Slot,
        key: bytes | None,
        value: bytes,
        headers: KafkaHeaders,
        ack_timeout: float,
        waiter: asyncio.Future[None],
    ) -> None:
        """Append the record to its partition's open batch; its ack answers `waiter`."""
        batch = self._open.get(slot)
        if batch is None:
            batch = self._open_batch(producer, slot, ack_timeout)
        if not batch.add(key, value, headers):
            # Full: it goes now, whatever is in flight, and the next one starts.
            del self._open[slot]
            if self._direct:
                self._queued[slot].append(batch)
            else:
                self._sealed.append(batch)
            batch = self._open_batch(producer, slot, ack_timeout)
            if not self._direct:
                self._schedule_flush(producer)
            if not batch.add(key, value, headers):
                waiter.set_exception(PublishError("record larger than the producer's batch size"))
                return
        batch.waiters.append(waiter)

    async def _place_when_known(
        self, producer: AIOKafkaProducer, topic: str, line: list[_Unplaced]
    ) -> None:
        """Load the topic's partitions within the first record's deadline, then place every
        record of `line` that is still wanted, in order, before any publish that comes after."""
        failure = f"no metadata for {topic}"
        try:
            try:
                async with asyncio.timeout_at(line[0].deadline):
                    known = await producer.partitions_for(topic)
            except TimeoutError:
                self._set_up(False)
                failure = f"no metadata for {topic} within the publish deadline"
                return
            except KafkaError as exc:
                failure = f"no metadata for {topic}: {exc!r}"
                return
            partitions = sorted(known)
            # In the same event-loop turn as the placing below: a publish that sees the
            # partitions comes after every record of the line.
            self._partitions[topic] = partitions
            now = self._loop.time()
            for record in line:
                if record.waiter.done():  # its publish was cancelled while it waited
                    continue
                if record.deadline <= now:
                    record.waiter.set_exception(PublishError(f"{failure} within its deadline"))
                    continue
                slot = (topic, self._partition_of(record.key, partitions))
                self._place(
                    producer,
                    slot,
                    record.key,
                    record.value,
                    record.headers,
                    record.deadline - now,
                    record.waiter,
                )
            line.clear()
        finally:
            # Whatever was not placed (a timeout, an error, a cancel at shutdown) is answered
            # now; the next publish for the topic starts a new load.
            del self._unplaced[topic]
            for record in line:
                if not record.waiter.done():
                    record.waiter.set_exception(PublishError(failure))

    def _open_batch(
        self, producer: AIOKafkaProducer, slot: tuple[str, int], ack_timeout: float
    ) -> _Batch:
        builder = None if self._direct else producer.create_batch()
        batch = _Batch(builder, slot, self._loop.time() + ack_timeout)
        batch.timer = self._loop.call_at(batch.deadline, self._expire, producer, batch)
        self._open[slot] = batch
        if self._direct:
            self._kick(producer)
        elif not self._busy.get(slot):
            self._schedule_flush(producer)
        return batch

    # Direct delivery (idempotence off) ------------------------------------------------------

    def _kick(self, producer: AIOKafkaProducer) -> None:
        """Dispatch on the next event-loop turn, so every record appended in this one rides
        the same request."""
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            self._loop.call_soon(self._dispatch, producer)

    def _dispatch(self, producer: AIOKafkaProducer) -> None:
        """Send each idle broker one produce request with a batch for every partition it leads
        that has records: one per partition (a request may carry one), oldest first (one sent
        back for a retry, else one that filled up, else the open one). A broker with a request
        on its way is left alone until its answer, so a slow broker holds back only its own
        partitions; a partition with no known leader waits for the metadata, within its
        deadline."""
        self._dispatch_scheduled = False
        client = producer.client
        now = self._loop.time()
        by_node: dict[int, dict[Slot, _Batch]] = defaultdict(dict)
        leaderless = waiting = False
        for slot in [*self._queued, *(s for s in self._open if s not in self._queued)]:
            batch = self._head(slot)
            if batch is None:
                continue
            if batch.retry_at > now + 0.001:  # (a timer may fire a hair early)
                waiting = True
                continue
            leader = client.cluster.leader_for_partition(TopicPartition(*slot))
            if leader is None or leader < 0:
                leaderless = True
                continue
            if leader in self._sending or slot in self._in_flight:
                # A partition whose leader moved while a batch was on its way waits for that
                # batch's answer, so that a retry of it is not written after newer records.
                continue
            self._pop(slot, batch)
            if not batch.retry_at:  # counted once, when first sent
                self._on_batch(len(batch.waiters))
            by_node[leader][slot] = batch
        if leaderless:
            client.force_metadata_update()
        if leaderless or waiting:
            self._kick_later(producer)
        for node, batches in by_node.items():
            self._sending.add(node)
            self._in_flight.update(batches)
            task = self._loop.create_task(self._send_to(producer, node, batches))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    def _head(self, slot: Slot) -> _Batch | None:
        """The partition's next batch to send (dropping those past their deadline: their
        senders had their 503 and will send the events again), or None."""
        queue = self._queued.get(slot)
        if queue is not None:
            while queue and queue[0].settled:
                queue.popleft()
            if queue:
                return queue[0]
            del self._queued[slot]
        return self._open.get(slot)

    def _pop(self, slot: Slot, batch: _Batch) -> None:
        queue = self._queued.get(slot)
        if queue:
            queue.popleft()
            if not queue:
                del self._queued[slot]
        else:
            del self._open[slot]

    async def _send_to(
        self, producer: AIOKafkaProducer, node: int, batches: dict[Slot, _Batch]
    ) -> None:
        """One produce request to `node`; each batch succeeds, fails, or goes back for a retry."""
        client = producer.client
        try:
            again = await self._produce(client, node, batches)
            if again:
                self._retry(producer, again)
        finally:
            self._sending.discard(node)
            self._in_flight.difference_update(batches)
            if self._open or self._queued:
                self._kick(producer)

    async def _produce(self, client: Any, node: int, batches: dict[Slot, _Batch]) -> list[_Batch]:
        """Send the request; the batches to send again."""
        topics: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
        for (topic, partition), batch in batches.items():
            topics[topic].append((partition, batch.payload()))
        request = ProduceRequest(
            required_acks=-1,
            timeout=_DELIVERY_TIMEOUT_MS,
            topics=list(topics.items()),
            transactional_id=None,
        )
        try:
            response = await client.send(node, request)
        except KafkaError as exc:
            if not exc.retriable:
                for batch in batches.values():
                    batch.fail(f"broker refused the records: {exc!r}")
                return []
            if getattr(exc, "invalid_metadata", False):
                client.force_metadata_update()
            return list(batches.values())
        except Exception as exc:  # a defect: answer 503 now, keep sending the next requests
            log.exception("produce request to broker %s failed", node)
            for batch in batches.values():
                batch.fail(f"producer error: {exc!r}")
            return []
        unanswered = dict(batches)
        again: list[_Batch] = []
        for topic, partitions in response.topics:
            for info in partitions:
                answered = unanswered.pop((topic, info[0]), None)
                if answered is None:
                    continue
                if info[1] == 0:
                    if not self._up:
                        self._set_up(True)
                    answered.succeed()
                    continue
                error = for_code(info[1])
                if error.retriable:
                    if error.invalid_metadata:
                        client.force_metadata_update()
                    again.append(answered)
                else:
                    answered.fail(f"broker refused the records: {error.__name__}")
        return again + list(unanswered.values())  # a partition the answer left out: again

    def _retry(self, producer: AIOKafkaProducer, batches: list[_Batch]) -> None:
        """Send these again after a short wait, ahead of anything newer for their partitions,
        unless their deadline has passed first (see _head)."""
        for batch in batches:
            if not batch.settled:
                batch.retry_at = self._loop.time() + _RETRY_BACKOFF_SECONDS
                self._queued[batch.slot].appendleft(batch)
        self._kick_later(producer)

    def _kick_later(self, producer: AIOKafkaProducer) -> None:
        """One dispatch after the backoff, however many ask for it meanwhile."""
        if self._backoff is None:

            def kick() -> None:
                self._backoff = None
                self._kick(producer)

            self._backoff = self._loop.call_later(_RETRY_BACKOFF_SECONDS, kick)

    # Delivery through the producer's sender (idempotence on) ---------------------------------

    def _schedule_flush(self, producer: AIOKafkaProducer) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if self._linger:
                self._loop.call_later(self._linger, self._flush, producer)
            else:
                self._loop.call_soon(self._flush, producer)

    def _flush(self, producer: AIOKafkaProducer, *, everything: bool = False) -> None:
        """Hand the producer every sealed batch, and each open one whose partition is free."""
        self._flush_scheduled = False
        ready, self._sealed = self._sealed, []
        for slot, batch in list(self._open.items()):
            if everything or not self._busy.get(slot):
                del self._open[slot]
                ready.append(batch)
        if not ready:
            return
        for batch in ready:
            self._on_batch(len(batch.waiters))
            batch.holds_slot = True
            self._busy[batch.slot] = self._busy.get(batch.slot, 0) + 1
        task = self._loop.create_task(self._deliver(producer, ready))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, producer: AIOKafkaProducer, batches: list[_Batch]) -> None:
        for batch in batches:
            topic, partition = batch.slot
            try:
                acked = await producer.send_batch(batch.builder, topic, partition=partition)
            except KafkaError as exc:
                self._release(producer, batch)
                batch.fail(f"broker refused the records: {exc!r}")
                continue
            acked.add_done_callback(partial(self._acked, producer, batch))

    def _acked(self, producer: AIOKafkaProducer, batch: _Batch, acked: asyncio.Future[Any]) -> None:
        self._release(producer, batch)
        if acked.cancelled():
            batch.fail("the producer abandoned the batch")
        elif (exc := acked.exception()) is not None:
            batch.fail(f"broker refused the records: {exc!r}")
        else:
            if not self._up:
                self._set_up(True)
            batch.succeed()

    def _release(self, producer: AIOKafkaProducer, batch: _Batch) -> None:
        if not batch.holds_slot:
            return
        batch.holds_slot = False
        self._busy[batch.slot] -= 1
        if batch.slot in self._open:
            self._schedule_flush(producer)

    def _expire(self, producer: AIOKafkaProducer, batch: _Batch) -> None:
        batch.timer = None
        if batch.settled:
            return
        if self._open.get(batch.slot) is batch:
            # Never handed over (its partition stayed busy): drop it, it was never sent.
            del self._open[batch.slot]
        # A batch past its deadline no longer holds its partition: after an outage, the next
        # batch must not wait behind one the producer may keep retrying for seconds.
        self._release(producer, batch)
        self._set_up(False)
        batch.fail("no broker ack within the publish deadline")

    def _partition_of(self, key: bytes | None, partitions: list[int]) -> int:
        if key is None:
            self._round_robin += 1
            return partitions[self._round_robin % len(partitions)]
        cache = self._key_partitions
        found = cache.get(key)
        if found is None or found[0] is not partitions:
            if len(cache) >= _KEY_CACHE_SIZE:
                cache.clear()
            # Kafka's default partitioner (murmur2 of the key, as the Java client computes it),
            # so that every producer of ours and of others puts a job on the same partition.
            found = (partitions, partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)])
            cache[key] = found
        return found[1]

    async def ready(self) -> bool:
        """Ask the broker for metadata now; True when it answers within the probe timeout."""
        producer = self._producer
        if producer is None:
            return False
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_SECONDS):
                await producer.client.fetch_all_metadata()
        except (TimeoutError, KafkaError, OSError):
            self._set_up(False)
            return False
        self._set_up(True)
        return True

    async def _connect_forever(self) -> None:
        while self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                acks="all",
                enable_idempotence=self._idempotence,
                linger_ms=0,  # batches are built and lingered here (see publish)
                max_batch_size=_MAX_BATCH_BYTES,
                request_timeout_ms=_DELIVERY_TIMEOUT_MS,
                **self._security.client_options(),
            )
            try:
                async with asyncio.timeout(START_TIMEOUT_SECONDS):
                    await producer.start()
            except asyncio.CancelledError:
                await producer.stop()  # stopping while still connecting: close what it opened
                raise
            except (KafkaError, OSError, TimeoutError) as exc:
                await producer.stop()
                self._set_up(False)
                self._refused = log_start_failure(
                    log, exc, self._bootstrap, self._idempotence, "retrying"
                )
                await asyncio.sleep(_CONNECT_RETRY_SECONDS)
                continue
            self._refused = None
            self._producer = producer
            self._set_up(True)
        self._tasks.append(asyncio.create_task(self._probe_forever(), name="kafka-probe"))

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(_PROBE_INTERVAL_SECONDS)
            await self.ready()
