"""What the publisher's two ways of delivering batches share: a batch per partition that answers
its requests on the broker's ack or at its deadline, and the error a request gets otherwise.

`publisher.py` places each record in its partition's open batch (`Delivery.place`); how batches
then travel is `direct.py` (idempotence off) or `batched.py` (idempotence on).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Generic, TypeVar

from wazza_hooks.contract import KafkaHeaders

# Records that could not be delivered are dropped by the producer after this long; the sender has
# had its 503 long before, and retries. It bounds the memory held while the broker is away.
DELIVERY_TIMEOUT_MS = 10_000

# A partition's batch holds what arrives for it during one round trip; aiokafka's default
# (16 KiB, some fifty webhooks) would split a busy round in two. Well under the broker's
# per-batch limit (message.max.bytes, 1 MiB by default); a record larger than this still goes,
# alone in its batch.
MAX_BATCH_BYTES = 256 * 1024

Slot = tuple[str, int]
"""(topic, partition)."""


class PublishError(Exception):
    """The record was not acknowledged by the broker; nothing about it is durable."""

    retriable = True
    """The sender should try again later (a 503 with Retry-After)."""


class Batch(ABC):
    """Records bound for one partition, and the requests waiting for their ack."""

    __slots__ = ("deadline", "settled", "slot", "timer", "waiters")

    def __init__(self, slot: Slot, deadline: float) -> None:
        self.slot = slot
        self.deadline = deadline
        self.settled = False
        self.timer: asyncio.TimerHandle | None = None
        self.waiters: list[asyncio.Future[None]] = []

    @abstractmethod
    def add(self, key: bytes | None, value: bytes, headers: KafkaHeaders) -> bool:
        """Append one record; False when the batch is full (a first record always fits)."""

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


B = TypeVar("B", bound=Batch)


class Delivery(ABC, Generic[B]):
    """Takes records into per-partition batches and gets each batch acknowledged by its
    deadline; the subclass decides when and how a batch travels."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_batch: Callable[[int], None],
        set_up: Callable[[bool], None],
    ) -> None:
        self._loop = loop
        self._on_batch = on_batch
        """Told the record count of each batch as it is first sent (a metric)."""
        self._set_up = set_up
        """Told True on an ack, False on a deadline run out: the broker connection's state."""
        self._open: dict[Slot, B] = {}
        """The batch of each partition that still takes records."""
        self._deliveries: set[asyncio.Task[None]] = set()

    def place(
        self,
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
            batch = self._open_batch(slot, ack_timeout)
        if not batch.add(key, value, headers):
            # Full: it goes now, whatever is in flight, and the next one starts.
            del self._open[slot]
            self._seal(batch)
            batch = self._open_batch(slot, ack_timeout)
            if not batch.add(key, value, headers):
                waiter.set_exception(PublishError("record larger than the producer's batch size"))
                return
        batch.waiters.append(waiter)

    @abstractmethod
    async def drain(self) -> None:
        """At shutdown: return once every batch is acknowledged, refused or past its deadline."""

    @abstractmethod
    def _new_batch(self, slot: Slot, deadline: float) -> B: ...

    @abstractmethod
    def _opened(self, slot: Slot) -> None:
        """A batch was opened for `slot`: see that it will travel."""

    @abstractmethod
    def _seal(self, batch: B) -> None:
        """`batch` is full: it goes as soon as its partition allows."""

    def _expired(self, batch: B) -> None:
        """`batch` reached its deadline unanswered, and is about to fail."""

    def _open_batch(self, slot: Slot, ack_timeout: float) -> B:
        batch = self._new_batch(slot, self._loop.time() + ack_timeout)
        batch.timer = self._loop.call_at(batch.deadline, self._expire, batch)
        self._open[slot] = batch
        self._opened(slot)
        return batch

    def _expire(self, batch: B) -> None:
        batch.timer = None
        if batch.settled:
            return
        if self._open.get(batch.slot) is batch:
            # Never sent (its partition stayed busy): drop it.
            del self._open[batch.slot]
        self._expired(batch)
        self._set_up(False)
        batch.fail("no broker ack within the publish deadline")

    def _start(self, delivery: asyncio.Task[None]) -> None:
        """Keep a delivery task until it ends (drain waits for those still running)."""
        self._deliveries.add(delivery)
        delivery.add_done_callback(self._deliveries.discard)
