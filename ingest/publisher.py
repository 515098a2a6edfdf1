"""Publishing records to Kafka with a deadline: an ack within it, or a retriable error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from wazza_hooks.contract import KafkaHeaders

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
_DELIVERY_TIMEOUT_MS = 15_000
# Flushing on shutdown waits this long for outstanding acks (SIGTERM grace is usually 30 s).
_FLUSH_TIMEOUT_SECONDS = 10.0


# Keys seen recently keep their partition here: murmur2 in pure Python costs more than the rest
# of a publish. A job sends a handful of events, so a modest cache catches their repeats.
_KEY_CACHE_SIZE = 65_536


class PublishError(Exception):
    """The record was not acknowledged by the broker; nothing about it is durable."""

    retriable = True
    """The sender should try again later (a 503 with Retry-After)."""


class _Batch:
    """Records bound for one partition, and the requests waiting for their ack."""

    __slots__ = ("builder", "deadline", "settled", "waiters")

    def __init__(self, builder: BatchBuilder, deadline: float) -> None:
        self.builder = builder
        self.deadline = deadline
        self.settled = False
        self.waiters: list[asyncio.Future[None]] = []

    def settle(self, acked: asyncio.Future[object]) -> None:
        """Done-callback of the producer's future for this batch."""
        if acked.cancelled():
            self.fail("the producer abandoned the batch")
        elif (exc := acked.exception()) is not None:
            self.fail(f"broker refused the records: {exc!r}")
        else:
            self.settled = True
            for waiter in self.waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def fail(self, reason: str) -> None:
        self.settled = True
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(PublishError(reason))  # one each: tracebacks attach to it


class Publisher(Protocol):
    """What the ingester needs from a broker client."""

    async def publish(
        self, topic: str, key: bytes | None, value: bytes, headers: KafkaHeaders, ack_timeout: float
    ) -> None:
        """Return once the broker acknowledged the record (within `ack_timeout` seconds); raise
        PublishError otherwise."""

    async def ready(self) -> bool:
        """True when the broker can be reached now."""


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
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._idempotence = enable_idempotence
        self._linger = linger_ms / 1000
        self._on_change = on_connection_change
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._up = False
        self._loop = asyncio.get_event_loop()
        self._open: dict[tuple[str, int], _Batch] = {}
        self._flush_scheduled = False
        self._deliveries: set[asyncio.Task[None]] = set()
        self._partitions: dict[str, list[int]] = {}
        self._key_partitions: dict[bytes, tuple[list[int], int]] = {}
        self._round_robin = 0

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
                    if self._open:
                        self._flush(producer)
                    if self._deliveries:
                        await asyncio.wait(self._deliveries)
                    await producer.flush()
            except (TimeoutError, KafkaError) as exc:
                log.warning("producer flush incomplete at shutdown: %r", exc)
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

        The record joins the open batch of its partition; every batch opened during one turn of
        the event loop is handed to the producer at the end of that turn, and each waiter is
        answered when its batch's ack arrives. Batches are built here rather than by
        `producer.send()` so that a request costs one append and one future, not aiokafka's
        per-message bookkeeping (a future, metadata and a timer per record).
        """
        producer = self._producer
        if producer is None:
            raise PublishError("not connected to the broker yet")
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = await self._load_partitions(producer, topic, ack_timeout)
        partition = self._partition_of(topic, key, partitions)
        slot = (topic, partition)
        batch = self._open.get(slot)
        if batch is None:
            batch = self._open_batch(producer, slot, ack_timeout)
        if batch.builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
            # Full: seal it now and start the next one for this partition.
            del self._open[slot]
            self._dispatch(producer, slot, batch)
            batch = self._open_batch(producer, slot, ack_timeout)
            if batch.builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                raise PublishError("record larger than the producer's batch size")
        waiter: asyncio.Future[None] = self._loop.create_future()
        batch.waiters.append(waiter)
        await waiter
        if not self._up:
            self._set_up(True)

    def _open_batch(
        self, producer: AIOKafkaProducer, slot: tuple[str, int], ack_timeout: float
    ) -> _Batch:
        batch = _Batch(producer.create_batch(), self._loop.time() + ack_timeout)
        self._open[slot] = batch
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if self._linger:
                self._loop.call_later(self._linger, self._flush, producer)
            else:
                self._loop.call_soon(self._flush, producer)
        return batch

    def _flush(self, producer: AIOKafkaProducer) -> None:
        self._flush_scheduled = False
        batches, self._open = self._open, {}
        task = self._loop.create_task(self._deliver(producer, batches))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    def _dispatch(self, producer: AIOKafkaProducer, slot: tuple[str, int], batch: _Batch) -> None:
        task = self._loop.create_task(self._deliver(producer, {slot: batch}))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(
        self, producer: AIOKafkaProducer, batches: dict[tuple[str, int], _Batch]
    ) -> None:
        """Hand every batch to the producer; each batch's ack answers its waiters.

        One task and one deadline timer per flush, not per batch: a flush holds about one batch
        per partition, and per-batch tasks and timers would cost more than the records.
        """
        deadline = min(batch.deadline for batch in batches.values())
        timer = self._loop.call_at(deadline, self._expire, batches, self._loop.time())
        try:
            for (topic, partition), batch in batches.items():
                acked = await producer.send_batch(batch.builder, topic, partition=partition)
                acked.add_done_callback(batch.settle)
        except KafkaError as exc:
            for batch in batches.values():
                batch.fail(f"broker refused the records: {exc!r}")
        finally:
            if all(batch.settled for batch in batches.values()):
                timer.cancel()

    def _expire(self, batches: dict[tuple[str, int], _Batch], started: float) -> None:
        waited = self._loop.time() - started
        expired = False
        for batch in batches.values():
            if not batch.settled:
                expired = True
                batch.fail(f"no broker ack within {waited:.2f} s")
        if expired:
            self._set_up(False)

    async def _load_partitions(
        self, producer: AIOKafkaProducer, topic: str, ack_timeout: float
    ) -> list[int]:
        try:
            async with asyncio.timeout(ack_timeout):
                known = await producer.partitions_for(topic)
        except TimeoutError:
            self._set_up(False)
            raise PublishError(f"no metadata for {topic} within {ack_timeout:g} s") from None
        except KafkaError as exc:
            raise PublishError(f"no metadata for {topic}: {exc!r}") from exc
        partitions = sorted(known)
        self._partitions[topic] = partitions
        return partitions

    def _partition_of(self, topic: str, key: bytes | None, partitions: list[int]) -> int:
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
                request_timeout_ms=_DELIVERY_TIMEOUT_MS,
            )
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                await producer.stop()
                self._set_up(False)
                log.warning("broker %s unreachable (%r); retrying", self._bootstrap, exc)
                await asyncio.sleep(_CONNECT_RETRY_SECONDS)
                continue
            self._producer = producer
            self._set_up(True)
        self._tasks.append(asyncio.create_task(self._probe_forever(), name="kafka-probe"))

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(_PROBE_INTERVAL_SECONDS)
            await self.ready()
