"""`wazza-hooks tail`: deliveries as they reach the topics, then what each service did.

One line per delivery as soon as it is on the raw or quarantine topic (and, with `--dlq`, the
dead-letter topic). For a raw delivery, one more line once the services have got to it: each
service's outcome from its history in the store (`applied`, `stale`, `conflict`,
`dead_lettered`, or `duplicate` when it had taken the same event from an earlier copy). A
service has got to a record when its stored next offset on that partition is past it (the
offset and the history row are written in one transaction); one that passed it without a row
does not take that event type and is left out. A service still behind after `--wait` seconds
is named as pending: the line never waits on a slow service longer than that, and reading
the topics never waits on the store at all.

Read without a consumer group (by assignment, nothing committed). Ctrl-C or SIGTERM stops it
with exit 0. The `--json` lines are documented in docs/cli.md.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumers.history import jobs_history
from consumers.store import Store, Tx, store_problem
from wazza_hooks.config import decimal_number
from wazza_tools.ops.connect import (
    OpsError,
    broker_reader,
    known_services,
    offset_bounds,
    partitions_of,
    store_at,
    unknown_service,
)
from wazza_tools.ops.records import (
    DEAD_LETTER,
    RAW,
    Delivery,
    Source,
    add_source_options,
    decode,
    delivery_json,
    event_type_argument,
    key_partition,
    outcome_text,
    run_tool,
)
from wazza_tools.render import iso_time, print_json, printable

DEFAULT_WAIT_SECONDS = 10.0
# The store is asked about the deliveries being followed this often: a service takes a batch
# in tens of milliseconds, a person reads a line in about a second.
POLL_SECONDS = 0.3
# A store that does not answer a poll within this long is asked again at the next one; the
# pending deliveries' lines come out at their --wait meanwhile.
STORE_QUERY_SECONDS = 5.0
# Deliveries followed at once. Past it (a flood), the oldest one's line comes out at once
# with what is known: memory and each poll's size stay bounded.
MAX_FOLLOWING = 5_000


DUPLICATE = "duplicate"
SKIPPED = "skipped"

_EPILOG = """\
examples:
  wazza-hooks tail
  wazza-hooks tail --job job_abc123 --from-beginning
  wazza-hooks tail --type failed --dlq
  wazza-hooks tail --service completion --json | jq .

Each delivery is one line (time received, event type, job, what the ingester did with it,
its record id), followed for a raw delivery by an indented line with each service's outcome
once the services have got to it (at most --wait seconds later). `events show RECORD` prints
a delivery whole. Ctrl-C stops it.
"""


def add_tail_parser(sub: Any) -> None:
    """Register `tail`."""
    tail = sub.add_parser(
        "tail",
        help="follow deliveries live, and what each service did with them",
        description=(
            "Print each delivery as it reaches the raw and quarantine topics (--dlq: the "
            "dead-letter topic too), then each service's outcome from the store."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tail.add_argument("--job", metavar="JOB_ID", help="only this job's deliveries")
    tail.add_argument(
        "--type",
        type=event_type_argument,
        metavar="TYPE",
        help="only this event type: completed, failed, processing, or a full name",
    )
    tail.add_argument(
        "--service",
        metavar="NAME",
        help="only what this service took (completion, failure, progress or yours); each "
        "line comes once it has got to the delivery",
    )
    tail.add_argument("--dlq", action="store_true", help="also follow the dead-letter topic")
    tail.add_argument(
        "--from-beginning",
        action="store_true",
        help="start from the first record the broker holds (default: from now)",
    )
    tail.add_argument(
        "--wait",
        type=decimal_number(0.5, 3600),
        default=DEFAULT_WAIT_SECONDS,
        metavar="SECONDS",
        help="how long to wait for the services' outcomes before printing what is known "
        f"(default {DEFAULT_WAIT_SECONDS:g})",
    )
    tail.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line, in the documented, stable format",
    )
    add_source_options(tail, store=True)


def run_tail(args: argparse.Namespace) -> int:
    """Run `wazza-hooks tail` until Ctrl-C; returns the exit code."""
    return run_tool(args, lambda source: _tail(args, source), database=True)


@dataclass(slots=True)
class _Followed:
    """A raw delivery whose services' outcomes are awaited."""

    delivery: Delivery
    deadline: float
    outcomes: dict[str, tuple[str, int | None, str | None]] = field(default_factory=dict)
    """service -> (outcome, applied at, the record id its history row came from)."""
    pending: list[str] = field(default_factory=list)


