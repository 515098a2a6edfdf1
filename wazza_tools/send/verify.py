"""`verify`'s engine: the store's job rows against an expect file, field by field.

Reads through the consumers' store reader (`consumers.store`), like `wazza-hooks jobs`; never
writes. `compare` is one pass; `wait_for_match` repeats it until nothing differs or time is up,
for use right after `simulate` while the consumers are still catching up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from consumers.jobs import JOB_COLUMNS, row_to_state
from consumers.store import IN_LIST_CHUNK, Store, StoreUnavailable
from wazza_tools.send.expect import STATE_FIELDS, Expectation, State, state_json

# Between two looks at the store while waiting: the consumers apply a batch in a few to a few
# hundred milliseconds, and reading 10,000 rows costs ~50 ms of a core they share.
POLL_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Difference:
    """One way a job's stored state is not the expected one."""

    job_id: str
    """The job."""
    text: str
    """What differs, in one line."""


@dataclass(frozen=True, slots=True)
class Report:
    """One comparison."""

    jobs: int
    """Jobs in the expect file."""
    matched: int
    """Jobs whose state is as expected (undetermined jobs in one of their possible states)."""
    differences: tuple[Difference, ...]
    """Every difference, by job then field."""
    undetermined: tuple[Expectation, ...]
    """Jobs without a single expected state (their deliveries were given up)."""
    unchecked: tuple[str, ...]
    """Undetermined jobs with no list of possible states: reported, not compared."""


async def read_states(store: Store, job_ids: Sequence[str]) -> dict[str, State]:
    """The stored state of each of these jobs that has a row."""
    out: dict[str, State] = {}
    async with store.reader() as tx:
        for start in range(0, len(job_ids), IN_LIST_CHUNK):
            member, args = tx.in_list(list(job_ids[start : start + IN_LIST_CHUNK]))
            rows = await tx.fetchall(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id {member}",  # noqa: S608 - constants
                *args,
            )
            for row in rows:
                state = state_json(row_to_state(row))
                assert state is not None  # noqa: S101 - a row always has a state
                out[str(row[0])] = state
    return out


def _show(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


def differences(expectation: Expectation, actual: State | None) -> list[Difference]:
    """How the stored state differs from what the expectation allows (empty: it matches)."""
    job = expectation.job_id
    if expectation.matches(actual):
        return []
    if expectation.undetermined is not None:
        states = len(expectation.any_of or ())
        has = "no row" if actual is None else f"status {actual['status']!r}, {_show(actual)}"
        return [Difference(job, f"in none of its {states} possible states: the store has {has}")]
    expected = expectation.state
    if actual is None:
        return [Difference(job, "missing from the store")]
    if expected is None:
        return [Difference(job, f"expected no row, the store has status {actual['status']!r}")]
    return [
        Difference(
            job, f"{name}: expected {_show(expected[name])}, store has {_show(actual[name])}"
        )
        for name in STATE_FIELDS
        if expected[name] != actual[name]
    ]


async def compare(store: Store, expectations: Sequence[Expectation]) -> Report:
    """Compare the store with every expectation once."""
    actual = await read_states(store, [e.job_id for e in expectations])
    found: list[Difference] = []
    matched = 0
    for expectation in expectations:
        diff = differences(expectation, actual.get(expectation.job_id))
        found.extend(diff)
        matched += not diff
    undetermined = tuple(e for e in expectations if e.undetermined is not None)
    return Report(
        jobs=len(expectations),
        matched=matched,
        differences=tuple(found),
        undetermined=undetermined,
        unchecked=tuple(e.job_id for e in undetermined if e.any_of is None),
    )


async def wait_for_match(
    store: Store,
    expectations: Sequence[Expectation],
    wait_seconds: float,
    on_poll: Callable[[Report], None] | None = None,
) -> Report:
    """Compare until nothing differs or `wait_seconds` passed; the last report.

    A store that is busy (a consumer holding SQLite's write lock) is read again at the next poll.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            report = await compare(store, expectations)
        except StoreUnavailable:
            if time.monotonic() >= deadline:
                raise
        else:
            if not report.differences or time.monotonic() >= deadline:
                return report
            if on_poll is not None:
                on_poll(report)
        await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
