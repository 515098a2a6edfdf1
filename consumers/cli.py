"""`wazza-consumer SERVICE`: run one consumer service until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from wazza_hooks.config import ConfigError, port_argument, version

if TYPE_CHECKING:  # imported when parsing, not at start
    from .start_from import StartFrom

_EPILOG = """\
services:
  completion   job.completed -> the job's status, output, metadata, completion time
  failure      job.failed    -> status and error
  progress     job.processing -> percent, stage, time remaining (never backwards)
  package.module:name          a consumers.Service of your own

environment:
  DATABASE_URL             sqlite:///./var/wazza.db (default) or postgresql://user@host/db
  KAFKA_BOOTSTRAP_SERVERS  host:port (default localhost:9092)
  KAFKA_ENABLE_IDEMPOTENCE false for the local broker
  KAFKA_SECURITY_PROTOCOL, KAFKA_SSL_*, KAFKA_SASL_*: TLS and SASL (docs/kafka-security.md)
  WAZZA_PG_POOL_SIZE       PostgreSQL connections per process (default 4)
  WAZZA_MIGRATE_ON_START   false: refuse to start while migrations are pending
                           (`wazza-hooks migrate` applies them)
  WAZZA_START_FROM         beginning (default), now or TIME: what --start-from sets
  WAZZA_RAW_TOPIC, WAZZA_DLQ_TOPIC, WAZZA_CONSUMER_BATCH_SIZE, WAZZA_HISTORY_RETENTION_SECONDS

examples:
  KAFKA_ENABLE_IDEMPOTENCE=false wazza-consumer completion --metrics-port 9101
      (against the local broker, `wazza-hooks broker`, which refuses idempotent producers)
  DATABASE_URL=postgresql://wazza@db/wazza wazza-consumer progress
  wazza-consumer myapp.notify:service
  wazza-consumer myapp.notify:service --start-from now
      (a new service that should not act on the events the topic already holds)
  wazza-consumer myapp.audit:service --start-from 2026-11-26T09:00:00Z
"""

_DEFAULT_PORTS = {"completion": 9101, "failure": 9102, "progress": 9103}


def parser() -> argparse.ArgumentParser:
    """The command line of `wazza-consumer`."""
    parsed = argparse.ArgumentParser(
        prog="wazza-consumer",
        description="Run a consumer service: effectively-once job state from the raw topic.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parsed.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parsed.add_argument("service", help="completion, failure, progress or package.module:name")
    parsed.add_argument(
        "--metrics-port",
        type=port_argument(note="; 0: none"),
        default=None,
        help="port of /metrics, /healthz and /readyz (default 9101-9103 by service, else 9100; "
        "0: none)",
    )
    parsed.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of /metrics, /healthz and /readyz (default 127.0.0.1; 0.0.0.0 in a pod)",
    )
    parsed.add_argument(
        "--start-from",
        type=_start_from,
        default=None,
        metavar="beginning|now|TIME",
        help="the service's FIRST start only (no offsets stored for it yet): read every record "
        "the topic holds (beginning), only what arrives from now on (now), or from the first "
        "record written at or after TIME (ISO 8601, UTC when it has no offset). Later starts "
        "always continue from the stored offsets. Default: $WAZZA_START_FROM, else beginning",
    )
    return parsed


def _start_from(text: str) -> StartFrom:
    from .start_from import parse_start_from

    try:
        return parse_start_from(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of `wazza-consumer`; returns the exit code."""
    args = parser().parse_args(argv)

    from .service import ServiceError, load_service
    from .settings import ConsumerSettings

    # A user's `package.module:name` is found from the current folder, as uvicorn and gunicorn
    # find theirs: a console script's sys.path does not include it otherwise.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())

    try:
        settings = ConsumerSettings.from_env()
        if args.start_from is not None:
            settings = dataclasses.replace(settings, start_from=args.start_from)
        service = load_service(args.service)
    except (ConfigError, ServiceError) as exc:
        print(f"wazza-consumer: {exc}", file=sys.stderr)
        return 2
    port = args.metrics_port
    if port is None:
        port = _DEFAULT_PORTS.get(service.name, 9100)
    from wazza_hooks.logs import setup_logging

    setup_logging(f"consumer-{service.name}")
    return asyncio.run(_run(service, settings, args.metrics_host, port))


class _Opening:
    """Readiness before the store is open: starting, or waiting for an unavailable store."""

    def __init__(self) -> None:
        self._reason = "starting"

    def unavailable(self, exc: Exception) -> None:
        self._reason = "store_unavailable"

    def not_ready(self) -> str | None:
        return self._reason


async def _run(service: object, settings: object, host: str, port: int) -> int:
    from .health import HealthServer
    from .runtime import ConsumerRuntime, open_store_when_available
    from .service import Service
    from .settings import ConsumerSettings
    from .store import StoreError

    assert isinstance(service, Service)  # noqa: S101
    assert isinstance(settings, ConsumerSettings)  # noqa: S101
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = HealthServer(host, port)
    if port:
        try:
            await server.start()
        except OSError as exc:
            print(f"wazza-consumer: metrics port {port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    try:
        opening = _Opening()
        server.runtime = opening
        try:
            store = await open_store_when_available(
                settings.database_url,
                service.name,
                stop,
                opening.unavailable,
                pool_size=settings.pg_pool_size,
                migrate=settings.migrate_on_start,
            )
        except StoreError as exc:
            print(f"wazza-consumer: {exc}", file=sys.stderr)
            return 1
        if store is None:
            return 0  # stopped while waiting for the store
        if settings.database_url.startswith("sqlite:"):
            from .store.sqlite import sqlite_path

            # The URL's path may be relative to a folder the reader does not have in mind.
            logging.getLogger("wazza.consumers").info(
                "%s: store %s is the file %s",
                service.name,
                settings.database_url,
                sqlite_path(settings.database_url).resolve(),
            )
        try:
            runtime = ConsumerRuntime(service, settings, store)
            server.runtime = runtime
            await runtime.run(stop)
        finally:
            await store.close()
    finally:
        await server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
