"""The final state each simulated job must reach, and the expect file that carries it.

The state is computed with the consumers' own code, not guessed: each delivered body is parsed
by `consumers.events.parse_event` under the event id the ingester gives it (the body's SHA-256)
and folded with `consumers.state.decide`, the order rules (invariant 5 of docs/architecture.md).
Those rules are order-independent, so the fold's order does not matter, and a duplicate folds to
nothing new.

A delivery that was given up (every attempt unanswered or refused) may still have landed: a
timeout or a 503 can hide a late broker ack. A job is *definite* when its state is the same
whether such deliveries landed or not; else it is *undetermined*, and the file says why and, when
few deliveries are in doubt, lists every state the job may be in (`anyOf`).

The expect file (JSON, one document; `jobs` maps each job id to one entry):

    {"format": "wazza-hooks-expect", "version": 1, "createdAt": "2026-11-27T01:00:00.000Z",
     "url": "http://127.0.0.1:8080/api/webhooks/wazza", "seed": 42,
     "summary": {"jobs": 2, "definite": 1, "undetermined": 1},
     "jobs": {
       "job_sim..._000000": {"expect": STATE},
       "job_sim..._000001": {"undetermined": "job.completed given up after 5 attempts (...)",
                             "anyOf": [STATE, STATE, null]}}}

STATE has the fields of `wazza-hooks jobs show --json` that the rules decide (`status`,
`percent`, `stage`, `estimatedTimeRemaining`, `output`, `error`, `metadata`, `lastProgressAt`,
`finishedAt`), with the same types; `null` in `anyOf` means "no row at all". `anyOf` is left out
when more than MAX_UNCERTAIN deliveries of one job are in doubt.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from consumers.events import JobEvent, parse_event
from consumers.state import JobState, decide
from wazza_hooks import contract
from wazza_tools.send.plan import Event, JobPlan
from wazza_tools.send.webhooks import SenderError

FORMAT = "wazza-hooks-expect"
VERSION = 1
STATE_FIELDS = (
    "status",
    "percent",
    "stage",
    "estimatedTimeRemaining",
    "output",
    "error",
    "metadata",
    "lastProgressAt",
    "finishedAt",
)
# Each delivery in doubt doubles the states to fold; 2**6 = 64 folds of a few events is nothing,
# and a job with more given-up deliveries than that says more about the endpoint than the job.
MAX_UNCERTAIN = 6

State = dict[str, Any]


def job_event(event: Event) -> JobEvent:
    """The event as a consumer sees it: parsed from its bytes, with the ingester's event id."""
    envelope = contract.RawEnvelope(
        event_type=event.event_type,
        event_id=contract.body_event_id(event.body),
        received_at_ms=0,  # only used when a body has no timestamp; ours always have one
        signature_timestamp=None,
        content_type="application/json",
        ingester="simulate",
        scheme="wazza",
    )
    return parse_event(event.body, envelope)


def fold(events: Iterable[JobEvent]) -> JobState | None:
    """The state the rules give these events (None when there are none)."""
    state: JobState | None = None
    for event in events:
        state = decide(state, event).state
    return state


def state_json(state: JobState | None) -> State | None:
    """A job state in the form of `jobs show --json` (the fields the rules decide)."""
    if state is None:
        return None
    from wazza_tools.render import state_fields

    return state_fields(state)


@dataclass(frozen=True, slots=True)
class Expectation:
    """What one job must look like in the store."""

    job_id: str
    """The job."""
    state: State | None
    """The state it must have (None: no row), when definite."""
    undetermined: str | None = None
    """Why no single state can be expected; None when definite."""
    any_of: tuple[State | None, ...] | None = None
    """Every state it may have when undetermined (None when too many deliveries are in doubt)."""

    def entry(self) -> dict[str, Any]:
        """This expectation's entry in the expect file."""
        if self.undetermined is None:
            return {"expect": self.state}
        entry: dict[str, Any] = {"undetermined": self.undetermined}
        if self.any_of is not None:
            entry["anyOf"] = list(self.any_of)
        return entry

    def matches(self, actual: State | None) -> bool:
        """True when the stored state is the expected one (or one of the possible ones)."""
        if self.undetermined is None:
            return actual == self.state
        return self.any_of is None or actual in self.any_of


