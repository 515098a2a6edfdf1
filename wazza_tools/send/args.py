"""The command lines of `wazza-hooks send-test|simulate|verify|register`: their options, help
texts and examples, and the checks argparse applies to each value (exit 2 on a bad one).
`sender_cli` runs the commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wazza_hooks.config import decimal_number, whole_number
from wazza_tools.options import SHORT_EVENT_TYPES, add_database_url
from wazza_tools.send import webhooks as sender
from wazza_tools.send.register import DEFAULT_API_BASE

_SIGNING_HELP = (
    "signing secret (default: $WAZZA_WEBHOOK_SECRETS' first, else $WAZZA_WEBHOOK_SECRET, "
    "else ./var/dev-secret as `make run` writes it)"
)
_URL_HELP = f"the webhook endpoint (default {sender.DEFAULT_URL})"

_EXPECT_FORMAT = """\
expect file (JSON): {"format": "wazza-hooks-expect", "version": 1, "createdAt", "url", "seed",
  "summary": {"jobs", "definite", "undetermined"},
  "jobs": {JOB_ID: {"expect": STATE} | {"undetermined": REASON, "anyOf": [STATE|null, ...]}}}
STATE holds the fields of `wazza-hooks jobs show --json` the order rules decide: status, percent,
stage, estimatedTimeRemaining, output, error, metadata, lastProgressAt, finishedAt.
A job is undetermined when a delivery that decides its state was given up yet may have landed
(a 5xx or no answer); anyOf lists every state it may then be in (null: no row)."""


def _event_name(text: str) -> str:
    name = SHORT_EVENT_TYPES.get(text, text)
    if name not in sender.EVENT_TYPES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an event: completed, failed, processing (or job.completed, ...)"
        )
    return name


def add_sender_parsers(sub: Any) -> None:
    """Register the sender-side subcommands."""
    raw = argparse.RawDescriptionHelpFormatter
    send = sub.add_parser(
        "send-test",
        help="sign and send one test event, print the answer",
        description=(
            "Sign one event with the Wazza scheme (a fresh X-Wazza-Timestamp) and POST it; print "
            "the status and body that came back. The event is shaped like the spec's example, "
            "or is your own payload (--data): its exact bytes are signed and sent unless an "
            "option changes a field, which re-encodes it as compact JSON. Exit 1 on a non-2xx, "
            "no answer, or a payload that cannot be sent."
        ),
        epilog=(
            "examples:\n  wazza-hooks send-test --event completed\n"
            "  wazza-hooks send-test --event processing --percent 60 --job-id job_abc123\n"
            "  wazza-hooks send-test --data captured.json\n"
            "  wazza-hooks send-test --data captured.json --job-id job_retry_1\n"
            "  curl -s https://example.com/payload.json | wazza-hooks send-test --data -\n"
            "  printf 'not json' | wazza-hooks send-test --data - --as-is\n"
            "  wazza-hooks send-test --event failed --url https://hooks.example.com/api/webhooks/"
            'wazza --secret "$SECRET"'
        ),
        formatter_class=raw,
    )
    send.add_argument(
        "--event",
        type=_event_name,
        default=None,
        metavar="completed|failed|processing",
        help="the event type (required without --data; with it, replaces the payload's event)",
    )
    send.add_argument(
        "--job-id",
        default=None,
        help="the jobId (default: job_test_ + random hex; with --data, replaces the payload's)",
    )
    send.add_argument(
        "--percent",
        type=whole_number(0, 100),
        default=None,
        help="progress.percent of a processing event (default 45; with --data, replaces the "
        "payload's)",
    )
    send.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="FILE",
        help="send this payload (- reads stdin) instead of the spec's example; it must be JSON "
        "unless --as-is",
    )
    send.add_argument(
        "--as-is",
        action="store_true",
        help="with --data: send the bytes unchanged even when they are not JSON (to see what "
        "the ingester does with them); no field option may change them then",
    )
    send.add_argument("--url", default=sender.DEFAULT_URL, help=_URL_HELP)
    send.add_argument("--secret", default=None, help=_SIGNING_HELP)

    simulate = sub.add_parser(
        "simulate",
        help="behave like Wazza: many jobs' events, retries, duplicates, reordering",
        description=(
            "Deliver, per job, job.processing events with rising percent then job.completed or "
            "job.failed, like Wazza: each attempt signed with a fresh timestamp; a non-2xx or no "
            "answer within 5 s retried with exponential backoff and jitter, 5 attempts, then "
            "given up and reported. 401/403/404/405 stop the run at once (wrong secret, clock, "
            "address or URL). Progress on stderr, a summary at the end. Exit 1 when a delivery "
            "was given up or the run stopped."
        ),
        epilog=(
            "examples:\n  wazza-hooks simulate --jobs 1000 --concurrency 32\n"
            "  wazza-hooks simulate --jobs 2000 --duplicates 0.1 --reorder 0.1 "
            "--expect var/expect.json\n"
            "  wazza-hooks verify --expect var/expect.json --wait 60\n"
            "  wazza-hooks simulate --jobs 500 --rate 200 --url http://127.0.0.1:8081/api/"
            "webhooks/wazza\n\n" + _EXPECT_FORMAT
        ),
        formatter_class=raw,
    )
    simulate.add_argument(
        "--jobs", type=whole_number(1, 10_000_000), default=100, help="jobs (default 100)"
    )
    simulate.add_argument(
        "--concurrency",
        type=whole_number(1, 4096),
        default=32,
        help="requests in flight at most (default 32)",
    )
    simulate.add_argument(
        "--duplicates",
        type=decimal_number(0.0, 1.0, " (a share: 0.1 = 10 %)"),
        default=0.0,
        help="share of events delivered twice: the same body re-sent, re-signed (default 0)",
    )
    simulate.add_argument(
        "--reorder",
        type=decimal_number(0.0, 1.0, " (a share: 0.1 = 10 %)"),
        default=0.0,
        help="share of jobs sent out of order: progress after the terminal event, or two "
        "progress events swapped (default 0)",
    )
    simulate.add_argument(
        "--failures",
        type=decimal_number(0.0, 1.0, " (a share: 0.1 = 10 %)"),
        default=0.2,
        help="share of jobs that end in job.failed rather than job.completed (default 0.2)",
    )
    simulate.add_argument(
        "--rate",
        type=decimal_number(0.1, 1e6),
        default=None,
        help="webhooks (attempts) per second at most (default: no limit)",
    )
    simulate.add_argument("--url", default=sender.DEFAULT_URL, help=_URL_HELP)
    simulate.add_argument("--secret", default=None, help=_SIGNING_HELP)
    simulate.add_argument(
        "--expect", type=Path, default=None, metavar="FILE", help="write each job's final state"
    )
    simulate.add_argument(
        "--seed", type=int, default=None, help="seed of every random choice (default: random)"
    )
    simulate.add_argument(
        "--backoff",
        type=decimal_number(0.0, 600.0),
        default=1.0,
        metavar="SECONDS",
        help="delay before the 2nd attempt, doubled for each next, full jitter (default 1)",
    )

    verify = sub.add_parser(
        "verify",
        help="compare the store with simulate's --expect file",
        description=(
            "Compare each job's state in the consumers' store with the expect file written by "
            "`simulate --expect`; print every difference. Exit 1 on any difference."
        ),
        epilog=(
            "examples:\n  wazza-hooks verify --expect var/expect.json\n"
            "  wazza-hooks verify --expect var/expect.json --wait 60\n"
            "  wazza-hooks verify --expect expect.json --database-url postgresql://wazza@db/wazza"
            "\n\n" + _EXPECT_FORMAT
        ),
        formatter_class=raw,
    )
    verify.add_argument(
        "--expect",
        type=Path,
        required=True,
        metavar="FILE",
        help="the expect file `simulate --expect FILE` wrote",
    )
    add_database_url(verify)
    verify.add_argument(
        "--wait",
        type=decimal_number(0.0, 86_400.0),
        default=0.0,
        metavar="SECONDS",
        help="keep comparing until the store matches or this much time passed (default 0)",
    )

    register = sub.add_parser(
        "register",
        help="register the endpoint with Wazza's API (POST /v1/webhooks)",
        description=(
            "Register the webhook endpoint with Wazza's API (POST <api-base>/v1/webhooks with "
            "Authorization: Bearer <api-key> and {url, events, secret}); print the webhook id."
        ),
        epilog=(
            "examples:\n  WAZZA_API_KEY=... wazza-hooks register --url "
            'https://hooks.example.com/api/webhooks/wazza --secret "$SECRET"\n'
            "  wazza-hooks register --url https://hooks.example.com/api/webhooks/wazza "
            '--events completed failed --api-key "$KEY" --secret "$SECRET"'
        ),
        formatter_class=raw,
    )
    register.add_argument("--url", required=True, help="the public URL Wazza will POST to")
    register.add_argument(
        "--events",
        nargs="+",
        type=_event_name,
        default=list(sender.EVENT_TYPES),
        metavar="EVENT",
        help="events to receive: completed, failed, processing (default: all three)",
    )
    register.add_argument("--api-key", default=None, help="Wazza API key (default: $WAZZA_API_KEY)")
    register.add_argument(
        "--api-base", default=DEFAULT_API_BASE, help=f"the API's base URL ({DEFAULT_API_BASE})"
    )
    register.add_argument(
        "--secret",
        default=None,
        help="the webhook secret Wazza signs with; give the ingester the same one "
        "(default: $WAZZA_WEBHOOK_SECRETS' first, else $WAZZA_WEBHOOK_SECRET)",
    )
