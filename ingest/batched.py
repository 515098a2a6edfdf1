"""Batched delivery (idempotence on, the default for Apache Kafka): our batches handed to
aiokafka's producer, whose own background loop numbers them for the broker's de-duplication and
sends them.

A partition has at most one batch with the producer at a time (plus any that filled up); the
next goes the moment its ack comes back, so each batch holds what arrived during one round trip.
Only the producer's public batch API is used here (`create_batch`, `send_batch`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder

from wazza_hooks.contract import KafkaHeaders

from .delivery import Batch, Delivery, Slot


class _ProducerBatch(Batch):
    """A batch in the producer's own builder, which the producer numbers and sends."""

    __slots__ = ("builder", "holds_slot")

    def __init__(self, builder: BatchBuilder, slot: Slot, deadline: float) -> None:
        super().__init__(slot, deadline)
        self.builder = builder
        self.holds_slot = False
        """True while it counts as its partition's batch in flight (from hand-over to ack or
        deadline, whichever comes first)."""

    def add(self, key: bytes | None, value: bytes, headers: KafkaHeaders) -> bool:
        added = self.builder.append(timestamp=None, key=key, value=value, headers=headers)
        return added is not None


class BatchedDelivery(Delivery[_ProducerBatch]):
    """Batches handed to the producer one per partition at a time, on the next event-loop turn
    (or after the linger)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        loop: asyncio.AbstractEventLoop,
        on_batch: Callable[[int], None],
        set_up: Callable[[bool], None],
        *,
        linger: float,
    ) -> None:
        super().__init__(loop, on_batch, set_up)
        self._producer = producer
        self._linger = linger
        self._sealed: list[_ProducerBatch] = []
        """Full batches, to hand over at the next flush whatever is in flight."""
        self._busy: dict[Slot, int] = {}
        """Per partition, its batches with the producer and not yet answered."""
        self._flush_scheduled = False

    async def drain(self) -> None:
        if self._open or self._sealed:
            self._flush(everything=True)
        if self._deliveries:
            await asyncio.wait(self._deliveries)

    def _new_batch(self, slot: Slot, deadline: float) -> _ProducerBatch:
        return _ProducerBatch(self._producer.create_batch(), slot, deadline)

    def _opened(self, slot: Slot) -> None:
        if not self._busy.get(slot):
            self._schedule_flush()

    def _seal(self, batch: _ProducerBatch) -> None:
        self._sealed.append(batch)
        self._schedule_flush()

    def _expired(self, batch: _ProducerBatch) -> None:
        # A batch past its deadline no longer holds its partition: after an outage, the next
        # batch must not wait behind one the producer may keep retrying for seconds.
        self._release(batch)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if self._linger:
                self._loop.call_later(self._linger, self._flush)
            else:
                self._loop.call_soon(self._flush)

    def _flush(self, *, everything: bool = False) -> None:
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
        self._start(self._loop.create_task(self._deliver(ready)))

    async def _deliver(self, batches: list[_ProducerBatch]) -> None:
        for batch in batches:
            topic, partition = batch.slot
            try:
                acked = await self._producer.send_batch(batch.builder, topic, partition=partition)
            except KafkaError as exc:
                self._release(batch)
                batch.fail(f"broker refused the records: {exc!r}")
                continue
            acked.add_done_callback(partial(self._acked, batch))

    def _acked(self, batch: _ProducerBatch, acked: asyncio.Future[Any]) -> None:
        self._release(batch)
        if acked.cancelled():
            batch.fail("the producer abandoned the batch")
        elif (exc := acked.exception()) is not None:
            batch.fail(f"broker refused the records: {exc!r}")
        else:
            self._set_up(True)
            batch.succeed()

    def _release(self, batch: _ProducerBatch) -> None:
        if not batch.holds_slot:
            return
        batch.holds_slot = False
        self._busy[batch.slot] -= 1
        if batch.slot in self._open:
            self._schedule_flush()
