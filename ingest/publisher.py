"""Publishing records to Kafka with a deadline: an ack within it, or a retriable error.

This module owns the producer's lifecycle (started in the background, kept connected, probed,
flushed at shutdown) and the partitioning (Kafka's default partitioner, and records for a topic
whose partitions are not known yet kept in order). How a partition's batch travels to the broker
is the delivery's: `direct.py` with idempotence off, `batched.py` with it on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from wazza_hooks.contract import KafkaHeaders
from wazza_hooks.kafka_client import PLAINTEXT, KafkaSecurity
from wazza_hooks.producers import START_TIMEOUT_SECONDS, log_start_failure

from .batched import BatchedDelivery
from .delivery import DELIVERY_TIMEOUT_MS, MAX_BATCH_BYTES, Delivery, PublishError
from .direct import DirectDelivery

__all__ = ["KafkaPublisher", "PublishError", "Publisher"]

log = logging.getLogger("wazza.ingest.publisher")

# Between two attempts to reach a broker that was down when we started: short enough that the
# ingester is ready soon after the broker is, long enough not to spin on a dead address.
_CONNECT_RETRY_SECONDS = 1.0
# How often an idle ingester checks the broker, so the connection gauge and /readyz stay true
# even when no webhooks flow.
_PROBE_INTERVAL_SECONDS = 5.0
# A readiness probe answers a load balancer, which times out in a few seconds.
_PROBE_TIMEOUT_SECONDS = 1.0
# Flushing on shutdown waits this long for outstanding acks (SIGTERM grace is usually 30 s).
_FLUSH_TIMEOUT_SECONDS = 10.0

# Keys seen recently keep their partition here: murmur2 in pure Python costs more than the rest
# of a publish. A job sends a handful of events, so a modest cache catches their repeats.
_KEY_CACHE_SIZE = 65_536


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
        self._delivery: Delivery[Any] | None = None
        """Set with the producer, once it has connected."""
        self._tasks: list[asyncio.Task[None]] = []
        self._up = False
        self._loop: asyncio.AbstractEventLoop  # the running loop, bound in __aenter__
        self._partitions: dict[str, list[int]] = {}
        self._key_partitions: dict[bytes, tuple[list[int], int]] = {}
        self._round_robin = 0
        self._direct = not enable_idempotence
        """Direct delivery (direct.py) without idempotence; else the producer's (batched.py),
        which numbers the batches for the broker's de-duplication."""
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
            delivery, self._delivery = self._delivery, None
            try:
                async with asyncio.timeout(_FLUSH_TIMEOUT_SECONDS):
                    # Records still waiting for their topic's partitions are not in a batch
                    # yet: place them first, or the drain below would stop the producer
                    # under them.
                    if self._loaders:
                        await asyncio.wait(self._loaders)
                    if delivery is not None:
                        await delivery.drain()
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

    def _use(self, producer: AIOKafkaProducer) -> None:
        """Publish through `producer` from now on (started, or a test's stand-in)."""
        if self._direct:
            self._delivery = DirectDelivery(producer, self._loop, self._on_batch, self._set_up)
        else:
            self._delivery = BatchedDelivery(
                producer, self._loop, self._on_batch, self._set_up, linger=self._linger
            )
        self._producer = producer

    async def publish(
        self, topic: str, key: bytes | None, value: bytes, headers: KafkaHeaders, ack_timeout: float
    ) -> None:
        """Send and wait for the ack, at most `ack_timeout` seconds; raises PublishError.

        The record joins the open batch of its partition, and a request costs one append and
        one future rather than aiokafka's per-message bookkeeping; the delivery (direct.py or
        batched.py) takes the batches to the broker and answers each request on its ack.
        """
        producer = self._producer
        delivery = self._delivery
        if producer is None or delivery is None:
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
                loader = self._loop.create_task(
                    self._place_when_known(producer, delivery, topic, line)
                )
                self._loaders.add(loader)
                loader.add_done_callback(self._loaders.discard)
            deadline = self._loop.time() + ack_timeout
            line.append(_Unplaced(key, value, headers, deadline, waiter))
        else:
            delivery.place(
                (topic, self._partition_of(key, partitions)),
                key,
                value,
                headers,
                ack_timeout,
                waiter,
            )
        await waiter

    async def _place_when_known(
        self,
        producer: AIOKafkaProducer,
        delivery: Delivery[Any],
        topic: str,
        line: list[_Unplaced],
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
                delivery.place(
                    (topic, self._partition_of(record.key, partitions)),
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
                max_batch_size=MAX_BATCH_BYTES,
                request_timeout_ms=DELIVERY_TIMEOUT_MS,
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
            self._use(producer)
            self._set_up(True)
        self._tasks.append(asyncio.create_task(self._probe_forever(), name="kafka-probe"))

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(_PROBE_INTERVAL_SECONDS)
            await self.ready()
