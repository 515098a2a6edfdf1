"""`wazza-hooks resend ID --url URL`: deliver a stored event to an ingester again.

The event (found as `events show` finds it) is posted with its exact stored body, signed the
way Wazza signs a retry: the Wazza scheme, a fresh timestamp (send/webhooks.py `post`). So a
fix can be tried against real traffic: a quarantined body against an ingester that now
accepts it, a raw one against a staging stack. The event id the ingester gives the copy is the
body's SHA-256, as for any Wazza-scheme delivery: services that already took the event from
an earlier copy with that id drop it as a duplicate.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import aiohttp

from wazza_hooks import contract
from wazza_hooks.config import plural
from wazza_tools.ops.connect import OpsError, UsageError
from wazza_tools.ops.events import add_find_arguments, find_delivery
from wazza_tools.ops.records import Source, add_source_options, run_tool
from wazza_tools.render import printable
from wazza_tools.send import webhooks as sender

_EPILOG = """\
examples:
  wazza-hooks resend wazza.webhooks.quarantine:0:4 --url http://localhost:8080/api/webhooks/wazza
  wazza-hooks resend 5d41402abc4b2a76b9719d911017c592ae0e3a1c0f7e1b7a4c2d6e8f90a1b2c3 \\
      --url https://staging.example.com/api/webhooks/wazza --secret-env STAGING_WEBHOOK_SECRET

Prints the ingester's answer (status and body); exit 0 on a 2xx, 1 otherwise. The secret is
$WAZZA_WEBHOOK_SECRETS (its first), else $WAZZA_WEBHOOK_SECRET, else ./var/dev-secret of
`make run`; --secret-env VAR reads it from VAR instead (never from the command line, which
other users of the machine can see).
"""


def add_resend_parser(sub: Any) -> None:
    """Register `resend`."""
    resend = sub.add_parser(
        "resend",
        help="post a stored event to an ingester again, freshly signed",
        description=(
            "Post a stored event (raw, quarantined or dead-lettered) to an ingester again: "
            "its exact body, signed as Wazza signs a retry (fresh timestamp)."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_find_arguments(resend)
    resend.add_argument(
        "--url",
        required=True,
        help=f"the ingester's webhook URL (e.g. {sender.DEFAULT_URL})",
    )
    resend.add_argument(
        "--secret-env",
        metavar="VAR",
        help="the environment variable holding the signing secret "
        "(default: $WAZZA_WEBHOOK_SECRETS, $WAZZA_WEBHOOK_SECRET, ./var/dev-secret)",
    )
    add_source_options(resend, store=False)


def run_resend(args: argparse.Namespace) -> int:
    """Run `wazza-hooks resend`; returns the exit code."""
    return run_tool(args, lambda source: _resend(args, source), database=False)


def _secret(variable: str | None) -> sender.SecretChoice:
    if variable is None:
        return sender.resolve_secret(None)
    value = os.environ.get(variable, "").strip()
    if not value:
        raise UsageError(f"--secret-env {variable}: ${variable} is not set or empty")
    return sender.SecretChoice(value, f"${variable}")


async def _resend(args: argparse.Namespace, source: Source) -> int:
    try:
        url = sender.check_url(args.url)
    except sender.SenderError as exc:
        raise UsageError(f"--url: {exc}") from None
    try:
        secret = _secret(args.secret_env)
    except sender.SenderError as exc:
        raise OpsError(str(exc)) from None
    d = (await find_delivery(source, args.id, args.job)).delivery
    copy_id = contract.body_event_id(d.body)
    same = "the same id" if copy_id == d.event_id else f"event id {copy_id[:16]}..."
    print(
        f"resending {d.id} ({printable(d.event_type)}, job {printable(d.job_id)}, "
        f"{plural(len(d.body), 'byte')}) to {url}, secret from {secret.source}; "
        f"the copy gets {same}",
        file=sys.stderr,
        flush=True,
    )
    timeout = aiohttp.ClientTimeout(total=sender.ANSWER_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession() as session:
        answer = await sender.post(session, url, secret.value.encode(), d.body, timeout)
    if answer.status is None:
        raise OpsError(f"no answer from {url}: {answer.problem}")
    return sender.print_answer(answer, "wazza-hooks")
