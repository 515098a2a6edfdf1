"""Direct delivery (idempotence off): produce requests built here and sent on aiokafka's
connection, without its per-message bookkeeping.

One produce request per broker at a time, built from every batch that is ready; while it is on
its way the next batches fill, and the ack answers all of its requests in one event-loop turn.
Each batch is as large as the traffic of one round trip, and no aiokafka future, task or
background-loop wake-up stands between an ack and the answers (measured with `make bench`:
about 8.7k -> 10k requests/s on 2 cores). A batch retried after a lost ack may be stored
twice; the consumers' event-id dedup drops the copy.

This is the one module that reaches into aiokafka's internals: its client's connections and
cluster metadata, its ProduceRequest and its record batch builder. `make test-aiokafka-lowest`
runs its tests against the lowest aiokafka the pin allows.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import TopicPartition

from wazza_hooks.contract import KafkaHeaders

from .delivery import DELIVERY_TIMEOUT_MS, MAX_BATCH_BYTES, Batch, Delivery, Slot

log = logging.getLogger("wazza.ingest.publisher")

# After a round in which the broker could not take some records (no leader known, a leader
# moving, the connection down), the next round waits this long: they are tried again until
# their deadline, without spinning on a broker that is away.
RETRY_BACKOFF_SECONDS = 0.1


class _DirectBatch(Batch):
    """A batch that is its own record batch: aiokafka's C builder, without the producer's
    wrapper around it, built into `built` when first sent."""

    __slots__ = ("built", "count", "records", "retry_at")

    def __init__(self, slot: Slot, deadline: float) -> None:
        super().__init__(slot, deadline)
        self.records: DefaultRecordBatchBuilder | None = DefaultRecordBatchBuilder(
            2,  # magic: the v2 record batch, with headers
            0,  # no compression: webhook bodies are small, and compressing them costs CPU
            is_transactional=0,
            producer_id=-1,
            producer_epoch=-1,
            base_sequence=0,
            batch_size=MAX_BATCH_BYTES,
        )
        self.built: bytes | None = None
        self.count = 0
        self.retry_at = 0.0
        """Not sent again before this loop time (0: never sent back)."""

    def add(self, key: bytes | None, value: bytes, headers: KafkaHeaders) -> bool:
        records = self.records
        assert records is not None  # noqa: S101 (only the open batch takes records)
        if records.append(self.count, None, key=key, value=value, headers=headers) is None:
            return False
        self.count += 1
        return True

    def payload(self) -> bytes:
        """The encoded record batch (built once; a retry sends it again)."""
        if self.built is None:
            assert self.records is not None  # noqa: S101
            self.built = self.records.build()
            self.records = None
        return self.built


class DirectDelivery(Delivery[_DirectBatch]):
    """Each broker's batches in one produce request at a time, oldest first per partition."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        loop: asyncio.AbstractEventLoop,
        on_batch: Callable[[int], None],
        set_up: Callable[[bool], None],
    ) -> None:
        super().__init__(loop, on_batch, set_up)
        self._client = producer.client
        self._queued: dict[Slot, deque[_DirectBatch]] = defaultdict(deque)
        """Batches sealed (full) or sent back for a retry, oldest first."""
        self._sending: set[int] = set()
        """The brokers with a produce request on its way."""
        self._in_flight: set[Slot] = set()
        """The partitions with a batch on its way."""
        self._backoff: asyncio.TimerHandle | None = None
        self._dispatch_scheduled = False

    async def drain(self) -> None:
        while self._open or self._queued or self._deliveries:
            self._kick()
            if self._deliveries:
                await asyncio.wait(self._deliveries)
            else:
                await asyncio.sleep(RETRY_BACKOFF_SECONDS)

    def _new_batch(self, slot: Slot, deadline: float) -> _DirectBatch:
        return _DirectBatch(slot, deadline)

    def _opened(self, slot: Slot) -> None:
        self._kick()

    def _seal(self, batch: _DirectBatch) -> None:
        self._queued[batch.slot].append(batch)

    def _kick(self) -> None:
        """Dispatch on the next event-loop turn, so every record appended in this one rides
        the same request."""
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Send each idle broker one produce request with a batch for every partition it leads
        that has records: one per partition (a request may carry one), oldest first (one sent
        back for a retry, else one that filled up, else the open one). A broker with a request
        on its way is left alone until its answer, so a slow broker holds back only its own
        partitions; a partition with no known leader waits for the metadata, within its
        deadline."""
        self._dispatch_scheduled = False
        client = self._client
        now = self._loop.time()
        by_node: dict[int, dict[Slot, _DirectBatch]] = defaultdict(dict)
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
            self._pop(slot)
            if not batch.retry_at:  # counted once, when first sent
                self._on_batch(len(batch.waiters))
            by_node[leader][slot] = batch
        if leaderless:
            client.force_metadata_update()
        if leaderless or waiting:
            self._kick_later()
        for node, batches in by_node.items():
            self._sending.add(node)
            self._in_flight.update(batches)
            self._start(self._loop.create_task(self._send_to(node, batches)))

    def _head(self, slot: Slot) -> _DirectBatch | None:
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

    def _pop(self, slot: Slot) -> None:
        queue = self._queued.get(slot)
        if queue:
            queue.popleft()
            if not queue:
                del self._queued[slot]
        else:
            del self._open[slot]

    async def _send_to(self, node: int, batches: dict[Slot, _DirectBatch]) -> None:
        """One produce request to `node`; each batch succeeds, fails, or goes back for a retry."""
        try:
            again = await self._produce(node, batches)
            if again:
                self._retry(again)
        finally:
            self._sending.discard(node)
            self._in_flight.difference_update(batches)
            if self._open or self._queued:
                self._kick()

    async def _produce(self, node: int, batches: dict[Slot, _DirectBatch]) -> list[_DirectBatch]:
        """Send the request; the batches to send again."""
        client: Any = self._client
        topics: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
        for (topic, partition), batch in batches.items():
            topics[topic].append((partition, batch.payload()))
        request = ProduceRequest(
            required_acks=-1,
            timeout=DELIVERY_TIMEOUT_MS,
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
        again: list[_DirectBatch] = []
        for topic, partitions in response.topics:
            for info in partitions:
                answered = unanswered.pop((topic, info[0]), None)
                if answered is None:
                    continue
                if info[1] == 0:
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

    def _retry(self, batches: list[_DirectBatch]) -> None:
        """Send these again after a short wait, ahead of anything newer for their partitions,
        unless their deadline has passed first (see _head)."""
        for batch in batches:
            if not batch.settled:
                batch.retry_at = self._loop.time() + RETRY_BACKOFF_SECONDS
                self._queued[batch.slot].appendleft(batch)
        self._kick_later()

    def _kick_later(self) -> None:
        """One dispatch after the backoff, however many ask for it meanwhile."""
        if self._backoff is None:

            def kick() -> None:
                self._backoff = None
                self._kick()

            self._backoff = self._loop.call_later(RETRY_BACKOFF_SECONDS, kick)