async def _tail(args: argparse.Namespace, source: Source) -> int:
    settings = source.settings
    topics = [settings.raw_topic, source.quarantine_topic]
    if args.dlq:
        topics.append(settings.dlq_topic)
    async with store_at(settings.database_url) as store:
        if args.service is not None:
            async with store.reader() as tx:
                known = await known_services(tx, settings.raw_topic)
            if args.service not in known:
                raise unknown_service(args.service, settings.raw_topic, known)
        async with broker_reader(settings.bootstrap_servers, settings.kafka_security) as consumer:
            await _start(consumer, topics, args.job, args.from_beginning)
            start = "the first record held" if args.from_beginning else "now"
            print(
                f"wazza-hooks: following {', '.join(topics)} from {start}; Ctrl-C stops",
                file=sys.stderr,
                flush=True,
            )
            view = _View(args, source)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            follower = asyncio.create_task(view.follow(store))
            try:
                await _read(consumer, source, view, stop, follower)
            finally:
                follower.cancel()
    return 0


async def _start(
    consumer: AIOKafkaConsumer, topics: list[str], job: str | None, from_beginning: bool
) -> None:
    """Assign the topics' partitions (a job's only) and seek to their ends, or beginnings."""
    assigned: list[TopicPartition] = []
    positions: dict[TopicPartition, int] = {}
    for topic in topics:
        partitions = await partitions_of(consumer, topic)
        if job is not None:
            partitions = [key_partition(job, partitions)]
        starts, ends = await offset_bounds(consumer, partitions)
        for tp in partitions:
            positions[tp] = starts[tp.partition] if from_beginning else ends[tp.partition]
        assigned += partitions
    consumer.assign(assigned)
    for tp, offset in positions.items():
        consumer.seek(tp, offset)


async def _read(
    consumer: AIOKafkaConsumer,
    source: Source,
    view: _View,
    stop: asyncio.Event,
    follower: asyncio.Task[None],
) -> None:
    prefix = source.settings.group_prefix
    while not stop.is_set():
        if follower.done():
            follower.result()  # its error, shown: no outcome line would come any more
        try:
            batch = await consumer.getmany(timeout_ms=int(POLL_SECONDS * 1000))
        except KafkaError as exc:
            raise OpsError(f"cannot read the topics: {exc!r}") from exc
        for messages in batch.values():
            for m in messages:
                view.arrived(decode(m, source.kind_of(m.topic) or RAW, prefix))


