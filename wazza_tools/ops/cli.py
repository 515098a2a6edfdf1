"""`wazza-hooks replay|dlq`: operator tools over the consumers' offsets and dead letters.

- `wazza-hooks replay --service S (--from-beginning | --from TIME)`: move a service back over
  its history (`replay.py`); harmless, since every record read again is a duplicate.
- `wazza-hooks dlq list [--service S] [--json]`: the dead-letter topic, with the redrives.
- `wazza-hooks dlq redrive [--service S] [--id P:O ...]`: send dead letters back to the service
  that gave them up, once (`deadletters.py`).

Configuration as the consumers read it (DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS, WAZZA_RAW_TOPIC,
WAZZA_DLQ_TOPIC, WAZZA_GROUP_PREFIX, KAFKA_ENABLE_IDEMPOTENCE), with `--database-url` and
`--bootstrap-servers` on top. Exit codes: 0; 1 with one line on stderr when something cannot be
reached or found (or a record could not be redriven); 2 for bad arguments. The `--json`
formats are documented in docs/cli.md and only ever gain fields.
The options are in `ops_args`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from consumers.settings import ConsumerSettings
from consumers.store import store_problem
from wazza_hooks.config import ConfigError
from wazza_tools.render import dead_letter_fields, iso_time, print_json, printable

if TYPE_CHECKING:
    from consumers.batch import KeptDeadLetter
    from wazza_tools.ops.deadletters import DeadLetterRecord

_T = TypeVar("_T")


def run_ops(args: argparse.Namespace) -> int:
    """Run one operator subcommand; returns the exit code."""
    from wazza_tools.ops.connect import OpsError

    # aiokafka logs each failed connection attempt; with no handler configured Python would
    # print them to stderr ahead of the command's own one-line message, which says it all.
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    try:
        settings = ConsumerSettings.from_env()
    except ConfigError as exc:
        print(f"wazza-hooks: {exc}", file=sys.stderr)
        return 2
    settings = dataclasses.replace(
        settings,
        database_url=args.database_url or settings.database_url,
        bootstrap_servers=args.bootstrap_servers or settings.bootstrap_servers,
    )
    try:
        if args.command == "replay":
            return _run(_replay(args, settings))
        if args.command == "dlq" and args.dlq_command == "list":
            return _run(_dlq_list(args, settings))
        if args.command == "dlq" and args.dlq_command == "redrive":
            return _run(_dlq_redrive(args, settings))
    except OpsError as exc:
        return _refuse(args, str(exc), exc.exit_code)
    except Exception as exc:
        # The store went away or stayed locked mid-command (a transaction rolls back whole).
        message = store_problem(exc, settings.database_url)
        if message is None:
            raise  # not the store's: a bug, to show whole
        # A redrive cut off between its copy and its mark is finished by the next one.
        return _refuse(args, f"{message} (run the command again: it finishes what was left)", 1)
    return 2  # pragma: no cover - argparse only lets the commands above through


def _refuse(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"wazza-hooks: {message}", file=sys.stderr)
    if args.json:
        print_json({"error": message})
    return code


def _run(work: Awaitable[_T]) -> _T:
    async def wrapped() -> _T:
        return await work

    return asyncio.run(wrapped())


# --- replay -----------------------------------------------------------------------------------


def parse_time(text: str, now_ms: int) -> int:
    """An ISO-8601 time as ms since the epoch (UTC when it has no offset); raises UsageError
    when malformed or in the future."""
    from wazza_tools.ops.connect import UsageError

    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--from {text!r} is not an ISO-8601 time (e.g. 2026-11-26T09:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    ms = int(moment.timestamp() * 1000)
    if ms > now_ms:
        raise UsageError(f"--from {text!r} is in the future: there is nothing to replay after it")
    return ms


async def _replay(args: argparse.Namespace, settings: ConsumerSettings) -> int:
    from wazza_tools.ops.connect import (
        OpsError,
        broker_reader,
        offset_bounds,
        offsets_since,
        partitions_of,
        store_at,
    )
    from wazza_tools.ops.replay import apply_replay, plan_replay

    since_ms = None if args.since is None else parse_time(args.since, int(time.time() * 1000))
    async with store_at(settings.database_url) as store:
        async with broker_reader(settings.bootstrap_servers, settings.kafka_security) as consumer:
            partitions = await partitions_of(consumer, settings.raw_topic)
            bounds = await offset_bounds(consumer, partitions)
            retention_ms = settings.history_retention_seconds * 1000
            recent = await offsets_since(
                consumer, partitions, int(time.time() * 1000) - retention_ms
            )
        plan = await plan_replay(store, args.service, settings.raw_topic, bounds, since_ms, recent)
        if plan.reapplied and not args.allow_reapply and not args.dry_run:
            raise OpsError(
                f"{plan.reapplied} records in that range are older than the history retention "
                f"(WAZZA_HISTORY_RETENTION_SECONDS, {settings.history_retention_seconds} s): "
                f"{args.service} may have forgotten the events among them, and would apply "
                "them again. Choose a later --from, or add --allow-reapply"
            )
        moved = [] if args.dry_run else await apply_replay(store, plan)
    moves = [m for m in plan.moves if m.target < m.stored] if args.dry_run else moved
    document = {
        "service": plan.service,
        "topic": plan.topic,
        "from": iso_time(since_ms),
        "dryRun": bool(args.dry_run),
        "partitions": [{"partition": m.partition, "from": m.stored, "to": m.target} for m in moves],
        "records": sum(m.records for m in moves),
        "reapplied": sum(m.reapplied for m in moves),
    }
    if args.json:
        print_json(document)
        return 0
    start = "the beginning" if since_ms is None else iso_time(since_ms)
    verb = "would move" if args.dry_run else "moved"
    lines = [f"replay of {plan.service} on {plan.topic} from {start}:"]
    lines += [
        f"  partition {m.partition}: {verb} from offset {m.stored} to {m.target}"
        for m in moves
        if m.target < m.stored
    ]
    if document["records"]:
        when = (
            "nothing changed (dry run)"
            if args.dry_run
            else "a running service starts within about a second, a stopped one when it starts"
        )
        lines.append(
            f"{document['records']} records to read again, as duplicates "
            f"(nothing is applied twice); {when}"
        )
    else:
        lines.append("nothing to replay: no record the service took in that range")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


# --- dead letters -----------------------------------------------------------------------------


async def _dlq_list(args: argparse.Namespace, settings: ConsumerSettings) -> int:
    from consumers.batch import kept_dead_letters
    from wazza_tools.ops.connect import known_services, store_at, unknown_service
    from wazza_tools.ops.deadletters import read_dead_letters, with_redrives

    async with store_at(settings.database_url) as store:
        records = await read_dead_letters(
            settings.bootstrap_servers,
            settings.dlq_topic,
            settings.group_prefix,
            settings.kafka_security,
        )
        if args.service is not None:
            records = [r for r in records if r.service == args.service]
            async with store.reader() as tx:
                known = await known_services(tx, settings.raw_topic)
            if not records and args.service not in known:
                raise unknown_service(args.service, settings.raw_topic, known)
        records = await with_redrives(store, settings.dlq_topic, records)
        kept = await kept_dead_letters(store, settings.raw_topic, args.service)
    if args.json:
        print_json(
            {
                "topic": settings.dlq_topic,
                "deadLetters": [_letter_json(r) for r in records],
                "keptInStore": [_kept_json(k) for k in kept],
            }
        )
        return 0
    if not records and not kept:
        who = f" of {args.service}" if args.service else ""
        sys.stdout.write(f"no dead letters{who} in {settings.dlq_topic}\n")
        return 0
    sys.stdout.write("".join(_letter_text(r, settings.raw_topic) for r in records))
    sys.stdout.write("".join(_kept_text(k) for k in kept))
    return 0


def _kept_json(letter: KeptDeadLetter) -> dict[str, Any]:
    return {
        "service": letter.service,
        "original": {"topic": letter.topic, "partition": letter.partition, "offset": letter.offset},
        "jobId": letter.job_id,
        "errorClass": letter.error_class,
        "errorMessage": letter.error_message,
        "refusal": letter.refusal,
        "keptAt": iso_time(letter.kept_ms),
    }


def _kept_text(letter: KeptDeadLetter) -> str:
    job = printable(letter.job_id) if letter.job_id is not None else "(no job id)"
    return (
        f"kept in the store (the dead-letter topic refused it): {letter.service} "
        f"{letter.topic}[{letter.partition}]@{letter.offset} job {job}\n"
        f"  {letter.error_class}: {printable(letter.error_message)}\n"
        f"  refused: {printable(letter.refusal)}\n"
    )


async def _dlq_redrive(args: argparse.Namespace, settings: ConsumerSettings) -> int:
    from consumers.redrive import NOT_RECORDED_YET
    from wazza_tools.ops.connect import (
        OpsError,
        UsageError,
        known_services,
        store_at,
        unknown_service,
    )
    from wazza_tools.ops.deadletters import (
        NOT_REDRIVABLE,
        parse_id,
        read_dead_letters,
        redrive,
        with_redrives,
    )

    try:
        wanted = [parse_id(text) for text in args.ids]
    except ValueError as exc:
        raise UsageError(f"--id {exc}") from None
    async with store_at(settings.database_url) as store:
        async with store.reader() as tx:
            known = await known_services(tx, settings.raw_topic)
        if args.service is not None and args.service not in known:
            raise unknown_service(args.service, settings.raw_topic, known)
        records = await read_dead_letters(
            settings.bootstrap_servers,
            settings.dlq_topic,
            settings.group_prefix,
            settings.kafka_security,
        )
        by_id = {(r.partition, r.offset): r for r in records}
        missing = [f"{p}:{o}" for p, o in wanted if (p, o) not in by_id]
        if missing:
            raise OpsError(f"no dead letter {', '.join(missing)} in {settings.dlq_topic}")
        if wanted:
            records = [by_id[key] for key in dict.fromkeys(wanted)]
        if args.service is not None:
            records = [r for r in records if r.service == args.service]
        records = await with_redrives(store, settings.dlq_topic, records)
        results = await redrive(
            store,
            settings.bootstrap_servers,
            settings.enable_idempotence,
            settings.raw_topic,
            settings.dlq_topic,
            records,
            known,
            settings.kafka_security,
        )
    failed = any(r.result in (NOT_REDRIVABLE, NOT_RECORDED_YET) for r in results)
    if args.json:
        print_json(
            {
                "results": [
                    {
                        "id": r.record.id,
                        "service": r.record.service,
                        "eventId": _event_id(r.record),
                        "jobId": r.record.job_id,
                        "result": r.result,
                        "detail": r.detail,
                        "raw": None
                        if r.raw_offset is None
                        else {"partition": r.raw_partition, "offset": r.raw_offset},
                    }
                    for r in results
                ]
            }
        )
        return 1 if failed else 0
    if not results:
        sys.stdout.write("no dead letters to redrive\n")
    for r in results:
        where = (
            ""
            if r.raw_offset is None
            else f" ({settings.raw_topic}[{r.raw_partition}]@{r.raw_offset})"
        )
        sys.stdout.write(
            f"{r.record.id}  {printable(r.record.service)}  {printable(r.record.job_id)}  "
            f"{r.result}: {r.detail}{where}\n"
        )
    return 1 if failed else 0


def _event_id(record: DeadLetterRecord) -> str | None:
    return None if record.envelope is None else record.envelope.event_id


def _letter_json(record: DeadLetterRecord) -> dict[str, Any]:
    """A dead letter as its JSON object, keys in the documented order."""
    letter, envelope, redriven = record.letter, record.envelope, record.redrive
    return {
        "id": record.id,
        "partition": record.partition,
        "offset": record.offset,
        "deadLetteredAt": iso_time(record.timestamp_ms),
        "service": record.service,
        **dead_letter_fields(letter),
        "eventType": None if envelope is None else envelope.event_type,
        "eventId": None if envelope is None else envelope.event_id,
        "jobId": record.job_id,
        "receivedAt": None if envelope is None else iso_time(envelope.received_at_ms),
        "redriven": None
        if redriven is None
        else {
            "requestedAt": iso_time(redriven.requested_ms),
            "publishedAt": iso_time(redriven.published_ms),
            "raw": None
            if redriven.raw_offset is None
            else {"partition": redriven.raw_partition, "offset": redriven.raw_offset},
        },
    }


def _letter_text(record: DeadLetterRecord, raw_topic: str) -> str:
    doc = _letter_json(record)
    original = doc["original"]
    redriven = doc["redriven"]
    if redriven is None:
        redrive = "no"
    elif redriven["publishedAt"] is None:
        redrive = f"interrupted at {redriven['requestedAt']} (redrive it again to finish)"
    else:
        raw = redriven["raw"]
        where = "" if raw is None else f" -> {raw_topic}[{raw['partition']}]@{raw['offset']}"
        redrive = f"{redriven['publishedAt']}{where}"
    error = (
        "(unreadable dead-letter headers)"
        if doc["errorClass"] is None
        else f"{doc['errorClass']}: {doc['errorMessage']}"
    )
    pairs = [
        ("error", error),
        (
            "original",
            None
            if original is None
            else f"{original['topic']}[{original['partition']}]@{original['offset']}",
        ),
        ("event", f"{printable(doc['eventType'])} {printable(doc['eventId'])}"),
        ("received", doc["receivedAt"]),
        ("redriven", redrive),
    ]
    head = (
        f"{doc['id']}  {doc['deadLetteredAt']}  {printable(doc['service'])}  "
        f"job {printable(doc['jobId'])}\n"
    )
    return head + "".join(f"    {key:<9} {printable(value)}\n" for key, value in pairs)
