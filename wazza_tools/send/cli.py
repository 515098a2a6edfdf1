"""`wazza-hooks send-test|simulate|verify|register`: the sender's side, for testing an endpoint.

- `send-test`: sign and send one event shaped like the spec's examples; print the answer.
- `simulate`: deliver many jobs' events the way Wazza does (retries, duplicates, reordering);
  `--expect FILE` writes the state each job must reach (format: `sender_expect`).
- `verify`: compare the consumers' store with such a file, optionally waiting for it to match.
- `register`: register the endpoint with Wazza's API (`POST /v1/webhooks`), print its id.

Exit codes: 0; 1 for a failure stated in one line on stderr (unreachable URL, refused secret,
differences, missing store, ...); 2 for bad arguments. The options are in `sender_args`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from typing import TYPE_CHECKING

import aiohttp

from wazza_hooks.config import plural, redact_url
from wazza_tools.options import database_url
from wazza_tools.send import webhooks as sender
from wazza_tools.send.register import register_webhook

if TYPE_CHECKING:  # the engines are imported by the command that runs them, not at start
    from wazza_tools.send.plan import JobPlan
    from wazza_tools.send.simulate import Tally


class _Usage(sender.SenderError):
    """Options that do not go together: exit 2, as argparse's own refusals."""


def run_sender(args: argparse.Namespace) -> int:
    """Run one sender-side subcommand; returns the exit code."""
    from consumers.store import store_problem

    try:
        if args.command == "send-test":
            return asyncio.run(_send_test(args))
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "register":
            return asyncio.run(_register(args))
    except sender.SenderError as exc:
        print(f"wazza-hooks {args.command}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, _Usage) else 1
    except Exception as exc:
        message = store_problem(exc, database_url(args))
        if message is None:
            raise  # not the store's: a bug, to show whole
        print(f"wazza-hooks {args.command}: {message}", file=sys.stderr)
        return 1
    return 2


# --- send-test --------------------------------------------------------------------------------


# The spec example's progress when --percent is not given.
_EXAMPLE_PERCENT = 45


async def _send_test(args: argparse.Namespace) -> int:
    url = sender.check_url(args.url)
    if args.data is None:
        if args.event is None:
            raise _Usage("give --event (the spec's example) or --data FILE")
        if args.as_is:
            raise _Usage("--as-is goes with --data FILE")
        job_id = args.job_id or f"job_test_{secrets.token_hex(6)}"
        percent = _EXAMPLE_PERCENT if args.percent is None else args.percent
        body = sender.encode(sender.spec_example(args.event, job_id, time.time(), percent))
        what = f"{args.event} for {job_id}"
    else:
        body, what = _user_payload(args)
    secret = sender.resolve_secret(args.secret)
    timeout = aiohttp.ClientTimeout(total=sender.ANSWER_TIMEOUT_SECONDS)
    print(
        f"sending {what} to {url} (event id {sender_event_id(body)[:16]}..., "
        f"secret from {secret.source})",
        file=sys.stderr,
    )
    async with aiohttp.ClientSession() as session:
        answer = await sender.post(session, url, secret.value.encode(), body, timeout)
    if answer.status is None:
        raise sender.SenderError(f"no answer from {url}: {answer.problem}")
    return sender.print_answer(answer, "wazza-hooks send-test")


def _user_payload(args: argparse.Namespace) -> tuple[bytes, str]:
    """The --data payload with the field options applied, and how to name it on stderr."""
    name = "stdin" if str(args.data) == "-" else str(args.data)
    try:
        body = sys.stdin.buffer.read() if name == "stdin" else args.data.read_bytes()
    except OSError as exc:
        raise sender.SenderError(f"cannot read {name}: {exc.strerror or exc}") from None
    fields: dict[str, object] = {}
    if args.event is not None:
        fields["event"] = args.event
    if args.job_id is not None:
        fields["jobId"] = args.job_id
    if args.percent is not None:
        fields["progress.percent"] = args.percent
    if args.as_is:
        if fields:
            options = ", ".join(_OPTION_OF[f] for f in fields)
            raise _Usage(f"--as-is sends {name} unchanged: {options} cannot apply")
        return body, f"{name} as is ({plural(len(body), 'byte')})"
    try:
        body, changed = sender.overridden(body, fields)
    except sender.SenderError as exc:
        hint = " (--as-is sends it anyway)" if not fields else ""
        raise sender.SenderError(f"{name} is {exc}{hint}") from None
    if "progress.percent" in fields and _event_of(body) != sender.JOB_PROCESSING:
        raise sender.SenderError("--percent is for job.processing events")
    note = f", {', '.join(changed)} replaced" if changed else ""
    return body, f"{name} ({plural(len(body), 'byte')}{note})"


_OPTION_OF = {"event": "--event", "jobId": "--job-id", "progress.percent": "--percent"}


def _event_of(body: bytes) -> object:
    import orjson

    document = orjson.loads(body)
    return document.get("event") if isinstance(document, dict) else None


def sender_event_id(body: bytes) -> str:
    """The id the ingester gives this body (its SHA-256), as `jobs history` shows it."""
    from wazza_hooks import contract

    return contract.body_event_id(body)


# --- simulate ---------------------------------------------------------------------------------


def _simulate(args: argparse.Namespace) -> int:
    from wazza_tools.send.expect import expect_job, write_expect
    from wazza_tools.send.plan import PlanOptions, make_plan
    from wazza_tools.send.simulate import ProgressLine, RunOptions, Simulation, reachable

    url = sender.check_url(args.url)
    secret = sender.resolve_secret(args.secret)
    if args.expect is not None and not args.expect.parent.is_dir():
        raise sender.SenderError(f"cannot write {args.expect}: no folder {args.expect.parent}")
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    options = PlanOptions(args.jobs, args.failures, args.duplicates, args.reorder, seed)
    plans = make_plan(options, time.time())
    run_options = RunOptions(
        url=url,
        secret=secret.value.encode(),
        concurrency=args.concurrency,
        rate=args.rate,
        backoff_seconds=args.backoff,
        seed=seed,
    )
    simulation = Simulation(run_options)
    progress = ProgressLine(simulation.tally)

    async def go() -> None:
        await reachable(url, sender.ANSWER_TIMEOUT_SECONDS)
        drawing = asyncio.create_task(progress.run())
        try:
            await simulation.run(plans)
        finally:
            drawing.cancel()
            progress.finish()

    asyncio.run(go())
    tally = simulation.tally
    in_doubt = tally.in_doubt()
    expectations = [
        expect_job(p, tally.landed[p.job_id], in_doubt.get(p.job_id, {})) for p in plans
    ]
    _summary(plans, tally, seed)
    if args.expect is not None:
        from wazza_tools.render import iso_time

        meta = {"createdAt": iso_time(int(time.time() * 1000)), "url": url, "seed": seed}
        write_expect(args.expect, expectations, meta)
        undetermined = [e for e in expectations if e.undetermined is not None]
        print(
            f"  expect      {args.expect}: {len(expectations) - len(undetermined)} jobs definite, "
            f"{len(undetermined)} undetermined"
        )
        for e in undetermined:
            print(f"    undetermined {e.job_id}: {e.undetermined}")
    if tally.given_up:
        print(
            f"wazza-hooks simulate: {plural(len(tally.given_up), 'delivery', 'deliveries')} "
            f"given up after {plural(run_options.attempts, 'attempt')}",
            file=sys.stderr,
        )
        return 1
    return 0


def _summary(plans: list[JobPlan], tally: Tally, seed: int) -> None:
    distinct = sum(len(p.events) for p in plans)
    reordered = sum(1 for p in plans if p.reordered)
    p50, p99 = tally.percentile(0.5), tally.percentile(0.99)
    ms = "-"
    if p50 is not None and p99 is not None:
        ms = f"p50 {p50 * 1000:.1f} ms  p99 {p99 * 1000:.1f} ms"
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items()))
    lines = [
        f"simulate: {len(plans)} jobs, {tally.planned} webhooks ({distinct} events, "
        f"{tally.planned - distinct} duplicates, {reordered} jobs reordered), seed {seed}",
        f"  sent        {tally.sent} webhooks, {tally.attempts} attempts in {tally.seconds:.1f} s: "
        f"{tally.attempts / tally.seconds:,.0f} req/s",
        f"  accepted    {tally.accepted}"
        + (f" (+{tally.quarantined} quarantined)" if tally.quarantined else ""),
        f"  retried     {tally.retried}",
        f"  given up    {len(tally.given_up)}",
        f"  latency     {ms}",
        f"  answers     {answers or '-'}",
    ]
    lines += [
        f"    given up {g.job_id} {g.event_type} (event {g.index}): last {g.last}"
        for g in tally.given_up
    ]
    print("\n".join(lines), flush=True)