class _View:
    """What is printed, and the deliveries whose outcomes are awaited."""

    def __init__(self, args: argparse.Namespace, source: Source) -> None:
        self._args = args
        self._raw = source.settings.raw_topic
        self._url = source.settings.database_url
        self._following: dict[str, _Followed] = {}
        self._store_down = False

    def arrived(self, d: Delivery) -> None:
        args = self._args
        if args.job is not None and d.job_id != args.job:
            return
        if args.type is not None and d.event_type != args.type:
            return
        if args.service is not None and d.kind == DEAD_LETTER:
            if d.service == args.service:
                self._delivery(d)
            return
        if d.kind != RAW or d.job_id is None or d.event_id is None:
            if args.service is None:
                self._delivery(d)
            return
        if args.service is None:
            self._delivery(d)
        self._following[d.id] = _Followed(d, time.monotonic() + args.wait)
        if len(self._following) > MAX_FOLLOWING:
            self._done(next(iter(self._following.values())))

    async def follow(self, store: Store) -> None:
        """Poll the store for the followed deliveries until cancelled."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if not self._following:
                continue
            answer = await self._poll(store)
            now = time.monotonic()
            for followed in list(self._following.values()):
                if answer is not None:
                    self._settle(followed, *answer)
                    if followed.outcomes and not followed.pending:
                        self._done(followed)
                        continue
                if now >= followed.deadline:
                    self._done(followed)

    async def _poll(
        self, store: Store
    ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, str], tuple[str, int, str]]] | None:
        """The store's answer, or None (said once on stderr) while it does not give one."""
        try:
            async with asyncio.timeout(STORE_QUERY_SECONDS), store.reader() as tx:
                answer = await self._lookup(tx)
        except Exception as exc:
            problem = (
                f"no answer within {STORE_QUERY_SECONDS:g} s"
                if isinstance(exc, TimeoutError)
                else store_problem(exc, self._url)
            )
            if problem is None:
                raise  # not the store's: a bug, to show whole
            if not self._store_down:
                print(
                    f"wazza-hooks: the store: {problem}; outcomes wait until it answers",
                    file=sys.stderr,
                    flush=True,
                )
            self._store_down = True
            return None
        self._store_down = False
        return answer

    async def _lookup(
        self, tx: Tx
    ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, str], tuple[str, int, str]]]:
        """(service, partition) -> next offset on the raw topic; (service, event id) ->
        (outcome, applied at, record id) for the followed jobs' history rows."""
        found = await tx.fetchall(
            "SELECT service, kafka_partition, next_offset FROM consumer_offsets WHERE topic = ?",
            self._raw,
        )
        offsets = {(str(s), int(p)): int(o) for s, p, o in found}
        jobs = sorted({f.delivery.job_id for f in self._following.values() if f.delivery.job_id})
        history = await jobs_history(tx, jobs)
        rows = {
            (e.service, e.event_id): (
                e.outcome,
                e.applied_ms,
                f"{e.topic}:{e.partition}:{e.offset}",
            )
            for e in history
        }
        return offsets, rows

    def _settle(
        self,
        followed: _Followed,
        offsets: dict[tuple[str, int], int],
        rows: dict[tuple[str, str], tuple[str, int, str]],
    ) -> None:
        d = followed.delivery
        wanted = self._args.service
        services = sorted({s for s, _ in offsets}) if wanted is None else [wanted]
        followed.outcomes.clear()
        followed.pending = []
        for service in services:
            row = rows.get((service, d.event_id or ""))
            passed = offsets.get((service, d.partition), -1) > d.offset
            if row is not None and row[2] == d.id:
                followed.outcomes[service] = row
            elif passed:
                followed.outcomes[service] = (
                    (DUPLICATE, row[1], row[2]) if row is not None else (SKIPPED, None, None)
                )
            else:
                followed.pending.append(service)

    def _done(self, followed: _Followed) -> None:
        del self._following[followed.delivery.id]
        d = followed.delivery
        wanted = self._args.service
        if wanted is not None:
            mine = followed.outcomes.get(wanted)
            if mine is not None and mine[0] == SKIPPED:
                return
            self._delivery(d)
        if self._args.json:
            print_json(
                {
                    "kind": "outcome",
                    "id": d.id,
                    "jobId": d.job_id,
                    "eventId": d.event_id,
                    "eventType": d.event_type,
                    "services": [
                        {
                            "service": service,
                            "outcome": outcome,
                            "appliedAt": iso_time(applied),
                            "record": record,
                        }
                        for service, (outcome, applied, record) in sorted(followed.outcomes.items())
                    ],
                    "pending": followed.pending,
                    "timedOut": bool(followed.pending) or not followed.outcomes,
                }
            )
            sys.stdout.flush()
            return
        print(
            f"    -> {printable(d.job_id)} {printable(d.event_type)}: {self._summary(followed)}",
            flush=True,
        )

    def _summary(self, followed: _Followed) -> str:
        d = followed.delivery
        took = [
            f"{service} {outcome}"
            + (
                f" (+{applied - d.received_ms} ms)"
                if applied is not None and outcome != DUPLICATE
                else ""
            )
            + (f" (of {record})" if outcome == DUPLICATE else "")
            for service, (outcome, applied, record) in sorted(followed.outcomes.items())
            if outcome != SKIPPED
        ]
        if followed.pending:
            took.append(f"{', '.join(followed.pending)} not there yet after {self._args.wait:g} s")
        if took:
            return "; ".join(took)
        if followed.outcomes:
            return f"no service takes it ({', '.join(sorted(followed.outcomes))} read past it)"
        return f"no service has read {self._raw} yet (waited {self._args.wait:g} s)"

    def _delivery(self, d: Delivery) -> None:
        if self._args.json:
            print_json({"kind": "delivery", **delivery_json(d)})
            sys.stdout.flush()  # a reader of a live view waits for each line
            return
        print(
            f"{iso_time(d.received_ms)}  {printable(d.event_type):<14}  {printable(d.job_id)}  "
            f"{outcome_text(d)}  {d.id}",
            flush=True,
        )
