"""`wazza-hooks jobs`: read job state and history from the consumers' store.

- `wazza-hooks jobs show JOB_ID [--json]`: one job's state.
- `wazza-hooks jobs list [--status S] [--limit N] [--json]`: jobs, most recently updated first.
- `wazza-hooks jobs history JOB_ID [--json]`: every distinct event the services took for the job,
  with its outcome (`applied`, `stale`, `conflict`, `dead_lettered`).

They only read (through the store's reader), from DATABASE_URL or `--database-url`. The `--json`
formats are documented in docs/cli.md and are a stable interface: fields are
only ever added. Times are ISO-8601 UTC with milliseconds (`2025-10-22T10:30:00.000Z`) or null.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from consumers.history import job_history
from consumers.jobs import JOB_COLUMNS, row_to_state
from consumers.store import Store, Tx, open_existing_store, store_problem
from wazza_hooks.config import whole_number
from wazza_tools.options import add_database_url, database_url
from wazza_tools.render import iso_time, print_json, printable, state_fields, table
from wazza_tools.sqlite_file import say_sqlite_file

STATUSES = ("processing", "completed", "failed")
DEFAULT_LIMIT = 50
MAX_LIMIT = 10_000

_T = TypeVar("_T")


class _NotFound(Exception):
    """The job is not in the store."""


def add_jobs_parser(sub: Any) -> None:
    """Register the `jobs` subcommand and its actions."""
    common = argparse.ArgumentParser(add_help=False)
    add_database_url(common)
    common.add_argument(
        "--json", action="store_true", help="print JSON in the documented, stable format"
    )
    jobs = sub.add_parser(
        "jobs",
        help="read job state and history from the consumers' store",
        description="Read job state and history from the consumers' store (read-only).",
        epilog=(
            "examples:\n  wazza-hooks jobs show job_abc123\n"
            "  wazza-hooks jobs list --status failed --limit 20\n"
            "  wazza-hooks jobs history job_abc123 --json\n"
            "  DATABASE_URL=postgresql://wazza@db/wazza wazza-hooks jobs list"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        parents=[common],
        help="one job's state",
        description="Print one job's state; exit 1 when the store has no such job.",
    )
    show.add_argument("job_id", metavar="JOB_ID", help="the job id Wazza gave (jobId)")
    listing = actions.add_parser(
        "list",
        parents=[common],
        help="jobs, most recently updated first",
        description="Print jobs, most recently updated first.",
    )
    listing.add_argument("--status", choices=STATUSES, help="only jobs in this status")
    listing.add_argument(
        "--limit",
        type=whole_number(1, MAX_LIMIT),
        default=DEFAULT_LIMIT,
        help=f"at most this many jobs (1-{MAX_LIMIT}, default {DEFAULT_LIMIT})",
    )
    history = actions.add_parser(
        "history",
        parents=[common],
        help="every distinct event the services took for a job, with its outcome",
        description=(
            "Print every distinct event the services took for a job, once each, with its "
            "outcome (applied, stale, conflict, dead_lettered), by event time then applied time."
        ),
    )
    history.add_argument("job_id", metavar="JOB_ID", help="the job id Wazza gave (jobId)")


def run_jobs(args: argparse.Namespace) -> int:
    """Run `wazza-hooks jobs ACTION`; returns the exit code (0, or 1 with a message on stderr)."""
    url = database_url(args)
    try:
        if args.jobs_command == "show":
            job = _read(url, lambda tx: _job(tx, args.job_id))
            _emit(args, job, lambda: _job_text(job))
        elif args.jobs_command == "list":
            jobs = _read(url, lambda tx: _jobs(tx, args.status, args.limit))
            _emit(
                args,
                {"jobs": jobs},
                lambda: _jobs_text(jobs, args.status),
            )
        elif args.jobs_command == "history":
            events = _read(url, lambda tx: _history(tx, args.job_id))
            _emit(
                args,
                {"jobId": args.job_id, "events": [_event_json(e) for e in events]},
                lambda: _history_text(args.job_id, events),
            )
        else:  # pragma: no cover - argparse only lets the actions above through
            return 2
    except _NotFound:
        print(f"wazza-hooks: no job {printable(args.job_id)}", file=sys.stderr)
        if args.json:
            print_json({"error": "not_found", "jobId": args.job_id})
        return 1
    except Exception as exc:
        message = store_problem(exc, url)
        if message is None:
            raise  # not the store's: a bug, to show whole
        print(f"wazza-hooks: {message}", file=sys.stderr)
        return 1
    return 0


# --- reading ----------------------------------------------------------------------------------


def _read(url: str, query: Callable[[Tx], Awaitable[_T]]) -> _T:
    async def run() -> _T:
        say_sqlite_file(url)
        store: Store = await open_existing_store(url)
        try:
            async with store.reader() as tx:
                return await query(tx)
        finally:
            await store.close()

    return asyncio.run(run())


_Job = dict[str, Any]
_Event = tuple[str, str, str, int, int, str]


async def _job(tx: Tx, job_id: str) -> _Job:
    row = await tx.fetchone(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", job_id)  # noqa: S608 - constant columns
    if row is None:
        raise _NotFound(job_id)
    return _job_of(row)


async def _jobs(tx: Tx, status: str | None, limit: int) -> list[_Job]:
    where = "WHERE status = ? " if status is not None else ""
    args: list[Any] = [status] if status is not None else []
    rows = await tx.fetchall(
        f"SELECT {JOB_COLUMNS} FROM jobs {where}ORDER BY updated_ms DESC, job_id LIMIT ?",  # noqa: S608 - constants
        *args,
        limit,
    )
    return [_job_of(row) for row in rows]


async def _history(tx: Tx, job_id: str) -> list[_Event]:
    events = await job_history(tx, job_id)
    if not events and await tx.fetchone("SELECT 1 FROM jobs WHERE job_id = ?", job_id) is None:
        # A job can have history without a row (an event dead-lettered before it was parsed),
        # and a row without history; neither means the store never heard of it.
        raise _NotFound(job_id)
    return [
        (e.service, e.event_id, e.event_type, e.event_time_ms, e.applied_ms, e.outcome)
        for e in events
    ]


def _job_of(row: Sequence[Any]) -> _Job:
    """A `jobs` row (JOB_COLUMNS order) as its JSON object, keys in the documented order."""
    state = row_to_state(row)
    return {
        "jobId": state.job_id,
        **state_fields(state),
        "createdAt": iso_time(row[13]),
        "updatedAt": iso_time(row[14]),
    }


# --- output -----------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, document: Any, text: Callable[[], str]) -> None:
    if args.json:
        print_json(document)
    else:
        sys.stdout.write(text())


def _event_json(event: _Event) -> dict[str, Any]:
    service, event_id, event_type, event_time, applied, outcome = event
    return {
        "service": service,
        "eventId": event_id,
        "eventType": event_type,
        "eventTime": iso_time(event_time),
        "appliedAt": iso_time(applied),
        "outcome": outcome,
    }


def _job_text(job: _Job) -> str:
    eta = job["estimatedTimeRemaining"]
    pairs = [
        ("job", job["jobId"]),
        ("status", job["status"]),
        ("percent", job["percent"]),
        ("stage", job["stage"]),
        ("time left", None if eta is None else f"{printable(eta)} s"),
        ("output", job["output"]),
        ("error", job["error"]),
        ("metadata", job["metadata"]),
        ("last progress", job["lastProgressAt"]),
        ("finished", job["finishedAt"]),
        ("created", job["createdAt"]),
        ("updated", job["updatedAt"]),
    ]
    width = max(len(key) for key, _ in pairs)
    return "".join(f"{key:<{width}}  {printable(value)}\n" for key, value in pairs)


def _jobs_text(jobs: list[_Job], status: str | None) -> str:
    if not jobs:
        return f"no {status} jobs\n" if status else "no jobs\n"
    return table(
        ("JOB", "STATUS", "PERCENT", "STAGE", "UPDATED"),
        [(j["jobId"], j["status"], j["percent"], j["stage"], j["updatedAt"]) for j in jobs],
    )


def _history_text(job_id: str, events: list[_Event]) -> str:
    if not events:
        return f"no events recorded for job {printable(job_id)}\n"
    return table(
        ("EVENT TIME", "APPLIED", "SERVICE", "EVENT TYPE", "OUTCOME", "EVENT ID"),
        [
            (iso_time(time), iso_time(applied), service, kind, outcome, event_id)
            for service, event_id, kind, time, applied, outcome in events
        ],
    )
