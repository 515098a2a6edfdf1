"""The command lines of `wazza-hooks replay|dlq list|dlq redrive`: their options, help texts
and examples. `ops_cli` runs the commands.
"""

from __future__ import annotations

import argparse
from typing import Any

from wazza_tools.options import add_bootstrap_servers, add_database_url

_REPLAY_EPILOG = """\
examples:
  wazza-hooks replay --service completion --from-beginning
  wazza-hooks replay --service progress --from 2026-11-26T09:00:00Z
  wazza-hooks replay --service deliveries --from 2026-11-26T09:00:00+01:00 --dry-run --json

Lowers the service's offsets in the store; it may be running (it picks the replay up within
about a second) or stopped (it does when it starts). Every record read again meets its history
row, the service's dedup key, so it counts as a duplicate: no state changes, no history row is
added. Records older than the history retention (WAZZA_HISTORY_RETENTION_SECONDS, by their
broker timestamps) may have been forgotten and would be applied again: the command refuses such
a replay unless --allow-reapply is given.
"""

_DLQ_EPILOG = """\
examples:
  wazza-hooks dlq list
  wazza-hooks dlq list --service completion --json
  wazza-hooks dlq redrive --id 3:17 --id 5:2
  wazza-hooks dlq redrive --service completion
"""

_REDRIVE_EPILOG = """\
examples:
  wazza-hooks dlq redrive --id 3:17          one dead letter (ids as `dlq list` prints them)
  wazza-hooks dlq redrive --service completion    every dead letter of one service
  wazza-hooks dlq redrive                    every dead letter not yet redriven

Fix the cause first (deploy the handler that failed). Each dead letter is sent back to the raw
topic for the service that gave it up, which applies it once; the other services drop the copy
as a duplicate. Redriving a dead letter again does nothing.
"""


def add_ops_parsers(sub: Any) -> None:
    """Register the operator subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    add_database_url(common)
    add_bootstrap_servers(common)
    common.add_argument(
        "--json", action="store_true", help="print JSON in the documented, stable format"
    )

    replay = sub.add_parser(
        "replay",
        parents=[common],
        help="move a service back over its history (harmless: effectively once)",
        description="Re-read a service's history from the raw topic.",
        epilog=_REPLAY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument(
        "--service", required=True, help="the consumer service (completion, progress, ...)"
    )
    where = replay.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--from-beginning",
        action="store_true",
        help="every record the broker still holds",
    )
    where.add_argument(
        "--from",
        dest="since",
        metavar="TIME",
        help="what the service took at or after TIME (ISO-8601; UTC when no offset is given)",
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="print what would move; change nothing"
    )
    replay.add_argument(
        "--allow-reapply",
        action="store_true",
        help="go on even when records older than the history retention would be read again "
        "(the events among them the service has forgotten are applied again)",
    )

    dlq = sub.add_parser(
        "dlq",
        help="inspect and redrive dead-lettered records",
        description="Inspect the dead-letter topic and send its records back.",
        epilog=_DLQ_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        parents=[common],
        help="every dead letter: why, from where, and whether it was redriven",
        description=(
            "Print every record of the dead-letter topic (read to its end, without a consumer "
            "group): its id PARTITION:OFFSET, the service, the error, the original position, "
            "the event and whether it was redriven."
        ),
        epilog=(
            "examples:\n  wazza-hooks dlq list\n  wazza-hooks dlq list --service completion --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("--service", help="only this service's dead letters")
    redrive = actions.add_parser(
        "redrive",
        parents=[common],
        help="send dead letters back to their service, once",
        description="Send dead letters back to the service that gave them up.",
        epilog=_REDRIVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    redrive.add_argument("--service", help="only this service's dead letters")
    redrive.add_argument(
        "--id",
        dest="ids",
        action="append",
        default=[],
        metavar="P:O",
        help="only this dead letter (repeatable); ids as `dlq list` prints them",
    )
