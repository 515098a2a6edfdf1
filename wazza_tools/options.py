"""The options several commands share, so that a setting has one name, one default and one
help text whatever the command: the consumers' store, the brokers, an event type's short name."""

from __future__ import annotations

import argparse
import os

from wazza_hooks import contract

DEFAULT_DATABASE_URL = "sqlite:///./var/wazza.db"
"""The store `make run`'s consumers write (`wazza-hooks dev` in ./var), and the consumers' own
default: what a tool reads when neither --database-url nor $DATABASE_URL says otherwise."""

SHORT_EVENT_TYPES = {
    "completed": contract.JOB_COMPLETED,
    "failed": contract.JOB_FAILED,
    "processing": contract.JOB_PROCESSING,
}
"""The event types as the commands' options accept them without their `job.` prefix."""


def add_database_url(parser: argparse.ArgumentParser) -> None:
    """`--database-url URL`: the consumers' store."""
    parser.add_argument(
        "--database-url",
        default=None,
        metavar="URL",
        help=f"the consumers' store (default: $DATABASE_URL or {DEFAULT_DATABASE_URL})",
    )


def database_url(args: argparse.Namespace) -> str:
    """The store a command reads: --database-url, else $DATABASE_URL, else the default (also
    for a command without the option whose failure is reported as the store's: send-test)."""
    given = getattr(args, "database_url", None)
    return str(given or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)


def add_bootstrap_servers(parser: argparse.ArgumentParser) -> None:
    """`--bootstrap-servers HOSTS`: the brokers."""
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        metavar="HOSTS",
        help="the brokers (default: $KAFKA_BOOTSTRAP_SERVERS or localhost:9092)",
    )
