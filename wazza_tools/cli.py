"""`wazza-hooks`: operator and developer tools.

- `wazza-hooks broker`: the local Kafka-protocol broker in the foreground, with the topics.
- `wazza-hooks topics ensure`: create the missing topics with their durability settings.
- `wazza-hooks dev`: the local stack (broker, ingester, consumers) in one terminal.
- `wazza-hooks jobs show|list|history`: job state and history from the store.
- `wazza-hooks send-test|simulate|verify|register`: the sender's side, for testing an endpoint.
- `wazza-hooks replay|dlq`: move a service back over its history; inspect and redrive dead letters.
- `wazza-hooks migrate`: apply (or `--show`) the store's pending migrations.
- `wazza-hooks status`: is everything healthy? (broker, ingesters, consumers, store, lag).
- `wazza-hooks tail|events list|show|resend`: deliveries live, found, shown whole, sent again.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from wazza_hooks import contract
from wazza_hooks.config import port_argument, version, whole_number
from wazza_tools.dev import args as dev_args
from wazza_tools.dev.apache_kafka import TANSU_LACKS, kafka_version, local_broker
from wazza_tools.dev.localbroker import BrokerError
from wazza_tools.dev.topics import (
    DEFAULT_DLQ_RETENTION_DAYS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PARTITIONS,
    DEFAULT_RAW_RETENTION_HOURS,
    TopicError,
    TopicsTooWeak,
    default_topics,
    ensure_topics,
    local_topic_configs,
    topic_configs,
)
from wazza_tools.options import add_bootstrap_servers

SENDER_COMMANDS = ("send-test", "simulate", "verify", "register")
OPS_COMMANDS = ("replay", "dlq")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wazza-hooks",
        description="Tools for running and operating wazza-hooks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    broker = sub.add_parser(
        "broker",
        help="run a local broker (Apache Kafka, or Tansu without Java) in the foreground",
        description=(
            "Run a local broker and create the topics; Ctrl-C stops it. Apache Kafka (fetched "
            "once by Maven) keeps its log under VAR/kafka across restarts; Tansu, the fallback "
            "without Java, keeps it in memory only."
        ),
        epilog=(
            "examples:\n  wazza-hooks broker --port 9092 --partitions 12\n"
            "  wazza-hooks broker --engine tansu"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dev_args.add_engine_argument(broker)
    broker.add_argument(
        "--var", type=Path, default=Path("var"), help="state folder (default ./var)"
    )
    broker.add_argument("--host", default="127.0.0.1", help="address to listen on")
    broker.add_argument(
        "--port", type=port_argument(lowest=1), default=9092, help="port (default 9092)"
    )
    broker.add_argument(
        "--partitions",
        type=whole_number(1, 10_000),
        default=DEFAULT_PARTITIONS,
        help=f"partitions per topic (default {DEFAULT_PARTITIONS})",
    )

    topics = sub.add_parser(
        "topics",
        help="manage the topics",
        description="Manage the raw, quarantine and dead-letter topics.",
    )
    topics_sub = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    ensure = topics_sub.add_parser(
        "ensure",
        help="create the missing topics (idempotent), check their durability settings",
        description=(
            "Create the raw, quarantine and dead-letter topics where missing, with "
            "min.insync.replicas = min(2, replicas), their retention and a record size above "
            "the ingester's body limit. An existing topic with a weaker setting is refused "
            "(exit 1, one line per setting) unless --fix, which alters it; a partition count "
            "is never changed, only reported. The broker's TLS and SASL settings come from "
            "KAFKA_SECURITY_PROTOCOL, KAFKA_SSL_* and KAFKA_SASL_* (docs/kafka-security.md)."
        ),
        epilog=(
            "examples:\n  wazza-hooks topics ensure --bootstrap-servers localhost:9092\n"
            "  wazza-hooks topics ensure --partitions 24 --replication-factor 3\n"
            "  wazza-hooks topics ensure --replication-factor 3 --fix"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bootstrap_servers(ensure)
    ensure.add_argument(
        "--partitions",
        type=whole_number(1, 10_000),
        default=DEFAULT_PARTITIONS,
        help=f"partitions of a topic it creates (default {DEFAULT_PARTITIONS})",
    )
    ensure.add_argument(
        "--replication-factor",
        type=whole_number(1, 10_000),
        default=1,
        help="replicas of a topic it creates (default 1; 3 on a production cluster)",
    )
    ensure.add_argument(
        "--raw-retention-hours",
        type=whole_number(1, 24 * 3650),
        default=DEFAULT_RAW_RETENTION_HOURS,
        help="retention of the raw and quarantine topics: at least the consumers' dedup "
        f"window (default {DEFAULT_RAW_RETENTION_HOURS}, 7 days)",
    )
    ensure.add_argument(
        "--dlq-retention-days",
        type=whole_number(1, 3650),
        default=DEFAULT_DLQ_RETENTION_DAYS,
        help=f"retention of the dead-letter topic (default {DEFAULT_DLQ_RETENTION_DAYS})",
    )
    ensure.add_argument(
        "--max-body-bytes",
        type=whole_number(1024, 64 * 1024 * 1024),
        default=None,
        help="the ingester's body limit; records may be this plus 64 KiB of headers "
        f"(default: $WAZZA_MAX_BODY_BYTES or {DEFAULT_MAX_BODY_BYTES})",
    )
    ensure.add_argument(
        "--fix",
        action="store_true",
        help="alter existing topics whose settings are weaker than asked",
    )
    ensure.add_argument(
        "--raw-topic",
        default=contract.RAW_TOPIC,
        help=f"the raw topic's name (default {contract.RAW_TOPIC}; the services' WAZZA_RAW_TOPIC)",
    )
    ensure.add_argument(
        "--quarantine-topic",
        default=contract.QUARANTINE_TOPIC,
        help=f"the quarantine topic's name (default {contract.QUARANTINE_TOPIC})",
    )
    ensure.add_argument(
        "--dlq-topic",
        default=contract.DLQ_TOPIC,
        help=f"the dead-letter topic's name (default {contract.DLQ_TOPIC})",
    )

    from wazza_tools.dev.stack import add_dev_parser

    add_dev_parser(sub)

    from wazza_tools.ops.jobs import add_jobs_parser

    add_jobs_parser(sub)

    from wazza_tools.send.args import add_sender_parsers

    add_sender_parsers(sub)

    from wazza_tools.ops.args import add_ops_parsers

    add_ops_parsers(sub)

    from wazza_tools.ops.migrate import add_migrate_parser

    add_migrate_parser(sub)

    from wazza_tools.ops.status import add_status_parser

    add_status_parser(sub)

    from wazza_tools.ops.events import add_events_parser
    from wazza_tools.ops.resend import add_resend_parser
    from wazza_tools.ops.tail import add_tail_parser

    add_tail_parser(sub)
    add_events_parser(sub)
    add_resend_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `wazza-hooks`; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "broker":
            return _broker(args)
        if args.command == "topics":
            return _topics_ensure(args)
        if args.command == "dev":
            from wazza_tools.dev.stack import run_dev

            return run_dev(args)
        if args.command == "jobs":
            from wazza_tools.ops.jobs import run_jobs

            return run_jobs(args)
        if args.command in SENDER_COMMANDS:
            from wazza_tools.send.cli import run_sender

            return run_sender(args)
        if args.command == "migrate":
            from wazza_tools.ops.migrate import run_migrate

            return run_migrate(args)
        if args.command == "status":
            from wazza_tools.ops.status import run_status

            return run_status(args)
        if args.command == "tail":
            from wazza_tools.ops.tail import run_tail

            return run_tail(args)
        if args.command == "events":
            from wazza_tools.ops.events import run_events

            return run_events(args)
        if args.command == "resend":
            from wazza_tools.ops.resend import run_resend

            return run_resend(args)
        if args.command in OPS_COMMANDS:
            from wazza_tools.ops.cli import run_ops

            return run_ops(args)
    except TopicsTooWeak as exc:
        for problem in exc.problems:
            print(f"wazza-hooks: {problem}", file=sys.stderr)
        print(
            "wazza-hooks: topics weaker than asked; `wazza-hooks topics ensure --fix` alters them",
            file=sys.stderr,
        )
        return 1
    except (BrokerError, TopicError) as exc:
        print(f"wazza-hooks: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _broker(args: argparse.Namespace) -> int:
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        # Only a flag: stopping the child from inside a signal handler would race the main
        # thread's own wait on it.
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, stop)  # a closed terminal stops it as Ctrl-C does
    broker, fallback = local_broker(args.engine, args.var, args.port, args.host)
    if fallback is not None:
        print(f"wazza-hooks: Tansu, not Apache Kafka: {fallback}. {TANSU_LACKS}.", flush=True)
    broker.start()
    try:
        configs = local_topic_configs(broker.memory_only)
        statuses = asyncio.run(
            ensure_topics(
                broker.bootstrap_servers,
                default_topics(args.partitions),
                configs=configs,
                # The local broker's own topics: raised to what this code asks, never refused.
                fix=True,
            )
        )
        if broker.memory_only:
            print(f"local broker (Tansu, memory only) on {broker.bootstrap_servers}", flush=True)
        else:
            print(
                f"local broker (Apache Kafka {kafka_version()}) on {broker.bootstrap_servers}, "
                f"its log in {args.var / 'kafka'}",
                flush=True,
            )
        for status in statuses:
            print(f"  topic {status.name}: {status.partitions} partitions", flush=True)
        if broker.memory_only:
            print(
                "services use it with: KAFKA_BOOTSTRAP_SERVERS="
                f"{broker.bootstrap_servers} KAFKA_ENABLE_IDEMPOTENCE=false "
                "(it refuses idempotent producers)",
                flush=True,
            )
            print("Ctrl-C stops it; its data goes with it.", flush=True)
        else:
            print(
                f"services use it with: KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}",
                flush=True,
            )
            print("Ctrl-C stops it; its log stays for the next start.", flush=True)
        while not stopping.wait(0.2):
            if not broker.running:
                print("wazza-hooks: the broker exited on its own", file=sys.stderr)
                return 1
        return 0
    finally:
        broker.stop()


def _topics_ensure(args: argparse.Namespace) -> int:
    import logging
    import os

    from wazza_hooks.config import ConfigError, Env
    from wazza_hooks.kafka_client import KafkaSecurity

    try:
        security = KafkaSecurity.from_env()
        max_body = args.max_body_bytes or Env().integer(
            "WAZZA_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1024, maximum=64 * 1024 * 1024
        )
    except ConfigError as exc:
        print(f"wazza-hooks: {exc}", file=sys.stderr)
        return 2
    # aiokafka logs each failed connection attempt; the command's own line says it all.
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    bootstrap = args.bootstrap_servers or os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"
    )
    topics = {
        args.raw_topic: args.partitions,
        args.quarantine_topic: args.partitions,
        args.dlq_topic: args.partitions,
    }
    configs = topic_configs(
        args.raw_topic,
        args.quarantine_topic,
        args.dlq_topic,
        replication_factor=args.replication_factor,
        raw_retention_hours=args.raw_retention_hours,
        dlq_retention_days=args.dlq_retention_days,
        max_body_bytes=max_body,
    )
    statuses = asyncio.run(
        ensure_topics(
            bootstrap,
            topics,
            args.replication_factor,
            configs=configs,
            fix=args.fix,
            security=security,
        )
    )
    for status in statuses:
        what = "created" if status.created else "exists"
        note = ""
        if not status.created and status.partitions != args.partitions:
            note = f" (not {args.partitions}: partitions are never changed by this command)"
        if status.fixed:
            note += f"; altered: {', '.join(status.fixed)}"
        if not status.configs_checked:
            note += "; settings not checked (the broker does not describe configs)"
        print(f"{status.name}: {what}, {status.partitions} partitions{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
