"""How the commands print: times, values from the sender, tables, JSON, and the job fields of
the documented `--json` formats. Shared by every family of tools, so that `jobs`, `events`,
`dlq` and `simulate`'s expect file print the same thing the same way."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from consumers.state import JobState
from wazza_hooks import contract

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso_time(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ISO-8601 UTC (`2025-10-22T10:30:00.000Z`), or None. A
    time a date cannot hold (a store written before the ingester refused such events) prints as
    its number of milliseconds rather than stopping the command."""
    if ms is None:
        return None
    try:
        moment = _EPOCH + timedelta(milliseconds=int(ms))
    except OverflowError:
        return f"{int(ms)} ms since the epoch"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def state_fields(state: JobState) -> dict[str, Any]:
    """The fields of the `jobs show --json` object that the order rules decide, in the
    documented order (the expect file of `simulate` holds the same: send/expect.py)."""
    return {
        "status": state.status,
        "percent": state.percent,
        "stage": state.stage,
        "estimatedTimeRemaining": state.eta_seconds,
        "output": state.output,
        "error": state.error,
        "metadata": state.metadata,
        "lastProgressAt": iso_time(state.last_progress_ms),
        "finishedAt": iso_time(state.finished_ms),
    }


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: Any) -> str:
    """A value for the terminal: `-` for none, JSON for objects, control characters escaped
    (job ids, stages and errors come from the sender and may hold anything)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, dict | list):
        text = orjson.dumps(value).decode()
    else:
        text = str(value)
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows under a header, columns padded to their widest cell, values made `printable`."""
    cells = [list(header)] + [[printable(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in cells
    )


def print_json(document: Any) -> None:
    """One JSON document on a line of standard output."""
    sys.stdout.write(orjson.dumps(document).decode() + "\n")


def dead_letter_fields(letter: contract.DeadLetter | None) -> dict[str, Any]:
    """Who gave an event up, why and from where, as the `dlq list` and `events` JSON give it
    (each value null when the dead-letter headers are unusable)."""
    return {
        "group": None if letter is None else letter.group,
        "errorClass": None if letter is None else letter.error_class,
        "errorMessage": None if letter is None else letter.error_message,
        "original": None
        if letter is None
        else {"topic": letter.topic, "partition": letter.partition, "offset": letter.offset},
    }