def expect_job(plan: JobPlan, landed: Iterable[int], in_doubt: Mapping[int, str]) -> Expectation:
    """The expectation for a job whose events `landed` (indexes, certainly published) and whose
    events `in_doubt` (index -> why) may or may not have been."""
    events = {i: job_event(plan.events[i]) for i in {*landed, *in_doubt}}
    sure = [events[i] for i in sorted(set(landed))]
    doubtful = sorted(set(in_doubt) - set(landed))
    if not doubtful:
        return Expectation(plan.job_id, state_json(fold(sure)))
    why = "; ".join(f"{plan.events[i].event_type} {in_doubt[i]}" for i in doubtful)
    if len(doubtful) > MAX_UNCERTAIN:
        # Too many subsets to fold; the rules keep the highest-ranked events, so when none of
        # the doubtful ones changes the result, no subset of them can either.
        low = state_json(fold(sure))
        if low == state_json(fold([*sure, *(events[i] for i in doubtful)])):
            return Expectation(plan.job_id, low)
        return Expectation(plan.job_id, None, why, None)
    possible: list[State | None] = []
    for size in range(len(doubtful) + 1):
        for subset in itertools.combinations(doubtful, size):
            state = state_json(fold([*sure, *(events[i] for i in subset)]))
            if state not in possible:
                possible.append(state)
    if len(possible) == 1:
        return Expectation(plan.job_id, possible[0])
    return Expectation(plan.job_id, None, why, tuple(possible))


# --- the file ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpectFile:
    """The contents of an expect file."""

    expectations: tuple[Expectation, ...]
    """One per job, in the file's order."""
    meta: dict[str, Any]
    """`createdAt`, `url`, `seed` and the summary, as written."""


def write_expect(path: Path, expectations: Iterable[Expectation], meta: Mapping[str, Any]) -> None:
    """Write the expect file (atomically: a reader never sees half of it)."""
    items = list(expectations)
    undetermined = sum(1 for e in items if e.undetermined is not None)
    document = {
        "format": FORMAT,
        "version": VERSION,
        **meta,
        "summary": {
            "jobs": len(items),
            "definite": len(items) - undetermined,
            "undetermined": undetermined,
        },
        "jobs": {e.job_id: e.entry() for e in items},
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
        tmp.replace(path)
    except OSError as exc:
        raise SenderError(f"cannot write the expect file {path}: {exc.strerror}") from None


def read_expect(path: Path) -> ExpectFile:
    """Read an expect file; raises SenderError saying what is wrong with it."""
    try:
        document = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise SenderError(f"no expect file at {path} (simulate --expect FILE writes it)") from None
    except OSError as exc:
        raise SenderError(f"cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise SenderError(f"{path} is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SenderError(f'{path} is not an expect file (no "format": "{FORMAT}")')
    if document.get("version") != VERSION:
        raise SenderError(f"{path} has version {document.get('version')!r}; this reads {VERSION}")
    jobs = document.get("jobs")
    if not isinstance(jobs, dict):
        raise SenderError(f'{path}: "jobs" is not an object')
    out = []
    for job_id, entry in jobs.items():
        if not isinstance(entry, dict) or ("expect" not in entry and "undetermined" not in entry):
            raise SenderError(f'{path}: job {job_id!r} has neither "expect" nor "undetermined"')
        if "expect" in entry:
            out.append(Expectation(job_id, _state(path, job_id, entry["expect"])))
        else:
            raw = entry.get("anyOf")
            if raw is not None and not isinstance(raw, list):
                raise SenderError(f'{path}: job {job_id!r} has an "anyOf" that is not a list')
            any_of = None if raw is None else tuple(_state(path, job_id, s) for s in raw)
            out.append(Expectation(job_id, None, str(entry["undetermined"]), any_of))
    meta = {k: v for k, v in document.items() if k not in ("jobs", "format", "version")}
    return ExpectFile(tuple(out), meta)


def _state(path: Path, job_id: str, value: Any) -> State | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != set(STATE_FIELDS):
        raise SenderError(f"{path}: job {job_id!r} has a state without the fields {STATE_FIELDS}")
    return value