# --- verify -----------------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    from consumers.store import StoreUnavailable, open_store, refuse_missing_sqlite
    from wazza_tools.send.expect import read_expect
    from wazza_tools.send.verify import Report, wait_for_match
    from wazza_tools.sqlite_file import say_sqlite_file

    expected = read_expect(args.expect)
    url = database_url(args)
    shown = redact_url(url)
    say_sqlite_file(url)
    refuse_missing_sqlite(url)  # opening it would create an empty store, every job missing
    tty = sys.stderr.isatty()

    def polled(report: Report) -> None:
        if tty:
            sys.stderr.write(
                f"\rverify: {report.matched}/{report.jobs} jobs match, waiting...\033[K"
            )
            sys.stderr.flush()

    async def go() -> Report:
        # Opening applies pending migrations, so it takes the write lock for a moment: a
        # consumer committing a batch can hold it past the busy timeout. Retried while waiting.
        deadline = time.monotonic() + args.wait
        while True:
            try:
                store = await open_store(url)
                break
            except StoreUnavailable:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.5)
        try:
            return await wait_for_match(store, expected.expectations, args.wait, polled)
        finally:
            await store.close()

    started = time.monotonic()
    report = asyncio.run(go())
    if tty and args.wait:
        sys.stderr.write("\r\033[K")
    for diff in report.differences:
        print(f"{diff.job_id}: {diff.text}")
    for e in report.undetermined:
        what = "not compared" if e.any_of is None else f"one of {len(e.any_of)} possible states"
        print(f"undetermined {e.job_id} ({what}): {e.undetermined}")
    jobs_differing = len({d.job_id for d in report.differences})
    print(
        f"verify: {report.jobs} jobs, {report.matched} match, {jobs_differing} differ "
        f"({len(report.differences)} differences), {len(report.undetermined)} undetermined "
        f"({len(report.unchecked)} not compared); store {shown}, "
        f"{time.monotonic() - started:.1f} s"
    )
    return 1 if report.differences else 0


# --- register ---------------------------------------------------------------------------------


async def _register(args: argparse.Namespace) -> int:
    url = sender.check_url(args.url)
    api_base = sender.check_url(args.api_base)
    key = args.api_key or os.environ.get("WAZZA_API_KEY", "").strip()
    if not key:
        raise sender.SenderError("no API key: pass --api-key or set WAZZA_API_KEY")
    secret = sender.resolve_secret(args.secret, dev_file=None)
    if not url.startswith("https://"):
        print(
            "wazza-hooks register: note: the spec asks for HTTPS endpoints; this one is not",
            file=sys.stderr,
        )
    events = list(dict.fromkeys(args.events))
    webhook_id = await register_webhook(api_base, key, url, events, secret.value)
    print(f"registered {url} for {', '.join(events)}", file=sys.stderr)
    print(webhook_id)
    return 0
